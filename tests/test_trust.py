"""What the server trusts: every client reply is checked against its plan before aggregation, and a
non-finite global state stops the run with the last good checkpoint kept (docs/reliability.md)."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # flwr reads it once, when imported

import io
import json
import math
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from conftest import headless_bert, tiny_run_config
from fedpilot.aggregate.validate import (UpdateLimits, nonfinite_keys, norm_outliers, plan_reference, screen_updates,
                                         size_problem, tensor_problem, update_norm)
from fedpilot.cli import app
from fedpilot.client import ClientUpdate, Plan
from fedpilot.config import ConfigError, dump_config, load_config
from fedpilot.engines.client_round import attempt_client
from fedpilot.engines.flower import FlowerRounds, instruction
from fedpilot.engines.flower_client import decode_outcome, encode_outcome, from_arrays
from fedpilot.engines.local import LocalRun, resume_local, run_local
from fedpilot.engines.server import NonFiniteStateError, RoundServer, client_record
from fedpilot.federation import build_federation
from fedpilot.models.rank import lora_factor, pad_rank, tensor_rank
from fedpilot.models.units import Unit, UnitMap
from fedpilot.report.checkpoint import load_checkpoint
from fedpilot.report.records import RunRecorder, fresh_run_dir, read_rounds, summarize
from fedpilot.strategies.fedavg_full import FedAvgFull

A0, B0, A1, B1, HEAD = ("layer.0.q.lora_A.weight", "layer.0.q.lora_B.weight", "layer.1.q.lora_A.weight",
                        "layer.1.q.lora_B.weight", "classifier.weight")
UNITS = UnitMap((Unit(0, "layer.0.", (A0, B0)), Unit(1, "layer.1.", (A1, B1))), (HEAD,))
AT_RANK_2 = Plan((1,), 1, ranks=(2,))


def global_state() -> dict[str, torch.Tensor]:
    """Rank-4 LoRA factors of two units (A: 4 x 3, B: 5 x 4) and a 2 x 5 head, all distinct values."""
    shapes = {A0: (4, 3), B0: (5, 4), A1: (4, 3), B1: (5, 4), HEAD: (2, 5)}
    return {key: torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape) / 10
            for key, shape in shapes.items()}


def test_the_reference_of_a_plan_is_its_units_at_their_ranks_and_the_head():
    state = global_state()
    reference = plan_reference(UNITS, state, AT_RANK_2)
    assert {key: tuple(t.shape) for key, t in reference.items()} == {A1: (2, 3), B1: (5, 2), HEAD: (2, 5)}
    assert torch.equal(reference[A1], state[A1][:2]) and torch.equal(reference[B1], state[B1][:, :2])
    full = plan_reference(UNITS, state, Plan((0, 1), 1))
    assert set(full) == set(state) and all(full[key] is state[key] for key in state)


def dropped(key: str) -> Callable[[dict], dict]:
    return lambda t: {k: v for k, v in t.items() if k != key}


def with_value(key: str, index: tuple[int, int], value: float) -> Callable[[dict], dict]:
    def change(tensors: dict) -> dict:
        tensor = tensors[key].clone()
        tensor[index] = value
        return {**tensors, key: tensor}
    return change


@pytest.mark.parametrize(("change", "reason"), [
    (lambda t: t, None),
    (dropped(B1), "missing tensors of its plan: ['layer.1.q.lora_B.weight']"),
    (lambda t: {**t, A0: torch.zeros(4, 3)}, "tensors outside its plan: ['layer.0.q.lora_A.weight']"),
    (lambda t: {**t, HEAD: t[HEAD].long()}, "classifier.weight: dtype torch.int64 is not floating point"),
    (lambda t: {**t, A1: torch.zeros(4, 3)}, f"{A1}: shape (4, 3), expected (2, 3) at its plan's rank"),
    (lambda t: {**t, B1: torch.zeros(5, 4)}, f"{B1}: shape (5, 4), expected (5, 2) at its plan's rank"),
    (with_value(HEAD, (1, 2), float("nan")), "classifier.weight: 1 NaN values"),
    (with_value(B1, (0, 1), float("-inf")), "layer.1.q.lora_B.weight: 1 infinite values"),
])
def test_each_malformed_reply_is_named(change, reason):
    reference = plan_reference(UNITS, global_state(), AT_RANK_2)
    assert tensor_problem(change({k: v.clone() for k, v in reference.items()}), reference) == reason


@pytest.mark.parametrize(("claimed", "known", "bound", "reason"), [
    (90, 90, None, None),
    (90, 90, 100, None),
    (10**9, 90, None, "num_examples 1000000000 differs from the 90 examples the server knows for this client"),
    (120, 120, 100, "num_examples 120 exceeds clients.max_examples=100"),
    (5, None, None, "num_examples 5: the server knows no data size for this client"),
    (0, 0, None, "num_examples 0 is not a positive integer"),
    (2.5, 2, None, "num_examples 2.5 is not a positive integer"),
    (True, 1, None, "num_examples True is not a positive integer"),
])
def test_num_examples_must_be_the_known_size_within_the_bound(claimed, known, bound, reason):
    assert size_problem(claimed, known, bound) == reason


def test_update_norm_and_the_median_rule_by_hand():
    reference = {"a": torch.zeros(2, 2), "b": torch.zeros(3)}
    assert update_norm({"a": torch.ones(2, 2), "b": torch.tensor([0.0, 3.0, 4.0])}, reference) == pytest.approx(
        math.sqrt(4 + 9 + 16))
    norms = {0: 1.0, 1: 2.0, 2: 3.0, 3: 40.0}  # median 2.5
    assert list(norm_outliers(norms, 10)) == [3]  # 40 > 25
    assert "exceeds clients.max_update_norm_ratio=10 times the round's median 2.5" in norm_outliers(norms, 10)[3]
    assert norm_outliers(norms, 16) == {}  # 40 <= 40
    assert norm_outliers({}, 2) == {}


def test_screen_updates_refuses_an_outlier_and_a_reply_without_a_plan():
    state = global_state()
    reference = plan_reference(UNITS, state, AT_RANK_2)

    def update(client: int, step: float, examples: int = 5) -> ClientUpdate:
        return ClientUpdate(client, {k: v + step for k, v in reference.items()}, examples)

    plans = dict.fromkeys(range(3), AT_RANK_2)
    updates = [update(0, 0.1), update(1, 0.2), update(2, 100.0), update(3, 0.1)]
    limits = UpdateLimits(dict.fromkeys(range(4), 5), None, 10.0)
    refused = screen_updates(updates, plans, UNITS, state, limits)
    assert sorted(refused) == [2, 3]
    assert "update norm" in refused[2] and refused[3] == "a reply from a client that had no plan this round"
    assert screen_updates(updates[:3], plans, UNITS, state, replace(limits, max_norm_ratio=None)) == {}
    lying = [update(0, 0.1), update(1, 0.1, examples=10**9)]
    assert list(screen_updates(lying, plans, UNITS, state, limits)) == [1]


def test_nonfinite_keys_names_the_tensors_with_nan_or_inf():
    state = {"a": torch.tensor([1.0, float("nan")]), "b": torch.ones(2), "c": torch.tensor([float("inf")])}
    assert nonfinite_keys(state) == ["a", "c"]


def test_a_flower_reply_is_decoded_leniently_so_the_server_refuses_it_instead_of_crashing(task_identity):
    sent = instruction(101, MessageType.TRAIN, "seed: 0")
    bare = decode_outcome(Message(content=RecordDict({"metrics": MetricRecord({"loss": 1.0})}), reply_to=sent), 1)
    assert (bare.tensors, bare.num_examples, bare.metrics) == ({}, None, {"loss": 1.0})
    assert tensor_problem(bare.tensors, plan_reference(UNITS, global_state(), AT_RANK_2)).startswith("missing")
    assert size_problem(bare.num_examples, 5, None) == "num_examples None is not a positive integer"
    odd = Message(content=RecordDict({"outcome": ConfigRecord({"why": "x"})}), reply_to=sent)
    assert decode_outcome(odd, 1) == {"failed": "a reply without an update: {'why': 'x'}"}


def test_client_metrics_cannot_overwrite_the_record_fields():
    record = client_record(ClientUpdate(2, {}, 90, {"loss": 0.5, "id": 7, "units": [0, 1]}), AT_RANK_2, None)
    assert (record["id"], record["units"], record["ranks"], record["loss"]) == (2, [1], [2], 0.5)


def test_the_norm_ratio_is_off_by_default_and_at_least_one():
    assert load_config().clients.max_update_norm_ratio is None and load_config().clients.max_examples is None
    assert load_config(None, ["clients.max_update_norm_ratio=4"]).clients.max_update_norm_ratio == 4
    with pytest.raises(ConfigError, match="clients.max_update_norm_ratio: Input should be greater than or equal to 1"):
        load_config(None, ["clients.max_update_norm_ratio=0.5"])


BAD = 1
"""The client whose reply is corrupted (3 clients, all sampled)."""
SETUPS = {
    "top-k": ["strategy.name=top-k", "clients.groups=[{share: 1.0, memory: '90%'}]"],  # every client: unit 1
    "hetlora": ["strategy.name=hetlora", "clients.groups=[{share: 1.0, upload: '6KiB'}]"],  # units 0, 1 at rank 6
}
Corrupt = Callable[[ClientUpdate, dict, UnitMap], object]


def clone(state: dict) -> dict:
    return {key: tensor.clone() for key, tensor in state.items()}


def lora_key(update: ClientUpdate) -> str:
    return sorted(key for key in update.tensors if ".lora_" in key)[0]


def poisoned(value: float) -> Corrupt:
    def corrupt(update, state, unit_map):
        key = lora_key(update)
        tensor = update.tensors[key].clone()
        tensor.view(-1)[0] = value
        return replace(update, tensors={**update.tensors, key: tensor})
    return corrupt


def wider_head(update, state, unit_map):
    key = unit_map.head_keys[0]
    return replace(update, tensors={**update.tensors, key: torch.cat([update.tensors[key], update.tensors[key][:1]])})


def unassigned_unit(update, state, unit_map):
    return replace(update, tensors={**update.tensors, **{k: state[k] + 1 for k in unit_map.units[0].lora_keys}})


def missing_tensor(update, state, unit_map):
    return replace(update, tensors={k: v for k, v in update.tensors.items() if k != lora_key(update)})


def billion_examples(update, state, unit_map):
    return replace(update, num_examples=10**9)


def scaled_1000(update, state, unit_map):
    return replace(update, tensors={k: state[k] + 1000 * (v - state[k]) for k, v in update.tensors.items()})


def full_rank(update, state, unit_map):
    return replace(update, tensors={k: v if lora_factor(k) is None else pad_rank(k, v, tensor_rank(k, state[k]))
                                    for k, v in update.tensors.items()})


def left_out(update, state, unit_map):
    return {"failed": "left out: the honest clients alone"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """setup -> (config, federation, initial global state, global state after one round of the honest clients
    alone), built when first asked for (one round, max_update_norm_ratio=10)."""
    base = tmp_path_factory.mktemp("base")
    headless_bert(base)
    cache: dict[str, tuple] = {}

    def get(setup: str) -> tuple:
        if setup not in cache:
            config = tiny_run_config(base, tmp_path_factory.mktemp("runs"), setup, "train.rounds=1",
                                     "eval.final_full=false", "output.tensorboard=false",
                                     "clients.max_update_norm_ratio=10", *SETUPS[setup])
            federation = build_federation(config)
            cache[setup] = (config, federation, clone(federation.initial_state()))
            run, record, _ = play(cache[setup], left_out)
            assert [("loss" in c, "failed" in c) for c in record["clients"]] == [(True, False), (False, True),
                                                                                  (True, False)]
            cache[setup] += (run.state,)
        return cache[setup]
    return get


def play(setup: tuple, corrupt: Corrupt) -> tuple[LocalRun, dict, str]:
    """One round of the local engine in which client BAD's reply goes through `corrupt`: run, record, console."""
    config, federation, initial = setup[:3]

    def attempt(config, federation, state, round_number, client_id, plan, seed):
        outcome = attempt_client(config, federation, state, round_number, client_id, plan, seed)
        assert isinstance(outcome, ClientUpdate)
        return corrupt(outcome, state, federation.unit_map) if client_id == BAD else outcome

    shown = io.StringIO()
    run = LocalRun(config, federation, RunRecorder(fresh_run_dir(config.output.dir, "r"), config),
                   Console(file=shown, width=400))
    run.state = clone(initial)
    with pytest.MonkeyPatch.context() as patch, Progress(console=Console(quiet=True)) as progress:
        patch.setattr("fedpilot.engines.local.attempt_client", attempt)
        record = run.play_round(1, progress, progress.add_task("clients"))
    return run, record, shown.getvalue()


