"""Budgets checked when the config loads, named by field; groups a profile cannot serve excluded or refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedpilot.assign.budgets import client_budgets
from fedpilot.cli import app
from fedpilot.config import ConfigError, load_config
from fedpilot.federation import sample_clients
from fedpilot.memory.cost import BudgetError, CostProfile, MiB, mem_of
from fedpilot.report.records import summarize
from fedpilot.strategies.straggler import weakest_budget

runner = CliRunner()
N = 4
PROFILE = CostProfile(model="synthetic", batch=16, length=64, dtype="fp32", rank=8, targets=("query", "value"),
                      frozen=100 * MiB, head=4 * MiB, head_path=1 * MiB, peak=2 * MiB, state=(3 * MiB,) * N,
                      path=tuple((N - k) * 100 * MiB for k in range(N)), lora=(1 * MiB,) * N,
                      head_path_per_example=0.0, peak_per_example=0.0, path_per_example=(0.0,) * N,
                      lora_per_example=(0.0,) * N)


@pytest.mark.parametrize(("override", "message"), [
    ("clients.groups=[{memory: A100}]", "clients.groups[0].memory: GPU name 'A100' is ambiguous: a100-40g, a100-80g"),
    ("clients.groups=[{share: 0.5, memory: 6GiB}, {share: 0.5, memory: rtx9999}]",
     "clients.groups[1].memory: unknown GPU name 'rtx9999'"),
    ("clients.groups=[{upload: fast}]", "clients.groups[0].upload: cannot parse upload budget 'fast'"),
    ("clients.groups=[{memory: 12%%}]", "clients.groups[0].memory: cannot parse budget '12%%' as a percentage"),
])
def test_budgets_are_checked_when_the_config_loads(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_data_stats_rejects_a_bad_gpu_name_before_loading_data():
    result = runner.invoke(app, ["data-stats", "--set", "clients.groups=[{memory: rtx9999}]"])
    assert result.exit_code == 2
    assert "clients.groups[0].memory: unknown GPU name 'rtx9999'" in result.output


def test_a_group_below_the_head_only_cost_is_an_error_or_excluded():
    groups = [(0.5, "1MiB", "unlimited"), (0.5, "100%", "unlimited")]
    with pytest.raises(BudgetError, match=r"clients.groups\[0\].memory: .*below the minimum.*unaffordable=exclude"):
        client_budgets(groups, 4, PROFILE)
    budgets = client_budgets(groups, 4, PROFILE, "exclude")
    assert [b.excluded for b in budgets] == [True, True, False, False]
    assert budgets[0].memory == MiB and budgets[2].memory == mem_of(PROFILE, range(PROFILE.num_units))
    assert weakest_budget(budgets).memory == budgets[2].memory
    with pytest.raises(BudgetError, match="every client group"):
        client_budgets([(1.0, "1MiB", "unlimited")], 4, PROFILE, "exclude")


def test_sampling_skips_excluded_clients_and_depends_on_seed_and_round_only():
    assert sample_clients(10, 5, 0, 3, excluded=()) == sample_clients(10, 5, 0, 3)
    for round_number in range(1, 20):
        drawn = sample_clients(10, 5, 0, round_number, excluded=[0, 1, 2, 3])
        assert len(drawn) == 5 and min(drawn) >= 4
        assert drawn == sample_clients(10, 5, 0, round_number, excluded=[3, 2, 1, 0])
    assert sample_clients(10, 5, 0, 1, excluded=range(7)) == [7, 8, 9]


def test_summary_lists_the_excluded_clients():
    rounds = [{"round": 1, "clients": [], "excluded": [0, 1]}, {"round": 2, "clients": [], "excluded": [0, 1]}]
    assert summarize(rounds, 1.0)["excluded_clients"] == [0, 1]
    assert summarize([{"round": 1, "clients": []}], 1.0)["excluded_clients"] == []


def test_budget_table_shows_reach_and_warns_for_a_head_only_group():
    from rich.console import Console

    from fedpilot.report.budget_table import budget_table

    config = load_config(None, ["clients.num_clients=6", "clients.per_round=2", "clients.unaffordable=exclude",
                                "clients.groups=[{share: 0.3334, memory: 1MiB}, {share: 0.3333, memory: 320MiB}, "
                                "{share: 0.3333, memory: '100%', upload: 1KiB}]"])
    groups = [(g.share, g.memory, g.upload) for g in config.clients.groups]
    budgets = client_budgets(groups, 6, PROFILE, "exclude")
    table, warnings = budget_table(config, PROFILE, budgets, [48 * 1024] * N)
    console = Console(width=250, record=True)
    console.print(table)
    text = console.export_text()
    assert "excluded" in text and "blocks 2-3" in text and "head only" in text and "0-1 (2)" in text
    top = mem_of(PROFILE, [N - 1]) / MiB
    assert warnings == [f"clients.groups[2] can upload no unit (upload 1.0 KiB, one unit 48.0 KiB): "
                        f"it will train the head only"]
    _, warnings = budget_table(config.model_copy(), PROFILE, client_budgets(
        [(0.5, "120MiB", "unlimited"), (0.5, "100%", "unlimited")], 6, PROFILE), [48 * 1024] * N)
    assert warnings[0].startswith("clients.groups[0] can afford no unit at batch 16 and 64 tokens")
    assert f"{top:.1f} MiB reaches the top unit (block {N - 1})" in warnings[0]
