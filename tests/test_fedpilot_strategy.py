"""The fedpilot strategy on a synthetic cost profile: budgets respected, values steer, STAgg merges."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedpilot.assign.budgets import ClientBudget, client_budgets, group_of_clients, parse_upload
from fedpilot.client import ClientUpdate
from fedpilot.config import load_config
from fedpilot.memory.cost import BudgetError, CostProfile, MiB, mem_of
from fedpilot.models.units import Unit, UnitMap
from fedpilot.strategies import StrategyContext, make_strategy

N = 4
PROFILE = CostProfile(model="synthetic", batch=16, length=64, dtype="fp32", rank=8, targets=("query", "value"),
                      frozen=100 * MiB, head=1 * MiB, head_path=1 * MiB, peak=2 * MiB, state=(2 * MiB,) * N,
                      path=tuple((N - k) * 100 * MiB for k in range(N)), lora=(1 * MiB,) * N,
                      head_path_per_example=0.0, peak_per_example=0.0, path_per_example=(0.0,) * N,
                      lora_per_example=(0.0,) * N)
UNIT_MAP = UnitMap(tuple(Unit(j, f"layer.{j}.", (f"layer.{j}.lora_A", f"layer.{j}.lora_B")) for j in range(N)),
                   ("classifier.weight",))


def context(budgets: list[ClientBudget], *overrides: str) -> StrategyContext:
    """The synthetic profile, measured at the config's lora.rank."""
    config = load_config(None, ["strategy.name=fedpilot", *overrides])
    profile = dataclasses.replace(PROFILE, rank=config.lora.rank)
    return StrategyContext(UNIT_MAP, [10] * len(budgets), config, profile, budgets, (1000,) * N)


def test_a_profile_at_another_rank_than_lora_rank_is_refused():
    config = load_config(None, ["strategy.name=fedpilot", "lora.rank=4"])
    with pytest.raises(ValueError, match="rank 8, but lora.rank is 4"):
        StrategyContext(UNIT_MAP, [10], config, PROFILE, [ClientBudget(0, 10**12, None)], (1000,) * N)


def test_every_plan_fits_its_budgets_and_weak_clients_get_high_units():
    budgets = [ClientBudget(0, mem_of(PROFILE, [2]) + 5 * MiB, None), ClientBudget(1, 10**12, None),
               ClientBudget(2, 10**12, 2500)]
    strategy = make_strategy("fedpilot", context(budgets, "strategy.value=uniform", "strategy.ranks=[8]"))
    plans = strategy.assign(1, [0, 1, 2])
    assert plans[0].units == (2, 3)
    assert plans[1].units == (0, 1, 2, 3)
    assert len(plans[2].units) == 2
    for client, plan in plans.items():
        assert plan.estimated_bytes == mem_of(PROFILE, plan.units) <= budgets[client].memory
        assert plan.upload_bytes == 1000 * len(plan.units)
    assert plans[2].upload_bytes <= 2500


def test_a_client_that_affords_no_unit_trains_the_head_only():
    budgets = [ClientBudget(0, PROFILE.fixed_mem + MiB, None)]
    plans = make_strategy("fedpilot", context(budgets)).assign(1, [0])
    assert plans[0].units == () and plans[0].estimated_bytes == PROFILE.fixed_mem


def test_local_scores_steer_the_choice_when_upload_binds():
    budgets = [ClientBudget(0, 10**12, 1100)]
    strategy = make_strategy("fedpilot", context(budgets, "strategy.value=local", "strategy.bonus=false",
                                                 "strategy.ranks=[8]"))
    assert strategy.score_request(1, [0]) == {0: (0, 1, 2, 3)}
    strategy.receive_scores(1, {0: {0: (0.1,), 1: (5.0,), 2: (0.2,), 3: (0.3,)}})
    assert strategy.assign(1, [0])[0].units == (1,)


