"""The Flower engine: its ClientApp called directly (no ray) and agreement with the local engine in
Flower's simulation engine. The loopback deployment script is tested in test_deployment.py."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # flwr reads it once, when imported

import pytest
import torch
from flwr.app import ConfigRecord, Context, MessageType, RecordDict
from rich.console import Console
from safetensors.torch import load_file

from fedpilot.client import Plan
from fedpilot.config import dump_config, load_config
from fedpilot.engines.flower import instruction, run_flower
from fedpilot.engines.flower_client import (client_app, federation_for, from_arrays, plan_config, plan_from_config,
                                            to_arrays)
from fedpilot.engines.client_round import attempt_client
from fedpilot.engines.local import run_local
from fedpilot.engines.server import split_state, state_bytes
from fedpilot.report.records import read_rounds

TINY = ["data.max_train_examples=300", "clients.num_clients=3", "clients.per_round=3", "eval.max_examples=60",
        "eval.final_full=false", "model.max_length=32", "train.rounds=2", "train.local_steps=2", "train.batch_size=8"]
HETERO = ["strategy.name=fedpilot", "clients.groups=[{share: 0.3334, memory: '85%', upload: '64KiB'}, "
          "{share: 0.3333, memory: '92%', upload: '160KiB'}, {share: 0.3333, memory: '100%', upload: '200KiB'}]"]


def node(partition: int) -> Context:
    """The context of a SuperNode holding `partition` of 3."""
    return Context(run_id=1, node_id=100 + partition, node_config={"partition-id": partition, "num-partitions": 3},
                   state=RecordDict(), run_config={})


def test_client_app_trains_its_plan_and_returns_only_the_planned_units(tmp_path, task_identity):
    config = load_config(None, [*TINY, f"output.dir={tmp_path}"])
    text = dump_config(config)
    _, federation = federation_for(text)
    state, plan = federation.initial_state(), Plan((4, 5), 2)
    trained, frozen = split_state(federation.unit_map, state, plan.units)
    message = instruction(101, MessageType.TRAIN, text, plan_config(plan, 1, 1, 1234),
                          arrays=to_arrays(trained), frozen=to_arrays(frozen))
    reply = client_app(message, node(1))
    returned = from_arrays(reply.content["arrays"])
    unit_map = federation.unit_map
    assert set(returned) == set(unit_map.keys_of([4, 5])) | set(unit_map.head_keys)
    assert state_bytes(returned) < state_bytes(state)
    assert reply.content["metrics"]["num-examples"] == len(federation.client_data[1])
    expected = attempt_client(config, federation, state, 1, 1, plan, 1234)
    assert all(torch.equal(returned[key], expected.tensors[key]) for key in returned)
    asked = client_app(instruction(101, f"{MessageType.QUERY}.partition", text), node(1))
    assert asked.content["partition"]["partition-id"] == 1
    with pytest.raises(ValueError, match="message for partition 2 reached partition 1"):
        client_app(instruction(101, MessageType.TRAIN, text, plan_config(plan, 1, 2, 1234), arrays=to_arrays(trained),
                               frozen=to_arrays(frozen)), node(1))


def test_a_plan_survives_its_config_record():
    plan = Plan((1, 4), 3, estimated_bytes=10, budget_bytes=20, upload_bytes=30)
    assert plan_from_config(ConfigRecord(plan_config(plan, 2, 1, 7))) == plan
    assert plan_from_config(ConfigRecord(plan_config(Plan((), 1), 2, 1, 7))) == Plan((), 1)
    mixed = Plan((2, 5), 3, ranks=(2, 8))
    assert plan_from_config(ConfigRecord(plan_config(mixed, 2, 1, 7))) == mixed


@pytest.mark.slow
def test_local_and_flower_simulation_make_the_same_run(tmp_path):
    config = load_config(None, [*TINY, *HETERO, f"output.dir={tmp_path}", "output.name=same"])
    local_dir, local = run_local(config, Console(quiet=True))
    flower_dir, flower = run_flower(config, Console(quiet=True))
    assert {p.name for p in flower_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "model",
                                                      "accuracy.png", "units.png"}
    local_model, flower_model = (load_file(d / "model" / "adapter_model.safetensors") for d in (local_dir, flower_dir))
    assert local_model.keys() == flower_model.keys()
    local_rounds, flower_rounds = read_rounds(local_dir), read_rounds(flower_dir)
    assert len(flower_rounds) == 2
    for ours, theirs in zip(local_rounds, flower_rounds, strict=True):
        assignments = [[(c["id"], c.get("units")) for c in r["clients"]] for r in (ours, theirs)]
        assert assignments[0] == assignments[1]
        for key in ("download_bytes", "sent_bytes"):
            assert [c[key] for c in ours["clients"]] == [c[key] for c in theirs["clients"]]
        assert [c["loss"] for c in ours["clients"]] == pytest.approx([c["loss"] for c in theirs["clients"]], rel=1e-4)
    assert abs(local["final_accuracy"] - flower["final_accuracy"]) <= 0.005
    full = state_bytes(federation_for(dump_config(config))[1].initial_state())
    assert any(0 < c["sent_bytes"] < full for r in flower_rounds for c in r["clients"])

