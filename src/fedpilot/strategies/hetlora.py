"""hetlora: every client trains every unit at its own LoRA rank; zero-padded aggregation; self-pruning.

HetLoRA (Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation
Models", EMNLP 2024, arXiv 2401.06432). Client i trains all adapters at rank r_i <= r_max; the
server zero-pads A_i (r_i x in) and B_i (out x r_i) to r_max and takes a sparsity-weighted mean;
a client whose trailing rank components carry little norm prunes them for later rounds.

Where we had to choose:
- Rank. r_i is the largest rank in 1..r_max (r_max = lora.rank) at which training every unit fits
  the client's memory and upload budgets by the cost model (`mem_at_rank`; upload r_i / r_max of
  full rank), instead of the paper's hand-set rank tiers. A client that fits no rank trains the
  head only (as top-k). Ranks are real smaller tensors on the client (`models/rank.py`); PEFT's
  scale alpha / r_max is kept at every rank, so truncation = zeroing the trailing components.
- Weights. Per adapted Linear, w_i is proportional to n_i ||B_i A_i||_F: the paper's
  sparsity-weighted aggregation (norm of the client's LoRA product) times data size. If every
  product is zero the weights fall back to n_i. Components c < max_i r_i are the weighted mean of
  the zero-padded factors over all clients that sent the module (a client of rank r_i <= c counts
  as zero there, as in the paper); components no client of the round trained keep their global
  values, so a round without a full-rank client does not wipe the top components for good (both
  factors zero would have zero gradient forever).
- Self-pruning. The paper adds a penalty on the trailing components to the local loss and prunes
  when their norm is small; we keep the local loss unchanged (one training loop for all methods)
  and apply the test on the server to what the client sent: with keep = max(1, floor(3 r_i / 4)),
  if sum_m ||A_m[keep:]||_F ||B_m[:, keep:]||_F < PRUNE_SHARE * sum_m ||A_m||_F ||B_m||_F over the
  client's adapted Linears m, its rank becomes keep for all later rounds (never raised again).
  The per-client ranks are server state, saved by `state()` for checkpoints.
The head is averaged by data size (fedavg-full).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fedpilot.aggregate.fedavg import weighted_average
from fedpilot.assign.budgets import ClientBudget
from fedpilot.client import ClientUpdate, Plan
from fedpilot.models.rank import lora_factor, mem_at_ranks, pad_rank, partner_key, tensor_rank
from fedpilot.strategies.base import State, Strategy, StrategyContext

Factors = tuple[torch.Tensor, torch.Tensor]
"""One adapted Linear's LoRA factors (A: r x in, B: out x r)."""


def fit_rank(context: StrategyContext, budget: ClientBudget) -> int | None:
    """Largest rank in 1..lora.rank at which training every unit fits `budget`; None if none does."""
    units = tuple(range(context.num_units))
    for rank in range(context.config.lora.rank, 0, -1):
        memory = mem_at_ranks(context.profile, dict.fromkeys(units, rank), context.unit_upload)
        upload = context.upload_at_ranks(dict.fromkeys(units, rank))
        if memory <= budget.memory and (budget.upload is None or upload <= budget.upload):
            return rank
    return None


def split_modules(state: State) -> tuple[dict[str, Factors], State]:
    """(A key -> (A, B) of each adapted Linear, every other tensor)."""
    a_keys = [k for k in state if lora_factor(k) == "A" and partner_key(k) in state]
    paired = set(a_keys) | {partner_key(k) for k in a_keys}
    return ({k: (state[k], state[partner_key(k)]) for k in a_keys},
            {k: v for k, v in state.items() if k not in paired})


def zero_padded_average(global_factors: Factors, factors: Sequence[Factors], sizes: Sequence[float]) -> Factors:
    """HetLoRA's aggregate of one adapted Linear from the clients' factors of ranks r_i <= r_max:

        w_i = n_i ||B_i A_i||_F / sum_k n_k ||B_k A_k||_F        (w_i = n_i / sum n if all products are 0)
        A[:r] = sum_i w_i pad(A_i)[:r],   B[:, :r] = sum_i w_i pad(B_i)[:, :r],   r = max_i r_i

    pad() appends zero components up to r_max; components r.. keep the global A and B.
    """
    a_global, b_global = global_factors
    accumulate = torch.promote_types(a_global.dtype, torch.float32)
    norms = torch.stack([torch.linalg.matrix_norm(b.to(accumulate) @ a.to(accumulate)) for a, b in factors])
    sizes_t = torch.tensor(sizes, dtype=accumulate)
    weights = sizes_t * norms if norms.sum() > 0 else sizes_t
    weights = weights / weights.sum()
    top = max(tensor_rank("lora_A", a) for a, _ in factors)
    a_new, b_new = a_global.to(accumulate).clone(), b_global.to(accumulate).clone()
    a_new[:top] = sum(w * pad_rank("lora_A", a.to(accumulate), top) for w, (a, _) in zip(weights, factors))
    b_new[:, :top] = sum(w * pad_rank("lora_B", b.to(accumulate), top) for w, (_, b) in zip(weights, factors))
    return a_new.to(a_global.dtype), b_new.to(b_global.dtype)


