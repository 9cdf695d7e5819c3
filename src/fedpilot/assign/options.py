"""The rank options of the knapsack: what training unit j at each LoRA rank option costs, the grids, and the
solve over them.

A unit trained at rank r instead of the profiled rank R saves (1 - r / R) of its LoRA state and
weights (`models.rank.unit_saving`) and uploads r / R of its weights. The fedpilot strategy and
`fedpilot plan` both solve the knapsack on these costs and grids (`solve_options`), over units or, at
module granularity, over blocks of module units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedpilot.assign.knapsack import RankAssignment, solve_rank_assignment
from fedpilot.assign.modules import solve_module_assignment
from fedpilot.memory.cost import CostProfile
from fedpilot.models.rank import unit_saving

GRID_STEPS_PER_UNIT = 64
"""Cost grids are at most 1/64 of the smallest unit cost, so where the knapsack must round costs up (its
rounded-down optimum does not fit in bytes), each unit loses <= 1.6 %."""


def cost_grid(costs: Sequence[int], cap: int) -> int:
    """Grid in bytes for the knapsack: fine enough for the smallest cost, never coarser than `cap` bytes."""
    return max(1, min(cap, min(costs) // GRID_STEPS_PER_UNIT))


@dataclass(frozen=True)
class RankOptions:
    """The knapsack's options for every unit j and rank option r, as (units x rank options) bytes, and its grids.

    savings: bytes option r saves against the profiled rank R (`unit_saving`).
    memory: the unit term of Mem_r, unit_mem[j] minus the saving.
    uploads: weight_bytes[j] r / R, rounded down (`weight_bytes[j]`: unit j's LoRA weights on the wire at rank R).
    memory_grid: `cost_grid` of the units' memory costs at rank R (`unit_mem`), at most 1 MiB.
    upload_grid: `cost_grid` of the uploads at the lowest rank option, at most 4 KiB."""

    savings: np.ndarray
    memory: np.ndarray
    uploads: np.ndarray
    memory_grid: int
    upload_grid: int

    @property
    def grids(self) -> tuple[int, int]:
        """(memory, upload) grids in bytes."""
        return self.memory_grid, self.upload_grid


def rank_options(profile: CostProfile, weight_bytes: Sequence[int], ranks: Sequence[int]) -> RankOptions:
    """The costs and grids of training each unit of `profile` at each rank option in `ranks`.

    Raises ValueError for a rank outside 1..R."""
    savings = np.array([[unit_saving(profile, j, weight_bytes, r) for r in ranks] for j in range(profile.num_units)])
    uploads = np.array([[weight_bytes[j] * r // profile.rank for r in ranks] for j in range(profile.num_units)])
    memory = np.array(profile.unit_mem)[:, None] - savings
    for table in (savings, memory, uploads):
        table.setflags(write=False)  # shared by every solve of a run
    return RankOptions(savings=savings, memory=memory, uploads=uploads, memory_grid=cost_grid(profile.unit_mem, 2**20),
                       upload_grid=cost_grid([int(u) for u in uploads[:, 0]], 4096))


def solve_options(values: np.ndarray, profile: CostProfile, costs: RankOptions, memory_budget: int,
                  upload_budget: int | None) -> RankAssignment:
    """The exact knapsack optimum of (units x rank options) `values` under a memory budget and an upload budget
    (bytes; None = unlimited) on `costs` (`rank_options` of `profile`): over units
    (`solve_rank_assignment`), or over blocks of module units at module granularity
    (`solve_module_assignment`). Raises ValueError as those do."""
    if profile.blocks:
        return solve_module_assignment(values, profile.blocks, profile.lowest_mem, profile.above, profile.fixed_mem,
                                       memory_budget, costs.savings, costs.uploads, upload_budget, *costs.grids)
    return solve_rank_assignment(values, profile.path_mem, costs.memory, profile.fixed_mem, memory_budget,
                                 costs.uploads, upload_budget, *costs.grids)
