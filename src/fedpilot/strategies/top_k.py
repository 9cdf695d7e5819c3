"""top-k: each client trains the largest number of the highest units that fit its own budgets.

The obvious heuristic of DESIGN 6; no single paper defines it. It is the depth analogue of giving
each client the largest sub-model it can afford, as HeteroFL does for width (Diao et al., "HeteroFL:
Computation and Communication Efficient Federated Learning for Heterogeneous Clients", ICLR 2021).
Our choices: the units are the top ones, since the top blocks need the shortest activation path
(autograd keeps activations from the lowest trained block up, see `memory/cost.py`); the set is
the top suffix {n-k, ..., n-1} with the largest k whose Mem and Up both fit, k = 0 (head only) if
none does. Scanning k downwards from n finds the largest fitting k even if a measured path_mem
were not monotone.
Aggregation is fedavg-full's per-key data-weighted mean over the clients that sent each tensor.

`top_units` is shared with straggler.
"""

from __future__ import annotations

from fedpilot.assign.budgets import ClientBudget
from fedpilot.client import Plan
from fedpilot.strategies.base import StrategyContext
from fedpilot.strategies.fedavg_full import FedAvgFull


def top_units(context: StrategyContext, budget: ClientBudget) -> tuple[int, ...]:
    """The top suffix of units with the most units that fits `budget`; () if no unit fits."""
    n = context.num_units
    for count in range(n, 0, -1):
        units = tuple(range(n - count, n))
        if context.fits(units, budget):
            return units
    return ()


class TopK(FedAvgFull):
    """fedavg-full aggregation; each client trains its own largest affordable top suffix."""

    name = "top-k"

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """The largest top suffix within each client's memory and upload budgets."""
        return {client: self.context.plan(client, top_units(self.context, self.context.budgets[client]))
                for client in clients}
