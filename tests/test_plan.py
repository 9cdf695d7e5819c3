"""`fedpilot plan`: the planner's assignments are the knapsack's; unaffordable kinds are reported; --scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import BertConfig
from typer.testing import CliRunner

from fedpilot.assign.knapsack import solve_assignment, solve_rank_assignment
from fedpilot.assign.options import rank_options
from fedpilot.assign.reach import deepest_unit, lora_bytes, upload_units
from fedpilot.cli import app
from fedpilot.config import ConfigError
from fedpilot.fleet.planner import head_bytes, largest_batch, plan_fleet
from fedpilot.fleet.show import ranked_units, unit_ranges, unit_values
from fedpilot.fleet.spec import Fleet, load_fleet
from fedpilot.memory.cost import CostProfile, KiB, MiB, mem_of

N = 6
PROFILE = CostProfile(model="synthetic", batch=8, length=64, dtype="fp32", rank=8, targets=("query", "value"),
                      frozen=100 * MiB, head=4 * MiB, head_path=1 * MiB, peak=2 * MiB, state=(3 * 48 * KiB,) * N,
                      path=tuple((N - k) * 20 * MiB for k in range(N)), lora=(1 * MiB,) * N,
                      head_path_per_example=0.125 * MiB, peak_per_example=0.25 * MiB,
                      path_per_example=tuple((N - k) * 2.5 * MiB for k in range(N)),
                      lora_per_example=(0.125 * MiB,) * N)
FLEET = Fleet.model_validate({"kinds": [
    {"name": "phone", "count": 5, "memory": "50MiB"},
    {"name": "laptop", "count": 4, "memory": "150MiB", "upload": "100KiB"},
    {"name": "desk", "count": 3, "memory": "190MiB", "upload": "8Mbit/s*1s"},
    {"name": "server", "count": 2, "memory": "100%"},
]})


@pytest.mark.parametrize("values", [None, [0.1, 0.5, 0.05, 0.2, 0.3, 0.4]])
def test_each_kind_gets_exactly_the_knapsack_assignment(values):
    plan = plan_fleet(PROFILE, FLEET, values)
    weights = values or [1.0] * N
    for kind, memory, upload in zip(plan.kinds[1:], (150 * MiB, 190 * MiB, mem_of(PROFILE, range(N))),
                                    (100 * KiB, 1_000_000, None)):
        expected = solve_assignment(weights, PROFILE.path_mem, PROFILE.unit_mem, PROFILE.fixed_mem, memory,
                                    lora_bytes(PROFILE), upload, *rank_options(PROFILE, lora_bytes(PROFILE), (8,)).grids)
        assert (kind.memory_budget, kind.upload_budget) == (memory, upload)
        assert (kind.units, kind.mem_bytes) == (expected.units, expected.mem_bytes)
        assert kind.upload_bytes == expected.upload_bytes + head_bytes(PROFILE)
        assert kind.deepest_unit == deepest_unit(PROFILE, memory, lora_bytes(PROFILE), upload)
    assert plan.kinds[3].largest_batch_all_units == PROFILE.batch


def test_rank_options_plan_what_the_rank_knapsack_assigns_with_fedpilots_costs_and_grids():
    ranks = (2, 4, 8)
    plan = plan_fleet(PROFILE, FLEET, [0.1, 0.5, 0.05, 0.2, 0.3, 0.4], ranks)
    costs = rank_options(PROFILE, lora_bytes(PROFILE), ranks)
    values = np.array([0.1, 0.5, 0.05, 0.2, 0.3, 0.4])[:, None] * np.array([0.25, 0.5, 1.0])
    for kind in plan.kinds[1:]:
        expected = solve_rank_assignment(values, PROFILE.path_mem, costs.memory, PROFILE.fixed_mem,
                                         kind.memory_budget, costs.uploads, kind.upload_budget, *costs.grids)
        assert (kind.units, kind.ranks) == (expected.units, tuple(ranks[o] for o in expected.options))
        assert kind.upload_bytes == expected.upload_bytes + head_bytes(PROFILE)
    # 108 KiB of upload carries two units at rank 8 (48 KiB each): the best two (values 0.5, 0.4), and in the
    # 12 KiB left the next best (0.3) at rank 2 for a quarter of its value
    thin = Fleet.model_validate({"kinds": [{"name": "thin", "count": 2, "memory": "100%", "upload": "108KiB"}]})
    values = [0.1, 0.5, 0.05, 0.2, 0.3, 0.4]
    kind = plan_fleet(PROFILE, thin, values, ranks).kinds[0]
    assert (kind.units, kind.ranks, kind.value) == ((1, 4, 5), (8, 2, 8), pytest.approx(0.5 + 0.3 / 4 + 0.4))
    assert kind.upload_bytes == (48 + 12 + 48) * KiB + head_bytes(PROFILE)
    assert plan_fleet(PROFILE, thin, values).kinds[0].units == (1, 5)
    assert plan.rank_options == ranks and json.loads(json.dumps(plan.to_json()))["kinds"][1]["ranks"] == [8, 8]
    # reach counts a unit at the lowest rank: 20 KiB of upload carries no unit at rank 8 (48 KiB), one at rank 2
    narrow = Fleet.model_validate({"kinds": [{"name": "narrow", "count": 3, "memory": "100%", "upload": "20KiB"}]})
    full_rank, low_rank = plan_fleet(PROFILE, narrow), plan_fleet(PROFILE, narrow, None, ranks)
    assert (full_rank.kinds[0].deepest_unit, full_rank.can_train) == (None, (0,) * N)
    assert (low_rank.kinds[0].deepest_unit, low_rank.can_train) == (0, (3,) * N)
    assert len(low_rank.kinds[0].units) == 1 and low_rank.unit_upload_bytes == lora_bytes(PROFILE)
    # memory at the lowest rank: a budget of Mem({2}) at rank 2 reaches unit 2, which rank 8 does not
    saving = (8 - 2) * (PROFILE.state[2] + lora_bytes(PROFILE)[2]) / 8
    tight = Fleet.model_validate({"kinds": [{"name": "tight", "count": 1,
                                             "memory": f"{int(mem_of(PROFILE, [2]) - saving)}B"}]})
    assert plan_fleet(PROFILE, tight).kinds[0].deepest_unit == 3
    assert plan_fleet(PROFILE, tight, None, ranks).kinds[0].deepest_unit == 2
    assert ranked_units((0, 1, 2, 4, 5), (8, 8, 4, 4, 4), False) == "0-1 r8, 2 r4, 4-5 r4"
    assert ranked_units((0, 1), (8, 8), True) == "0-1" and ranked_units((), (), False) == "head only"


@pytest.mark.parametrize("ranks", [[8, 4], [2, 4], [0, 8], [4, 4, 8], []])
def test_rank_options_must_ascend_to_the_lora_rank(ranks):
    with pytest.raises(ValueError, match=r"rank options must be ascending, distinct, within 1..8 and end at 8"):
        plan_fleet(PROFILE, FLEET, None, ranks)


def test_plan_command_refuses_malformed_ranks(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("kinds:\n  - {name: small, count: 3, memory: 100MiB}\n")
    for text in ("2,x,8", "8,4"):
        result = CliRunner().invoke(app, ["plan", "--fleet", str(fleet), "--ranks", text, "--out", str(tmp_path)])
        assert result.exit_code == 2 and f"--ranks '{text}': comma-separated whole ranks" in result.output.replace(
            "\n", "")


def test_plan_command_at_module_granularity_names_module_units_and_refuses_others(tmp_path):
    folder = tmp_path / "bert"
    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64).save_pretrained(folder)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("kinds:\n  - {name: all, count: 2, memory: '100%'}\n")
    base = ["plan", "--fleet", str(fleet), "--model", str(folder), "--batch", "2", "--seq", "8", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*base, "--granularity", "module"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written["blocks"] == [0, 0, 1, 1] and written["kinds"][0]["units"] == [0, 1, 2, 3]
    assert "module units: b = every adapted Linear of block b, b.i = its i-th" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ all "))
    assert [cell.strip() for cell in row.split("│")][5:7] == ["0.0", "0-1"]  # deepest unit, assigned units
    assert written["granularity"] == "module"
    result = CliRunner().invoke(app, [*base, "--granularity", "layer"])
    assert result.exit_code == 2 and "granularity must be one of" in result.output


def test_unaffordable_kinds_are_reported_never_dropped():
    plan = plan_fleet(PROFILE, FLEET)
    phone = plan.kinds[0]
    assert [k.name for k in plan.kinds] == ["phone", "laptop", "desk", "server"]
    assert not phone.takes_part and phone.units == () and "head-only" in phone.reason
    assert phone.count == 5 and plan.can_train[N - 1] == 4 + 3 + 2
    assert sum(plan.assigned) == sum(k.count * len(k.units) for k in plan.kinds)
    assert json.loads(json.dumps(plan.to_json()))["kinds"][0]["takes_part"] is False


def test_coverage_counts_clients_that_can_train_each_unit():
    plan = plan_fleet(PROFILE, FLEET)
    for j in range(N):
        fits = [k for k in plan.kinds if k.takes_part and mem_of(PROFILE, [j]) <= k.memory_budget
                and (k.upload_budget is None or lora_bytes(PROFILE)[j] <= k.upload_budget)]
        assert plan.can_train[j] == sum(k.count for k in fits)
    assert plan.can_train[0] == 2 and plan.can_train[0] < plan.can_train[N - 1]


def test_largest_batch_and_reach_helpers():
    memory = mem_of(PROFILE.at_batch(20), range(N))
    assert largest_batch(PROFILE, range(N), memory) == 20
    assert largest_batch(PROFILE, range(N), PROFILE.fixed_mem) == 0
    assert upload_units([48 * KiB] * N, 100 * KiB) == 2 and upload_units([1] * N, None) == N
    assert deepest_unit(PROFILE, PROFILE.fixed_mem, lora_bytes(PROFILE), None) is None
    assert unit_ranges((0, 1, 2, 5, 7, 8)) == "0-2, 5, 7-8" and unit_ranges(()) == "head only"


def test_scores_come_from_a_real_runs_records(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"round": 1, "clients": [], "strategy": {"global_scores": {str(j): 0.0 for j in range(N)}}},
               {"round": 2, "clients": [], "strategy": {"global_scores": {str(j): j / 10 for j in range(N)}}},
               {"round": 3, "clients": [], "strategy": {"skipped": "no surviving clients"}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert unit_values(run, N) == [j / 10 for j in range(N)]
    assert unit_values(None, N) is None
    with pytest.raises(ConfigError, match="7 units"):
        unit_values(run, 7)
    with pytest.raises(ConfigError, match="no round of that run logged"):
        unit_values(tmp_path, N)


def test_fleet_file_errors_name_the_field(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("kinds:\n  - {name: a, count: 2, memory: A100}\n  - {name: b, count: 0, memory: 1GiB}\n")
    with pytest.raises(ConfigError) as error:
        load_fleet(fleet)
    assert "kinds[0].memory: GPU name 'A100' is ambiguous" in str(error.value)
    assert "kinds[1].count: Input should be greater than 0" in str(error.value)


@pytest.mark.slow
def test_plan_command_on_the_packaged_model_with_a_runs_scores(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("kinds:\n  - {name: small, count: 3, memory: 100MiB}\n  - {name: big, count: 2, memory: 300MiB}\n")
    scores = "results/readme-runs/fedpilot-20newsgroups-iid-s0"
    result = CliRunner().invoke(app, ["plan", "--fleet", str(fleet), "--batch", "16", "--seq", "64", "--dtype", "fp32",
                                      "--scores", scores, "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cannot take part" in result.output and "global IG-Scores" in result.output
    written = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert written["kinds"][1]["units"] == list(range(6)) and (tmp_path / "out" / "plan.png").stat().st_size > 0
