"""The budget baselines (exclusive, straggler, top-k, fedra) on synthetic cost profiles, and the
engine's record of a client a strategy leaves out."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from fedpilot.assign.budgets import ClientBudget
from fedpilot.config import load_config
from fedpilot.engines.local import run_local
from fedpilot.memory.cost import CostProfile, MiB, mem_of
from fedpilot.models.units import Unit, UnitMap
from fedpilot.report.records import read_rounds
from fedpilot.strategies import REGISTRY, StrategyContext, make_strategy

BASELINES = ("exclusive", "straggler", "top-k", "fedra")
UPLOAD = 1000
"""Bytes one unit's LoRA tensors take on the wire."""


def synthetic_profile(n: int, path_step: int, unit_cost: int) -> CostProfile:
    """Frozen + head = 104 MiB; path_mem[k] = (n - k) * path_step; unit_mem[j] = unit_cost."""
    return CostProfile(model="synthetic", batch=16, length=64, dtype="fp32", rank=8, targets=("query", "value"),
                       frozen=100 * MiB, head=1 * MiB, head_path=1 * MiB, peak=2 * MiB, state=(unit_cost,) * n,
                       path=tuple((n - k) * path_step for k in range(n)), lora=(0,) * n,
                       head_path_per_example=0.0, peak_per_example=0.0, path_per_example=(0.0,) * n,
                       lora_per_example=(0.0,) * n)


DEEP = synthetic_profile(4, 100 * MiB, 3 * MiB)
"""Activations dominate (as in the fedpilot strategy test): the lowest trained unit sets the cost."""
FLAT = synthetic_profile(8, 2 * MiB, 20 * MiB)
"""Unit state dominates: the cost grows with the number of units, nearly whichever they are."""


def context(profile: CostProfile, budgets: list[ClientBudget], seed: int = 0) -> StrategyContext:
    n = profile.num_units
    unit_map = UnitMap(tuple(Unit(j, f"layer.{j}.", (f"layer.{j}.lora_A", f"layer.{j}.lora_B")) for j in range(n)),
                       ("classifier.weight",))
    config = load_config(None, [f"seed={seed}"])
    return StrategyContext(unit_map, [10] * len(budgets), config, profile, budgets, (UPLOAD,) * n)


def memory(units) -> int:
    return mem_of(DEEP, units)


RICH = ClientBudget(2, 10**12, None)
DEEP_BUDGETS = [
    RICH,                                                   # 0: everything
    ClientBudget(1, memory([1, 2, 3]) + MiB, None),          # 1: top three
    ClientBudget(0, memory([2, 3]) + MiB, None),             # 2: top two (the weakest memory)
    ClientBudget(2, 10**12, 2 * UPLOAD + 500),               # 3: memory for all, upload for two
    ClientBudget(2, memory([0, 1, 2, 3]), 4 * UPLOAD),       # 4: exactly all units
]


def assert_fits(plans, budgets, profile):
    for client, plan in plans.items():
        budget = budgets[client]
        assert plan.estimated_bytes == mem_of(profile, plan.units) <= budget.memory == plan.budget_bytes
        assert plan.upload_bytes == UPLOAD * len(plan.units)
        assert budget.upload is None or plan.upload_bytes <= budget.upload
        assert list(plan.units) == sorted(set(plan.units))


def test_baselines_are_registered():
    assert set(BASELINES) <= set(REGISTRY)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize(("profile", "budgets"), [(DEEP, DEEP_BUDGETS),
                                                  (FLAT, [ClientBudget(0, mem_of(FLAT, range(f)), u)
                                                          for f in range(9) for u in (None, 2500, 5500)])])
def test_every_plan_fits_its_budgets(name, profile, budgets):
    strategy = make_strategy(name, context(profile, budgets))
    clients = list(range(len(budgets)))
    for round_number in (1, 2, 3):
        assert_fits(strategy.assign(round_number, clients), budgets, profile)


def test_exclusive_keeps_only_clients_that_fit_every_unit():
    strategy = make_strategy("exclusive", context(DEEP, DEEP_BUDGETS))
    plans = strategy.assign(1, [0, 1, 2, 3, 4])
    assert sorted(plans) == [0, 4]
    assert all(plan.units == (0, 1, 2, 3) for plan in plans.values())
    assert strategy.assign(2, [1, 2, 3]) == {}


def test_exclusive_round_without_participants_keeps_the_global_state():
    strategy = make_strategy("exclusive", context(DEEP, DEEP_BUDGETS))
    state = {"layer.0.lora_A": torch.ones(2), "classifier.weight": torch.zeros(2)}
    new, _ = strategy.aggregate(1, state, [])
    assert new.keys() == state.keys() and all(torch.equal(new[k], state[k]) for k in state)


def test_straggler_gives_everyone_the_weakest_clients_set():
    strategy = make_strategy("straggler", context(DEEP, DEEP_BUDGETS))
    # weakest memory (client 2) admits the top two units; weakest upload (client 3) two units too
    for clients in ([0, 1, 2, 3, 4], [0, 4]):  # the weakest counts even when it is not sampled
        plans = strategy.assign(1, clients)
        assert {plan.units for plan in plans.values()} == {(2, 3)}
        assert sorted(plans) == clients


