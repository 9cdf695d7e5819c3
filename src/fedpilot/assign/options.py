"""The rank options of the knapsack: what training unit j at each LoRA rank option costs, and the grids.

A unit trained at rank r instead of the profiled rank R saves (1 - r / R) of its LoRA state and
weights (`models.rank.unit_saving`) and uploads r / R of its weights. The fedpilot strategy and
`fedpilot plan` both solve the knapsack on these costs and grids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedpilot.memory.cost import CostProfile
from fedpilot.models.rank import unit_saving

GRID_STEPS_PER_UNIT = 64
"""Cost grids are at most 1/64 of the smallest unit cost, so where the knapsack must round costs up (its
rounded-down optimum does not fit in bytes), each unit loses <= 1.6 %."""


def cost_grid(costs: Sequence[int], cap: int) -> int:
    """Grid in bytes for the knapsack: fine enough for the smallest cost, never coarser than `cap` bytes."""
    return max(1, min(cap, min(costs) // GRID_STEPS_PER_UNIT))


def option_savings(profile: CostProfile, weight_bytes: Sequence[int], ranks: Sequence[int]) -> np.ndarray:
    """(units x rank options) bytes each option saves against the profiled rank (`unit_saving`).

    Raises ValueError for a rank outside 1..R."""
    return np.array([[unit_saving(profile, j, weight_bytes, r) for r in ranks] for j in range(profile.num_units)])


def option_costs(profile: CostProfile, weight_bytes: Sequence[int],
                 ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(units x rank options) memory bytes (the unit term of Mem_r: unit_mem[j] minus the saving) and upload
    bytes (weight_bytes[j] r / R, rounded down) of unit j at each rank option r; `weight_bytes[j]` is what
    unit j's LoRA weights take on the wire at rank R.

    Raises ValueError for a rank outside 1..R."""
    memory = np.array(profile.unit_mem)[:, None] - option_savings(profile, weight_bytes, ranks)
    uploads = np.array([[weight_bytes[j] * r // profile.rank for r in ranks] for j in range(profile.num_units)])
    return memory, uploads


def knapsack_grids(profile: CostProfile, weight_bytes: Sequence[int], ranks: Sequence[int]) -> tuple[int, int]:
    """(memory, upload) grids in bytes: `cost_grid` of the units' memory costs at rank R (`unit_mem`, at most
    1 MiB) and of their uploads at the lowest rank option (at most 4 KiB)."""
    _, uploads = option_costs(profile, weight_bytes, ranks)
    return cost_grid(profile.unit_mem, 2**20), cost_grid([int(u) for u in uploads[:, 0]], 4096)