def test_an_upload_bound_client_covers_every_unit_at_a_lower_rank():
    # upload for one full-rank unit (1000 B) = four units at rank 2 (250 B each, exactly the budget: the
    # knapsack's rounded-down pass finds them); the scores say rank 2 keeps 70% of a unit's value, so four
    # units at rank 2 (2.8) beat one at rank 8 (1.0)
    budgets = [ClientBudget(0, 10**12, 1000)]
    strategy = make_strategy("fedpilot", context(budgets, "strategy.value=local", "strategy.bonus=false",
                                                 "strategy.ranks=[2, 4, 8]"))
    assert strategy.ranks == (2, 4, 8)
    strategy.receive_scores(1, {0: {j: (0.7, 0.9, 1.0) for j in range(N)}})
    plan = strategy.assign(1, [0])[0]
    assert (plan.units, plan.ranks, plan.upload_bytes) == ((0, 1, 2, 3), (2, 2, 2, 2), 1000)
    # memory at rank 2 saves 6/8 of each unit's state (2 MiB) and LoRA weights (1000 B)
    assert plan.estimated_bytes == mem_of(PROFILE, (0, 1, 2, 3)) - (4 * 6 * (2 * MiB + 1000)) // 8
    # with linear shares (no scores: r / 8) one full-rank unit ties four at rank 2 and costs less memory
    linear = make_strategy("fedpilot", context(budgets, "strategy.value=uniform", "strategy.ranks=[2, 4, 8]"))
    assert linear.assign(2, [0])[0].ranks is None


def test_mixed_rank_plans_never_exceed_their_budgets():
    import numpy as np

    rng = np.random.default_rng(0)
    full = mem_of(PROFILE, range(N))
    for trial in range(200):
        budgets = [ClientBudget(0, int(rng.uniform(PROFILE.fixed_mem, 1.2 * full)),
                                None if trial % 3 == 0 else int(rng.uniform(0, 4500)))]
        strategy = make_strategy("fedpilot", context(budgets, "strategy.value=random", "strategy.ranks=[2, 4, 8]"))
        plan = strategy.assign(trial + 1, [0])[0]
        assert plan.estimated_bytes <= budgets[0].memory
        assert budgets[0].upload is None or plan.upload_bytes <= budgets[0].upload
        assert plan.ranks is None or (len(plan.ranks) == len(plan.units) and set(plan.ranks) <= {2, 4, 8})


def test_mean_normalisation_treats_equal_scores_equally_whatever_a_client_can_afford():
    budgets = [ClientBudget(0, 10**12, None)] * 3
    reports = {0: {j: (1.0,) for j in range(N)}, 1: {3: (1.0,)}, 2: {3: (1.0,)}}
    scores = {}
    for norm in ("report", "mean"):
        strategy = make_strategy("fedpilot", context(budgets, f"strategy.global_norm={norm}"))
        strategy.receive_scores(1, reports)
        strategy.update_global_scores()
        scores[norm] = strategy.global_scores
    assert scores["mean"] == pytest.approx({j: 1.0 for j in range(N)})
    # sum to 1: unit 3 gets (1/4 + 1 + 1) / 3 = 0.75 against 1/4 for units only client 0 reported
    assert scores["report"] == pytest.approx({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.75})


PRODUCT = ("strategy.value=uniform", "strategy.merge=product", "strategy.ranks=[2, 4]", "lora.rank=4")


def test_product_merge_with_a_lower_rank_client_survives_a_checkpoint():
    torch.manual_seed(0)
    budgets = [ClientBudget(0, 10**12, None)] * 2
    keys = [k for u in UNIT_MAP.units for k in u.lora_keys]
    state = {k: torch.randn(4, 6) if "lora_A" in k else torch.zeros(5, 4) for k in keys}
    state["classifier.weight"] = torch.zeros(2)
    low = {"layer.3.lora_A": torch.randn(2, 6), "layer.3.lora_B": torch.randn(5, 2), "classifier.weight": torch.ones(2)}
    full = {"layer.3.lora_A": torch.randn(4, 6), "layer.3.lora_B": torch.randn(5, 4), "classifier.weight": torch.ones(2)}
    results = []
    for resume in (False, True):
        strategy = make_strategy("fedpilot", context(budgets, *PRODUCT))
        strategy.assign(1, [0, 1])
        new, metrics = strategy.aggregate(1, state, [ClientUpdate(0, low, 10), ClientUpdate(1, full, 10)])
        assert new["layer.3.lora_A"].shape == (4, 6) and metrics["units"][3]["coverage"] == 2
        assert torch.equal(new["layer.0.lora_A"], state["layer.0.lora_A"])  # untrained: unchanged factors
        if resume:
            restored = make_strategy("fedpilot", context(budgets, *PRODUCT))
            restored.restore(*strategy.state())
            strategy = restored
        strategy.assign(2, [0, 1])
        results.append(strategy.aggregate(2, new, [ClientUpdate(0, {k: v + 0.1 for k, v in low.items()}, 10)])[0])
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_the_global_only_value_still_asks_for_scores_so_the_global_score_forms():
    budgets = [ClientBudget(0, 10**12, None)] * 2
    strategy = make_strategy("fedpilot", context(budgets, "strategy.value=global", "strategy.global_norm=report"))
    assert strategy.score_request(1, [0, 1]) == {0: (0, 1, 2, 3), 1: (0, 1, 2, 3)}
    strategy.receive_scores(1, {0: {0: (1.0,), 1: (3.0,)}, 1: {0: (0.0,), 1: (4.0,)}})
    strategy.assign(1, [0, 1])
    strategy.aggregate(1, state(0.0), [ClientUpdate(0, {"classifier.weight": torch.ones(2)}, 10)])
    # reports normalised to sum 1: client 0 {0: 0.25, 1: 0.75}, client 1 {0: 0, 1: 1}; equal sizes
    assert strategy.global_scores == pytest.approx({0: 0.125, 1: 0.875})