def merge_modules(global_state: State, updates: Sequence[ClientUpdate],
                  merge: Callable[[Factors, Sequence[Factors], Sequence[float]], Factors]) -> State:
    """New global state: `merge(global factors, senders' factors, their data sizes)` for each adapted
    Linear some client sent, the data-weighted mean (fedavg) of the other tensors; the rest stays."""
    split = [split_modules(u.tensors) for u in updates]
    global_modules, _ = split_modules(global_state)
    new = dict(global_state)
    for key, factors in global_modules.items():
        senders = [(modules[key], u.num_examples) for (modules, _), u in zip(split, updates) if key in modules]
        if senders:
            new[key], new[partner_key(key)] = merge(factors, *zip(*senders))
    rest = [(others, u.num_examples) for (_, others), u in zip(split, updates) if others]
    return {**new, **weighted_average(*zip(*rest))} if rest else new


def trailing_share(factors: Sequence[Factors], keep: int) -> float:
    """sum_m ||A_m[keep:]|| ||B_m[:, keep:]|| / sum_m ||A_m|| ||B_m||: the trailing components' share.

    1 when every module has a zero factor (as PEFT's B starts): nothing to judge, so no pruning.
    """
    tail = sum(float(a[keep:].float().norm() * b[:, keep:].float().norm()) for a, b in factors)
    whole = sum(float(a.float().norm() * b.float().norm()) for a, b in factors)
    return tail / whole if whole > 0 else 1.0


class HetLoRA(Strategy):
    """Per-client ranks fitted to the budgets and lowered by self-pruning; zero-padded weighted mean."""

    name = "hetlora"
    PRUNE_SHARE = 0.05
    """Trailing components below this share of the factors' norm are pruned."""

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        self.ranks: dict[int, int] = {}
        """Ranks lowered by self-pruning; a client absent here is at its fitted rank."""

    def rank_of(self, client: int) -> int | None:
        """The client's rank this round: its fitted rank, or lower if it pruned; None = head only."""
        fitted = fit_rank(self.context, self.context.budgets[client])
        return None if fitted is None else min(fitted, self.ranks.get(client, fitted))

    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """Every unit at the client's rank; the head only where no rank fits."""
        units = tuple(range(self.context.num_units))
        plans = {}
        for client in clients:
            rank = self.rank_of(client)
            plans[client] = self.context.plan(client, () if rank is None else units, rank)
        return plans

    def aggregate(self, round_number: int, global_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, dict[str, Any]]:
        """Zero-padded weighted mean per adapted Linear, data-weighted mean of the rest, then self-pruning."""
        new = merge_modules(global_state, updates, zero_padded_average)
        pruned = self.prune(updates)
        return new, {"pruned": pruned, "pruned_ranks": {str(c): r for c, r in sorted(self.ranks.items())}}

    def prune(self, updates: list[ClientUpdate]) -> list[int]:
        """Lower the rank of each client whose trailing components are small; returns those clients."""
        pruned = []
        for update in updates:
            modules, _ = split_modules(update.tensors)
            if not modules:
                continue
            rank = tensor_rank("lora_A", next(iter(modules.values()))[0])
            keep = max(1, 3 * rank // 4)
            if keep < rank and trailing_share(list(modules.values()), keep) < self.PRUNE_SHARE:
                self.ranks[update.client_id] = keep
                pruned.append(update.client_id)
        return pruned

    def state(self) -> tuple[State, dict[str, Any]]:
        """The pruned ranks (JSON keys are strings)."""
        return {}, {"ranks": {str(c): r for c, r in self.ranks.items()}}

    def restore(self, tensors: State, meta: dict[str, Any]) -> None:
        """Put the pruned ranks back."""
        self.ranks = {int(c): int(r) for c, r in meta.get("ranks", {}).items()}