@pytest.mark.parametrize(("setup", "corrupt", "reason"), [
    ("top-k", poisoned(float("nan")), ": 1 NaN values"),
    ("top-k", poisoned(float("inf")), ": 1 infinite values"),
    ("top-k", wider_head, "classifier.weight: shape (21, 32), expected (20, 32)"),
    ("top-k", unassigned_unit, "tensors outside its plan: ["),
    ("top-k", missing_tensor, "missing tensors of its plan: ["),
    ("top-k", billion_examples, "num_examples 1000000000 differs from the 90 examples"),
    ("top-k", scaled_1000, "exceeds clients.max_update_norm_ratio=10 times the round's median"),
    ("hetlora", full_rank, "expected (6, 32) at its plan's rank"),
], ids=["nan", "inf", "shape", "unassigned-unit", "missing", "num-examples", "scaled-1000", "rank"])
def test_a_bad_reply_is_refused_and_the_round_equals_the_honest_clients_alone(built, setup, corrupt, reason):
    setup_data = built(setup)
    initial, honest = setup_data[2], setup_data[3]
    run, record, shown = play(setup_data, corrupt)
    refused = [c for c in record["clients"] if "rejected" in c]
    assert [c["id"] for c in refused] == [BAD] and reason in refused[0]["rejected"], refused
    assert "loss" not in refused[0] and refused[0]["sent_bytes"] > 0
    assert f"round 1: client {BAD}'s update refused: {refused[0]['rejected']}" in shown
    assert summarize(run.rounds, 0.0)["rejected_updates"] == 1
    assert set(run.state) == set(honest)
    assert all(torch.equal(run.state[key], honest[key]) for key in honest)
    assert any(not torch.equal(honest[key], initial[key]) for key in honest)  # the honest clients did train


