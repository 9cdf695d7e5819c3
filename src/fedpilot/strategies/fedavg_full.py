"""fedavg-full: every client trains every unit, ignoring memory budgets (the reference)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedpilot.aggregate.fedavg import weighted_average
from fedpilot.client import ClientUpdate, Plan
from fedpilot.strategies.base import State, Strategy


class FedAvgFull(Strategy):
    """FedAvg over LoRA A, B and the head, each weighted by the clients' data sizes."""

    name = "fedavg-full"

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """All units for every client; budgets are logged but not enforced (the reference ignores them)."""
        units = tuple(range(self.context.num_units))
        return {client: replace(self.context.plan(client, units), enforce_budget=False) for client in clients}

    def aggregate(self, round_number: int, global_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, dict[str, Any]]:
        """Per-tensor weighted mean over the clients that sent it; untouched tensors stay."""
        averaged = weighted_average([u.tensors for u in updates], [u.num_examples for u in updates])
        return {**global_state, **averaged}, {}
