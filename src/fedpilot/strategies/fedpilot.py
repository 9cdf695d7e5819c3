"""fedpilot: each client trains the most valuable units, each at a chosen rank, that fit its budgets;
STAgg with DWA merges.

Assignment (DESIGN 3, extended): an exact multiple-choice knapsack in which each unit is skipped or
trained at one rank option (`Config.rank_options`, e.g. {r/4, r/2, r}; by default r alone) under memory (a fixed
cost set by the lowest unit, small per-unit terms above it, `models/rank.mem_at_ranks`) and upload
(r_c / r of the unit's full-rank bytes); at module granularity over blocks of module units
(`assign/modules.py`). Value (DESIGN 4): the combined IG-Score with an exploration
bonus, times the share of it each rank option keeps (`assign/ig_score.py`). Aggregation (DESIGN 5):
STAgg per unit in product space (B A re-factored by SVD, `aggregate/product.py`) or on A and B,
with coverage over the clients that could afford the unit; the head is a data-weighted mean over all.
Ablations are config switches: `value`, `score`, `score_estimate`, `global_norm`, `bonus`,
`aggregation`, `dwa`, `dwa_ratio`, `coverage`, `bias`, `merge`, `ranks`, `momentum`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from fedpilot.aggregate.fedavg import weighted_average
from fedpilot.aggregate.product import client_products, factors, fill_rank, products
from fedpilot.aggregate.stagg import UnitHistory, stagg_round
from fedpilot.assign.ig_score import (combined_values, full_rank_scores, normalised_report, rank_shares,
                                      update_global)
from fedpilot.assign.options import RankOptions, rank_options, solve_options
from fedpilot.client import ClientUpdate, Plan
from fedpilot.strategies.base import State, Strategy, StrategyContext

LAMBDA_OF_VALUE = {"local": 1.0, "global": 0.0}
UNSCORED_VALUES = ("uniform", "random")
"""Values that need no IG-Scores from the clients."""


class FedPilot(Strategy):
    """Fed-piLot: knapsack assignment of units and ranks by IG-Score value, STAgg/DWA aggregation."""

    name = "fedpilot"

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        self.options = context.config.strategy
        self.ranks = context.config.rank_options()
        self.global_scores: dict[int, float] = {}
        self.local_scores: dict[int, dict[int, tuple[float, ...]]] = {}
        self.trained_rounds = [0] * context.num_units
        self.history: dict[int, UnitHistory] = {}
        self.eligible: dict[int, dict[int, int]] = {}
        """Per round, per unit: how many sampled clients could afford it (STAgg's e_j)."""
        self.sampled: dict[int, int] = {}

    def state(self) -> tuple[State, dict[str, Any]]:
        """STAgg momentum as tensors; global scores, training counts, ages, norms and masses as JSON."""
        tensors = {f"momentum/{j}/{key}": t for j, h in self.history.items() for key, t in h.momentum.items()}
        meta = {"global_scores": {str(j): v for j, v in self.global_scores.items()},
                "trained_rounds": self.trained_rounds,
                "history": {str(j): {"age": h.age, "last_norm": h.last_norm, "updates": h.updates, "mass": h.mass}
                            for j, h in self.history.items()}}
        return tensors, meta

    def restore(self, tensors: State, meta: dict[str, Any]) -> None:
        """Inverse of `state`."""
        self.global_scores = {int(j): v for j, v in meta["global_scores"].items()}
        self.trained_rounds = list(meta["trained_rounds"])
        momentum: dict[int, State] = {}
        for name, tensor in tensors.items():
            _, unit, key = name.split("/", 2)
            momentum.setdefault(int(unit), {})[key] = tensor
        self.history = {int(j): UnitHistory(momentum.get(int(j), {}), h["age"], h["last_norm"], h["updates"],
                                            h.get("mass", 0.0))
                        for j, h in meta["history"].items()}

    def affordable(self, client: int) -> list[int]:
        """Units the client could train alone at the lowest rank option."""
        return self.context.affordable(client, self.ranks[0])

    def score_request(self, round_number: int, clients: list[int]) -> dict[int, tuple[int, ...]]:
        """Every affordable unit's local IG-Scores, unless the value ignores them (the global score needs them)."""
        if self.options.value in UNSCORED_VALUES:
            return {}
        return {client: tuple(self.affordable(client)) for client in clients}

    def receive_scores(self, round_number: int, scores: dict[int, dict[int, tuple[float, ...]]]) -> None:
        """Keep this round's local scores (per unit, one per rank option) for assignment and the global EMA."""
        self.local_scores = scores

    def unit_values(self, round_number: int, client: int, units: list[int]) -> np.ndarray:
        """v_ij over the client's affordable units at full rank, per the `value` switch."""
        if self.options.value == "uniform":
            return np.ones(len(units))
        if self.options.value == "random":
            return np.random.default_rng([self.context.config.seed, round_number, client]).random(len(units))
        lam = LAMBDA_OF_VALUE.get(self.options.value, self.options.lam)
        beta = self.options.beta if self.options.bonus else 0.0
        local = full_rank_scores(self.local_scores.get(client, {}))
        return combined_values(units, local, self.global_scores, self.trained_rounds, round_number, lam, beta)

    def option_values(self, round_number: int, client: int, units: list[int]) -> np.ndarray:
        """(units x rank options) values: v_ij times the share of it each rank option keeps."""
        values = np.zeros((self.context.num_units, len(self.ranks)))
        scores = self.local_scores.get(client, {})
        for j, value in zip(units, self.unit_values(round_number, client, units)):
            values[j] = value * rank_shares(scores.get(j), self.ranks)
        return values

    @cached_property
    def rank_costs(self) -> RankOptions:
        """Every unit's memory and upload bytes at each rank option, and the knapsack's grids (fixed for a run)."""
        return rank_options(self.context.profile, self.context.unit_upload, self.ranks)

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """The knapsack-optimal units and ranks of each client; head only where nothing fits."""
        affordable = {client: self.affordable(client) for client in clients}
        self.sampled[round_number] = len(clients)
        self.eligible[round_number] = {j: sum(j in units for units in affordable.values())
                                       for j in range(self.context.num_units)}
        plans = {}
        for client in clients:
            values = self.option_values(round_number, client, affordable[client])
            budget = self.context.budgets[client]
            chosen = solve_options(values, self.context.profile, self.rank_costs, budget.memory, budget.upload)
            ranks = tuple(self.ranks[c] for c in chosen.options)
            full = all(r == self.context.config.lora.rank for r in ranks)
            plans[client] = self.context.plan(client, chosen.units, None if full else ranks)
        return plans

    def split_update(self, update: ClientUpdate) -> tuple[dict[int, State], State]:
        """A client's tensors grouped by unit, and its head tensors."""
        unit_of = self.context.unit_map.unit_of_key()
        units: dict[int, State] = {}
        for key, tensor in update.tensors.items():
            if key in unit_of:
                units.setdefault(unit_of[key], {})[key] = tensor
        head = {key: update.tensors[key] for key in self.context.unit_map.head_keys if key in update.tensors}
        return units, head

    def merge_space(self, global_units: dict[int, State],
                    client_units: list[dict[int, State]]) -> tuple[dict[int, State], list[dict[int, State]]]:
        """Global and client units in the space STAgg merges: products B A, or factors completed to full rank."""
        if self.options.merge == "product":
            return ({j: products(unit) for j, unit in global_units.items()},
                    [{j: client_products(unit, global_units[j]) for j, unit in units.items()}
                     for units in client_units])
        return global_units, [{j: fill_rank(unit, global_units[j]) for j, unit in units.items()}
                              for units in client_units]

    def aggregate(self, round_number: int, global_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, dict[str, Any]]:
        """STAgg over units, FedAvg over the head, then the global IG-Score and training counts."""
        options = self.options
        global_units = {u.index: {k: global_state[k] for k in u.lora_keys} for u in self.context.unit_map.units}
        split = [self.split_update(u) for u in updates]
        weights = [u.num_examples for u in updates]
        space, client_space = self.merge_space(global_units, [units for units, _ in split])
        eligible = self.eligible[round_number] if options.coverage == "affordable" else self.sampled[round_number]
        merged, self.history, unit_metrics = stagg_round(
            space, list(zip(client_space, weights)), eligible, self.history, mu=options.mu,
            temperature=options.temperature, dwa=options.dwa, temporal=options.aggregation == "stagg",
            momentum=options.momentum, bias=options.bias, dwa_ratio=options.dwa_ratio)
        new_units = {j: factors(merged[j], global_units[j]) if options.merge == "product" else merged[j]
                     for j, m in unit_metrics.items() if m.coverage > 0}
        head = weighted_average([h for _, h in split], weights)
        for j, metrics in unit_metrics.items():
            self.trained_rounds[j] += metrics.coverage > 0
        self.update_global_scores()
        state = {**global_state, **head, **{k: v for unit in new_units.values() for k, v in unit.items()}}
        return state, {"units": {j: vars(m) for j, m in sorted(unit_metrics.items())},
                       "global_scores": {j: self.global_scores[j] for j in sorted(self.global_scores)}}

    def update_global_scores(self) -> None:
        """Fold this round's local full-rank scores (normalised per report, or raw) into the global EMA,
        clients in id order (so both engines sum them alike)."""
        sizes, norm = self.context.client_sizes, self.options.global_norm
        reports = []
        for client in sorted(self.local_scores):
            full = full_rank_scores(self.local_scores[client])
            if full:
                reports.append((full if norm == "none" else normalised_report(full, per_unit=norm == "mean"),
                                sizes[client]))
        self.global_scores = update_global(self.global_scores, reports, self.options.rho)