def test_the_flower_engine_refuses_the_same_reply_through_the_same_check(built, tmp_path, task_identity):
    config, federation, initial, honest = built("top-k")
    server = RoundServer(config, federation, RunRecorder(fresh_run_dir(str(tmp_path), "flower"), config),
                         Console(quiet=True))
    server.state = clone(initial)
    nodes = {client: 100 + client for client in range(3)}
    rounds = FlowerRounds(server, nodes, dump_config(config), federated_eval=False)
    messages = list(rounds.configure_train(1, ArrayRecord(), ConfigRecord(), grid=None))
    replies = []
    for message in messages:
        client_id = rounds.partitions[message.metadata.dst_node_id]
        outcome = attempt_client(config, federation, server.state, 1, client_id, rounds.playing.plans[client_id],
                                 server.seed(rounds.playing, client_id))
        outcome = poisoned(float("nan"))(outcome, server.state, federation.unit_map) if client_id == BAD else outcome
        replies.append(Message(content=encode_outcome(outcome), reply_to=message))
    arrays, _ = rounds.aggregate_train(1, replies)
    refused = [c for c in rounds.record["clients"] if "rejected" in c]
    assert [c["id"] for c in refused] == [BAD] and ": 1 NaN values" in refused[0]["rejected"]
    merged = from_arrays(arrays)
    assert all(torch.equal(merged[key], honest[key]) and torch.equal(server.state[key], honest[key]) for key in honest)


