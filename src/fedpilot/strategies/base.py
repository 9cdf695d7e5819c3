"""The strategy interface: a method decides who trains what (`assign`) and how replies merge
(`aggregate`). Engines own the round loop; strategies never iterate rounds or touch files."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedpilot.assign.budgets import ClientBudget
from fedpilot.client import ClientUpdate, Plan
from fedpilot.config import Config
from fedpilot.memory.cost import CostProfile, mem_of
from fedpilot.models.rank import mem_at_ranks
from fedpilot.models.units import UnitMap

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may know: units, client data sizes and budgets, the cost model, the config.

    `unit_upload[j]` is the bytes unit j's LoRA tensors take on the wire. Raises ValueError when the cost
    profile was measured at another LoRA rank than `config.lora.rank` (the full rank R of every cost).
    """

    unit_map: UnitMap
    client_sizes: list[int]
    config: Config
    profile: CostProfile
    budgets: list[ClientBudget]
    unit_upload: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.profile.rank != self.config.lora.rank:
            raise ValueError(f"the cost profile was measured at LoRA rank {self.profile.rank}, "
                             f"but lora.rank is {self.config.lora.rank}: profile the model at lora.rank")

    @property
    def num_units(self) -> int:
        """Number of units (blocks, or adapted Linears at module granularity)."""
        return len(self.unit_map.units)

    def plan(self, client: int, units: tuple[int, ...], rank: int | Sequence[int] | None = None) -> Plan:
        """A plan for `units` with its estimated memory, the client's budget and its upload.

        `rank` is one LoRA rank r <= lora.rank = R for every unit, or one per unit of `units`; then
        memory is `mem_at_ranks` and each unit's upload r_j / R of its full-rank upload.
        """
        if rank is None:
            return Plan(units, self.config.train.local_steps, mem_of(self.profile, units),
                        self.budgets[client].memory, sum(self.unit_upload[j] for j in units))
        ranks = tuple(rank) if isinstance(rank, Sequence) else (rank,) * len(units)
        by_unit = dict(zip(units, ranks))
        return Plan(units, self.config.train.local_steps, mem_at_ranks(self.profile, by_unit, self.unit_upload),
                    self.budgets[client].memory, self.upload_at_ranks(by_unit), ranks)

    def upload_at_ranks(self, ranks: Mapping[int, int]) -> int:
        """Up(S) with unit j at LoRA rank r_j: r_j / R of its full-rank upload (A and B are linear in the rank)."""
        return sum(self.unit_upload[j] * r // self.config.lora.rank for j, r in ranks.items())

    def scoring_micro_batch(self, client: int, units: tuple[int, ...]) -> int:
        """Largest micro-batch (up to the training batch) at which scoring `units` fits the budget.

        Scoring needs gradients but no optimizer state, so Mem(units) at that batch is an upper bound.
        """
        budget = self.budgets[client].memory
        for size in range(min(self.config.strategy.ig_examples, self.config.train.batch_size), 0, -1):
            if mem_of(self.profile.at_batch(size), units) <= budget:
                return size
        return 1

    def fits(self, units: Sequence[int], budget: ClientBudget, rank: int | None = None) -> bool:
        """Whether training `units` (at LoRA rank `rank`; None = full) stays within a budget's memory
        (Mem(S)) and upload (Up(S))."""
        if rank is None:
            memory, upload = mem_of(self.profile, units), sum(self.unit_upload[j] for j in units)
        else:
            by_unit = dict.fromkeys(units, rank)
            memory, upload = mem_at_ranks(self.profile, by_unit, self.unit_upload), self.upload_at_ranks(by_unit)
        return memory <= budget.memory and (budget.upload is None or upload <= budget.upload)

    def affordable(self, client: int, rank: int | None = None) -> list[int]:
        """Units the client could train alone within both of its budgets (at LoRA rank `rank`; None = full)."""
        return [j for j in range(self.num_units) if self.fits([j], self.budgets[client], rank)]


class Strategy(ABC):
    """Base class of every method; subclasses set `name` and implement the two hooks."""

    name: ClassVar[str]

    def __init__(self, context: StrategyContext) -> None:
        self.context = context

    def state(self) -> tuple[State, dict[str, Any]]:
        """Server state carried across rounds (tensors, JSON-ready rest) for checkpoints; none by default."""
        return {}, {}

    def restore(self, tensors: State, meta: dict[str, Any]) -> None:
        """Put back what `state` returned, when a run resumes."""

    def score_request(self, round_number: int, clients: list[int]) -> dict[int, tuple[int, ...]]:
        """Units each client should score (IG-Score) before `assign`; none by default."""
        return {}

    def receive_scores(self, round_number: int, scores: dict[int, dict[int, float]]) -> None:
        """Local scores the clients computed for `score_request`; ignored by default."""

    @abstractmethod
    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """The plan of each sampled client for this round."""

    @abstractmethod
    def aggregate(self, round_number: int, global_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, dict[str, Any]]:
        """New global adapters and head from the clients' updates, plus metrics to log."""