def test_straggler_envelope_takes_memory_and_upload_from_different_clients():
    budgets = [ClientBudget(0, memory([2, 3]) + MiB, None), ClientBudget(1, 10**12, UPLOAD)]
    plans = make_strategy("straggler", context(DEEP, budgets)).assign(1, [0, 1])
    assert plans[0].units == plans[1].units == (3,)


def test_top_k_gives_the_top_units_and_fewer_to_weaker_clients():
    budgets = [*DEEP_BUDGETS, ClientBudget(0, DEEP.fixed_mem + MiB, None)]
    plans = make_strategy("top-k", context(DEEP, budgets)).assign(1, list(range(len(budgets))))
    assert [plans[c].units for c in range(len(budgets))] == [(0, 1, 2, 3), (1, 2, 3), (2, 3), (2, 3), (0, 1, 2, 3), ()]


FLAT_BUDGETS = [ClientBudget(0, mem_of(FLAT, range(3)), None), ClientBudget(1, mem_of(FLAT, range(6)), None),
                ClientBudget(2, 10**12, 4 * UPLOAD + 1), ClientBudget(2, 10**12, None)]


def fedra_sets(seed: int, rounds=range(1, 21)) -> dict[int, list[tuple[int, ...]]]:
    strategy = make_strategy("fedra", context(FLAT, FLAT_BUDGETS, seed))
    sets: dict[int, list[tuple[int, ...]]] = {c: [] for c in range(len(FLAT_BUDGETS))}
    for round_number in rounds:
        plans = strategy.assign(round_number, list(range(len(FLAT_BUDGETS))))
        assert_fits(plans, FLAT_BUDGETS, FLAT)
        for client, plan in plans.items():
            sets[client].append(plan.units)
    return sets


def test_fedra_is_reproducible_for_a_seed_and_redrawn_every_round():
    sets = fedra_sets(0)
    assert sets == fedra_sets(0)
    assert sets != fedra_sets(1)
    for client in (0, 1, 2):
        assert len(set(sets[client])) > 5  # random sets, not a fixed choice
        assert len({j for units in sets[client] for j in units}) == 8  # every unit gets drawn
    assert set(sets[3]) == {tuple(range(8))}  # a client that affords everything trains everything
    # a round's draw depends on (seed, round, client) only, not on who else was sampled
    alone = make_strategy("fedra", context(FLAT, FLAT_BUDGETS, 0)).assign(7, [1])
    assert alone[1].units == sets[1][6]


def test_fedra_uses_more_units_for_bigger_budgets():
    sets = fedra_sets(0)
    mean = {c: sum(map(len, s)) / len(s) for c, s in sets.items()}
    assert mean[0] < mean[1] < mean[3]
    assert {len(units) for units in sets[2]} == {4}  # upload for exactly four units
    assert {len(units) for units in sets[0]} == {3} and {len(units) for units in sets[1]} == {6}


def test_fedra_weak_client_trains_only_units_it_can_afford():
    sets = [make_strategy("fedra", context(DEEP, DEEP_BUDGETS)).assign(r, [2])[2].units for r in range(1, 11)]
    assert set(sets) == {(2, 3)}  # both fit together; units 0 and 1 never fit this budget


def test_engine_records_clients_a_strategy_leaves_out(tmp_path):
    config = load_config(None, [
        "data.max_train_examples=300", "clients.num_clients=3", "clients.per_round=3", "eval.max_examples=50",
        "eval.final_full=false", "model.max_length=32", "train.rounds=1", "train.local_steps=1", "train.batch_size=4",
        f"output.dir={tmp_path}", "output.name=exclusive", "strategy.name=exclusive",
        'clients.groups=[{share: 0.3334, memory: "95%"}, {share: 0.6666, memory: "100%"}]',
    ])
    run_dir, summary = run_local(config, Console(quiet=True))
    clients = read_rounds(run_dir)[0]["clients"]
    assert clients[0] == {"id": 0, "skipped": "budget"}
    assert [c["id"] for c in clients[1:]] == [1, 2] and all(c["units"] == [0, 1, 2, 3, 4, 5] for c in clients[1:])
    assert summary["final_accuracy"] is not None


def test_an_exclusive_run_that_nobody_qualifies_for_says_so_and_reports_no_accuracy(tmp_path):
    config = load_config(None, [
        "data.max_train_examples=300", "clients.num_clients=2", "clients.per_round=2", "eval.max_examples=50",
        "eval.final_full=false", "model.max_length=32", "train.rounds=1", "train.local_steps=1", "train.batch_size=4",
        f"output.dir={tmp_path}", "output.name=nobody", "strategy.name=exclusive",
        'clients.groups=[{share: 1.0, memory: "100%", upload: "1KiB"}]',
    ])
    console = Console(record=True, width=200)
    run_dir, summary = run_local(config, console)
    assert "no sampled client qualified for exclusive" in console.export_text()
    assert read_rounds(run_dir)[0]["strategy"] == {"skipped": "no qualifying clients"}
    assert summary["final_accuracy"] is None and summary["untrained_accuracy"] is not None
