"""fedra: FedRA, a fresh random set of units per client each round, its size fitted to the budget.

Su, Li and Xue, "FedRA: A Random Allocation Strategy for Federated Tuning to Unleash the Power of
Heterogeneous Clients", ECCV 2024 (arXiv:2311.11227). In FedRA the server redraws a random
allocation matrix every round: client i gets a uniformly random subset of L_i layers, L_i set by
its resources, trains LoRA on a sub-model built from just those layers, and the server averages
each layer's adapters over the clients that held it.

Where we had to choose:
- Count. FedRA's L_i is fixed per client because its sub-model's memory grows with the number of
  layers only. Here every client keeps the full frozen model and Mem(S) depends on which units
  (activations from the lowest trained one up), so a fixed count cannot be guaranteed to fit.
  Rule: draw a uniformly random order of the units the client can afford alone
  (`StrategyContext.affordable`), then take the longest prefix of that order whose Mem(S) and
  Up(S) both fit. The set is random, always fits, and is larger for larger budgets; its size
  varies by round. Units that cannot fit alone are left out of the order rather than ending the
  prefix (with path_mem decreasing in k they can never be in a feasible set anyway), so a weak
  client trains at least one unit whenever one fits; head only when none does.
- Randomness. A generator seeded by (config.seed, round, client), so draws are reproducible,
  redrawn every round, and independent of which other clients were sampled.
- Sub-model. Skipped blocks stay in the forward pass, frozen, as in every method of this harness
  (the model is the same for all methods; only which adapters train differs).
- Aggregation. fedavg-full's per-key mean over the clients that sent each tensor, weighted by data
  size as every method here is (FedRA's released code takes the unweighted mean).
"""

from __future__ import annotations

import numpy as np

from fedpilot.client import Plan
from fedpilot.strategies.fedavg_full import FedAvgFull


class FedRA(FedAvgFull):
    """fedavg-full aggregation; each client trains a random budget-fitted set, redrawn each round."""

    name = "fedra"

    def random_units(self, round_number: int, client: int) -> tuple[int, ...]:
        """The longest prefix that fits of a seeded random order of the client's affordable units."""
        budget = self.context.budgets[client]
        rng = np.random.default_rng([self.context.config.seed, round_number, client])
        order = [int(j) for j in rng.permutation(self.context.affordable(client))]
        length = max((k for k in range(len(order) + 1) if self.context.fits(order[:k], budget)), default=0)
        return tuple(sorted(order[:length]))

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """A fresh random set that fits for every sampled client."""
        return {client: self.context.plan(client, self.random_units(round_number, client)) for client in clients}
