"""flexlora: per-client LoRA ranks; the server averages the products B_i A_i and redistributes by SVD.

FlexLoRA (Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks
and Client Resources", NeurIPS 2024, arXiv 2402.11505). Client i trains at rank r_i; the server
rebuilds each client's full-size update B_i A_i per adapted Linear, averages them weighted by
data size, and splits the average by SVD into rank factors; each client takes the top r_i
singular components of it.

    W = sum_i n_i B_i A_i / sum_i n_i = U S V^T,   B = U[:, :R] S[:R]^(1/2),   A = S[:R]^(1/2) V^T[:R]

Where we had to choose:
- Rank. r_i is fitted to the client's budgets exactly as in hetlora (`fit_rank`): the largest
  rank at which all units fit Mem and Up; head only when none fits. Ranks are real smaller tensors
  on the client; PEFT's scale alpha / r_max is kept at every rank, so B A is comparable across
  clients and needs no rescaling.
- Global rank. The global adapters are kept as rank-R factors (R = lora.rank, the shared
  model's rank) rather than as full-size W: the SVD is truncated to R, which reproduces W exactly
  when rank(W) <= R and is its best rank-R approximation otherwise. Since the singular components
  are ordered, a client's first r_i components (`models/rank.py`) are the paper's rank-r_i
  truncated SVD, so no client-specific server step is needed.
- Senders. A Linear's average counts only the clients that sent it (as fedavg-full); one no client
  sent keeps its global factors. The head is averaged by data size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedpilot.aggregate.product import svd_factors
from fedpilot.client import ClientUpdate, Plan
from fedpilot.strategies.base import State, Strategy
from fedpilot.strategies.hetlora import Factors, fit_rank, merge_modules


def average_product(factors: Sequence[Factors], sizes: Sequence[float]) -> torch.Tensor:
    """sum_i n_i B_i A_i / sum_i n_i in float32 (or wider); the ranks r_i may differ."""
    total = float(sum(sizes))
    accumulate = torch.promote_types(factors[0][0].dtype, torch.float32)
    return sum((n / total) * (b.to(accumulate) @ a.to(accumulate)) for (a, b), n in zip(factors, sizes))


def svd_merge(global_factors: Factors, factors: Sequence[Factors], sizes: Sequence[float]) -> Factors:
    """One adapted Linear's new global factors: the SVD split of the averaged product at the global rank."""
    a_global, b_global = global_factors
    a, b = svd_factors(average_product(factors, sizes), a_global.shape[0])
    return a.to(a_global.dtype), b.to(b_global.dtype)


class FlexLoRA(Strategy):
    """Per-client ranks fitted to the budgets; data-weighted mean of B_i A_i, split back by SVD."""

    name = "flexlora"

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """Every unit at the client's fitted rank; the head only where no rank fits."""
        units = tuple(range(self.context.num_units))
        plans = {}
        for client in clients:
            rank = fit_rank(self.context, self.context.budgets[client])
            plans[client] = self.context.plan(client, () if rank is None else units, rank)
        return plans

    def aggregate(self, round_number: int, global_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, dict[str, Any]]:
        """SVD of the averaged product per adapted Linear; data-weighted mean of the rest."""
        return merge_modules(global_state, updates, svd_merge), {}
