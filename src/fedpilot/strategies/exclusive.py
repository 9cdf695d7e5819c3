"""exclusive: only clients whose budgets fit every unit take part, and they train every unit.

The drop-the-weak baseline of DESIGN 6 ("exclusive learning"): "drop weak clients and only
aggregate parameters from powerful clients with sufficient resources" (Liu et al., "No One Left
Behind: Inclusive Federated Learning over Heterogeneous Devices", KDD 2022, describing the
straightforward solution it improves on). Our choices: "fits" means both Mem(all units) and
Up(all units) fit the client's memory and upload budgets; a sampled client that does not fit gets
no plan, and the engine records it as skipped instead of training it (the sample itself is not
redrawn, so every method still sees the same clients in the same rounds). If no sampled client
fits, the round aggregates nothing and the global state stays as it was. Aggregation is
fedavg-full's per-key data-weighted mean over the participants.
"""

from __future__ import annotations

from fedpilot.client import Plan
from fedpilot.strategies.fedavg_full import FedAvgFull


class Exclusive(FedAvgFull):
    """fedavg-full over the clients that can afford all units; the others sit the round out."""

    name = "exclusive"

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """All units for each client that fits them; no plan for the rest."""
        units = tuple(range(self.context.num_units))
        return {client: self.context.plan(client, units) for client in clients
                if self.context.fits(units, self.context.budgets[client])}