def test_uniform_and_random_values_need_no_scores():
    budgets = [ClientBudget(0, 10**12, None)]
    assert make_strategy("fedpilot", context(budgets, "strategy.value=uniform")).score_request(1, [0]) == {}
    assert make_strategy("fedpilot", context(budgets, "strategy.value=random")).score_request(1, [0]) == {}


def state(value: float) -> dict[str, torch.Tensor]:
    keys = [k for u in UNIT_MAP.units for k in u.lora_keys] + list(UNIT_MAP.head_keys)
    return {k: torch.full((2,), value) for k in keys}


def test_aggregate_moves_only_trained_units_and_averages_the_head():
    budgets = [ClientBudget(0, 10**12, None)] * 2
    strategy = make_strategy("fedpilot", context(budgets, "strategy.value=uniform", "strategy.dwa=false",
                                                 "strategy.merge=factors"))
    strategy.assign(1, [0, 1])
    update_a = ClientUpdate(0, {"layer.3.lora_A": torch.full((2,), 2.0), "classifier.weight": torch.full((2,), 1.0)}, 10)
    update_b = ClientUpdate(1, {"classifier.weight": torch.full((2,), 3.0)}, 30)
    new, metrics = strategy.aggregate(1, state(0.0), [update_a, update_b])
    assert torch.equal(new["classifier.weight"], torch.full((2,), 2.5))
    # unit 3: D = 2, H = 2, alpha = 1/2 -> W = 0 + 1 * (0.5 * 2 + 0.5 * 2) = 2 on lora_A; lora_B got D = 0
    assert torch.allclose(new["layer.3.lora_A"], torch.full((2,), 2.0))
    assert torch.equal(new["layer.0.lora_A"], torch.zeros(2))
    assert metrics["units"][3]["coverage"] == 1 and metrics["units"][0]["coverage"] == 0
    assert strategy.trained_rounds == [0, 0, 0, 1]


def test_budget_groups_and_upload_parsing():
    assert group_of_clients([1 / 3, 1 / 3, 1 / 3], 6) == [0, 0, 1, 1, 2, 2]
    assert parse_upload("unlimited") is None
    assert parse_upload("2MiB") == 2 * MiB
    assert parse_upload("8Mbit/s*30s") == 30_000_000
    with pytest.raises(BudgetError, match="upload"):
        parse_upload("fast")
    budgets = client_budgets([(0.5, "50%", "1KiB"), (0.5, "t4-16g", "unlimited")], 4, PROFILE)
    assert budgets[0].memory == int(0.5 * mem_of(PROFILE, range(N))) and budgets[0].upload == 1024
    assert budgets[3].group == 1 and budgets[3].upload is None
    with pytest.raises(BudgetError, match=r"clients.groups\[0\].*below the minimum"):
        client_budgets([(1.0, "1MiB", "unlimited")], 2, PROFILE)


def test_only_the_reference_method_ignores_budgets():
    budgets = [ClientBudget(0, mem_of(PROFILE, [3]), None)]
    reference = make_strategy("fedavg-full", context(budgets)).assign(1, [0])[0]
    assert reference.units == (0, 1, 2, 3) and not reference.enforce_budget
    assert reference.estimated_bytes > reference.budget_bytes
    assert make_strategy("fedpilot", context(budgets)).assign(1, [0])[0].enforce_budget