def test_a_nonfinite_global_state_stops_the_run_and_resume_continues_from_the_last_good_round(tmp_path, monkeypatch):
    base = tmp_path / "base"
    headless_bert(base)
    config = tiny_run_config(base, tmp_path, "nan", "eval.final_full=false", "output.tensorboard=false")
    whole_dir, whole = run_local(tiny_run_config(base, tmp_path, "whole", "eval.final_full=false",
                                                 "output.tensorboard=false"), Console(quiet=True))
    aggregate = FedAvgFull.aggregate

    def poisoned_round_2(self, round_number, global_state, updates):
        state, metrics = aggregate(self, round_number, global_state, updates)
        if round_number == 2:
            key = sorted(state)[0]
            state = {**state, key: torch.full_like(state[key], float("nan"))}
        return state, metrics

    monkeypatch.setattr(FedAvgFull, "aggregate", poisoned_round_2)
    with pytest.raises(NonFiniteStateError, match=r"round 2: the aggregated global state holds NaN or infinite "
                                                  r"values in 1 tensors .*; the checkpoint of round 1 in .* is kept"):
        run_local(config, Console(quiet=True))
    run_dir = tmp_path / "nan"
    assert load_checkpoint(run_dir).round_number == 1 and [r["round"] for r in read_rounds(run_dir)] == [1]
    assert not (run_dir / "summary.json").exists()
    monkeypatch.setattr(FedAvgFull, "aggregate", aggregate)
    summary = resume_local(run_dir, config, Console(quiet=True))
    assert summary["rounds"] == 2 and summary["rejected_updates"] == 0
    assert summary["final_accuracy"] == whole["final_accuracy"]
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2


def test_cli_stops_a_nonfinite_run_with_exit_1_and_no_traceback(tmp_path, monkeypatch):
    def nonfinite(*args, **kwargs):
        raise NonFiniteStateError("round 2: the aggregated global state holds NaN or infinite values in 1 tensors")

    monkeypatch.setattr("fedpilot.engines.local.run_local", nonfinite)
    result = CliRunner().invoke(app, ["run", "--set", f"output.dir={tmp_path}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "run stopped: round 2: the aggregated global state holds NaN" in " ".join(result.output.split())
