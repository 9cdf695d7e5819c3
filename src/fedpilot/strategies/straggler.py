"""straggler: every sampled client trains the units the weakest client can afford.

The lowest-common-denominator baseline of DESIGN 6: "limit the global model complexity for the
most indigent client" (Diao et al., HeteroFL, ICLR 2021, naming the approach it improves on).
Our choices: the weakest budget is the envelope of ALL clients' budgets (not only this round's
sample), i.e. the smallest memory budget and the smallest upload budget, which may belong to two
different clients, so the set fits every client; the units are top-k's rule at that envelope (the
largest top suffix that fits, head only if none does). The set is fixed for the whole run.
Aggregation is fedavg-full's per-key data-weighted mean.
"""

from __future__ import annotations

from fedpilot.assign.budgets import ClientBudget
from fedpilot.client import Plan
from fedpilot.strategies.base import StrategyContext
from fedpilot.strategies.fedavg_full import FedAvgFull
from fedpilot.strategies.top_k import top_units


def weakest_budget(budgets: list[ClientBudget]) -> ClientBudget:
    """Smallest memory and smallest upload over all budgets of clients not excluded (None = unlimited);
    group -1 marks the envelope."""
    budgets = [b for b in budgets if not b.excluded]
    uploads = [b.upload for b in budgets if b.upload is not None]
    return ClientBudget(-1, min(b.memory for b in budgets), min(uploads) if uploads else None)


class Straggler(FedAvgFull):
    """fedavg-full aggregation; everyone trains the top units the weakest budget admits."""

    name = "straggler"

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        self.units = top_units(context, weakest_budget(context.budgets))

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """The same set, the weakest client's, for every sampled client."""
        return {client: self.context.plan(client, self.units) for client in clients}
