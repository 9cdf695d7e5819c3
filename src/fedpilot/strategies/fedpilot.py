"""fedpilot: each client trains the most valuable units that fit its budgets; STAgg with DWA merges.

Assignment (DESIGN 3): an exact knapsack over memory (a fixed cost set by the lowest unit, small
per-unit terms above it) and upload. Value (DESIGN 4): the combined IG-Score with an exploration
bonus. Aggregation (DESIGN 5): spatial mean over the clients that trained each unit, per-unit
momentum, coverage-weighted mixing and DWA rates; the head is a data-weighted mean over all.
Ablations are config switches: `value`, `bonus`, `aggregation`, `dwa`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedpilot.aggregate.fedavg import weighted_average
from fedpilot.aggregate.stagg import UnitHistory, stagg_round
from fedpilot.assign.ig_score import combined_values, update_global
from fedpilot.assign.knapsack import solve_assignment
from fedpilot.client import ClientUpdate, Plan
from fedpilot.strategies.base import State, Strategy, StrategyContext

LAMBDA_OF_VALUE = {"local": 1.0, "global": 0.0}
GRID_STEPS_PER_UNIT = 64
"""Cost grids are at most 1/64 of the smallest unit cost, so rounding up costs each unit <= 1.6 %."""


def cost_grid(costs: tuple[int, ...], cap: int) -> int:
    """Grid for the knapsack: fine enough for the smallest unit, never coarser than `cap` bytes."""
    return max(1, min(cap, min(costs) // GRID_STEPS_PER_UNIT))


class FedPilot(Strategy):
    """Fed-piLot: knapsack assignment by IG-Score value, STAgg/DWA aggregation."""

    name = "fedpilot"

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        self.options = context.config.strategy
        self.global_scores: dict[int, float] = {}
        self.local_scores: dict[int, dict[int, float]] = {}
        self.trained_rounds = [0] * context.num_units
        self.history: dict[int, UnitHistory] = {}
        self.sampled: dict[int, int] = {}

    def state(self) -> tuple[State, dict[str, Any]]:
        """STAgg momentum as tensors; global scores, training counts, ages and norms as JSON."""
        tensors = {f"momentum/{j}/{key}": t for j, h in self.history.items() for key, t in h.momentum.items()}
        meta = {"global_scores": {str(j): v for j, v in self.global_scores.items()},
                "trained_rounds": self.trained_rounds,
                "history": {str(j): {"age": h.age, "last_norm": h.last_norm, "updates": h.updates}
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
        self.history = {int(j): UnitHistory(momentum.get(int(j), {}), h["age"], h["last_norm"], h["updates"])
                        for j, h in meta["history"].items()}

    def score_request(self, round_number: int, clients: list[int]) -> dict[int, tuple[int, ...]]:
        """Local IG-Scores are needed unless the value ignores them."""
        if self.options.value not in ("combined", "local"):
            return {}
        return {client: tuple(self.context.affordable(client)) for client in clients}

    def receive_scores(self, round_number: int, scores: dict[int, dict[int, float]]) -> None:
        """Keep this round's local scores for assignment and the global EMA."""
        self.local_scores = scores

    def unit_values(self, round_number: int, client: int, units: list[int]) -> np.ndarray:
        """v_ij over the client's affordable units, per the `value` switch."""
        if self.options.value == "uniform":
            return np.ones(len(units))
        if self.options.value == "random":
            return np.random.default_rng([self.context.config.seed, round_number, client]).random(len(units))
        lam = LAMBDA_OF_VALUE.get(self.options.value, self.options.lam)
        beta = self.options.beta if self.options.bonus else 0.0
        return combined_values(units, self.local_scores.get(client, {}), self.global_scores, self.trained_rounds,
                               round_number, lam, beta)

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """The knapsack-optimal set of each client; head only where nothing fits."""
        self.sampled[round_number] = len(clients)
        profile = self.context.profile
        mem_grid = cost_grid(profile.unit_mem, 2**20)
        upload_grid = cost_grid(self.context.unit_upload, 4096)
        plans = {}
        for client in clients:
            units = self.context.affordable(client)
            values = np.zeros(self.context.num_units)
            values[units] = self.unit_values(round_number, client, units)
            budget = self.context.budgets[client]
            chosen = solve_assignment(values, profile.path_mem, profile.unit_mem, profile.fixed_mem, budget.memory,
                                      self.context.unit_upload, budget.upload, mem_grid, upload_grid).units
            plans[client] = self.context.plan(client, chosen)
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

    def aggregate(self, round_number: int, global_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, dict[str, Any]]:
        """STAgg over units, FedAvg over the head, then the global IG-Score and training counts."""
        options = self.options
        unit_map = self.context.unit_map
        global_units = {u.index: {k: global_state[k] for k in u.lora_keys} for u in unit_map.units}
        split = [self.split_update(u) for u in updates]
        weights = [u.num_examples for u in updates]
        new_units, self.history, unit_metrics = stagg_round(
            global_units, [(units, w) for (units, _), w in zip(split, weights)], self.sampled[round_number],
            self.history, mu=options.mu, temperature=options.temperature, dwa=options.dwa,
            temporal=options.aggregation == "stagg", momentum=options.momentum)
        head = weighted_average([h for _, h in split], weights)
        for j, metrics in unit_metrics.items():
            self.trained_rounds[j] += metrics.coverage > 0
        sizes = self.context.client_sizes
        reports = [(scores, sizes[client]) for client, scores in self.local_scores.items() if scores]
        self.global_scores = update_global(self.global_scores, reports, options.rho)
        state = {**global_state, **head, **{k: v for unit in new_units.values() for k, v in unit.items()}}
        return state, {"units": {j: vars(m) for j, m in sorted(unit_metrics.items())},
                       "global_scores": {j: self.global_scores[j] for j in sorted(self.global_scores)}}
