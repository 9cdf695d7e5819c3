"""The strategy interface: a method decides who trains what (`assign`) and how replies merge
(`aggregate`). Engines own the round loop; strategies never iterate rounds or touch files."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedpilot.client import ClientUpdate, Plan
from fedpilot.config import Config
from fedpilot.models.units import UnitMap

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may know about the federation: units, client data sizes, the config."""

    unit_map: UnitMap
    client_sizes: list[int]
    config: Config

    @property
    def num_units(self) -> int:
        """Number of transformer blocks that carry LoRA units."""
        return len(self.unit_map.units)


class Strategy(ABC):
    """Base class of every method; subclasses set `name` and implement the two hooks."""

    name: ClassVar[str]

    def __init__(self, context: StrategyContext) -> None:
        self.context = context

    @abstractmethod
    def assign(self, round_number: int, clients: list[int]) -> dict[int, Plan]:
        """The plan of each sampled client for this round."""

    @abstractmethod
    def aggregate(self, round_number: int, global_state: State,
                  updates: list[ClientUpdate]) -> tuple[State, dict[str, Any]]:
        """New global adapters and head from the clients' updates, plus metrics to log."""
