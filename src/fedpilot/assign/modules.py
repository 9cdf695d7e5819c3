"""Exact assignment at module granularity: each adapted Linear a unit, each block one knapsack item.

The Linears of one block share inputs and attention, so Mem(S) is not a sum over module units
(`fedpilot.memory.cost`): a block's cost depends on the subset of its Linears trained and on whether
the block is the lowest trained one. Each block b therefore becomes one item of
`knapsack.solve_lowest_assignment` whose options are the ways to train some of its m Linears, each at
one of R rank options ((R + 1)^m - 1 options, all but "train none"):

    value         sum_{j in T} values[j, o_j]
    lowest_mem    lowest[b][T] - sum_{j in T} saving[j, o_j]     (b the lowest trained block)
    unit_mem      above[b][T]  - sum_{j in T} saving[j, o_j]     (a lower block is trained)
    upload        sum_{j in T} unit_upload[j, o_j]

with T the option's Linears and saving[j, o] the bytes a lower rank saves (`models.rank.unit_saving`,
zero at full rank; a cost the saving would take below zero counts as zero, which only overestimates).
The block knapsack is exact, so this is exact for module units. Blocks with fewer
Linears than the widest get options that never fit (cost a grid cell above the budget even
rounded down, value 0).
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import ArrayLike

from fedpilot.assign.knapsack import RankAssignment, checked_grid, solve_lowest_assignment

BlockOption = tuple[int, ...]
"""One option of a block: each of its units' rank option, -1 where the unit is not trained."""


def block_options(width: int, ranks: int) -> list[BlockOption]:
    """Every way to train some of `width` units at one of `ranks` options each, none-trained left out."""
    return [combo for combo in itertools.product(range(-1, ranks), repeat=width) if any(o >= 0 for o in combo)]


def solve_module_assignment(
    values: ArrayLike,
    blocks: tuple[int, ...],
    lowest: tuple[tuple[int, ...], ...],
    above: tuple[tuple[int, ...], ...],
    fixed_mem: int,
    mem_budget: int,
    saving: ArrayLike | None = None,
    unit_upload: ArrayLike | None = None,
    upload_budget: int | None = None,
    mem_grid: int = 2**20,
    upload_grid: int = 4096,
) -> RankAssignment:
    """Exactly maximise the value of the trained (module unit, rank option) pairs under memory (and upload).

    values, saving, unit_upload: (N, R) over module units and rank options (saving None: zeros);
    blocks[j]: unit j's block (units of a block contiguous, blocks ascending); lowest, above: the
    profile's [block][mask - 1] tables in bytes (`CostProfile`). Returns units and options over module
    units. Raises ValueError as `solve_lowest_assignment` does, and when blocks and values disagree.
    """
    value = np.asarray(values, dtype=float)
    if value.ndim != 2 or value.shape[0] != len(blocks):
        raise ValueError(f"values must be (units x rank options) with {len(blocks)} units, got shape {value.shape}")
    save = np.zeros(value.shape) if saving is None else np.asarray(saving, dtype=float)
    upload = np.zeros(value.shape) if unit_upload is None else np.asarray(unit_upload, dtype=float)
    members = [[j for j, b in enumerate(blocks) if b == block] for block in sorted(set(blocks))]
    options = block_options(max(len(m) for m in members), value.shape[1])
    never = float(mem_budget) + checked_grid("mem_grid", mem_grid)  # above the budget even rounded down
    item_value, item_lowest, item_above, item_upload = _block_items(np.array(options), members, value, save, upload,
                                                                    (lowest, above), never)
    chosen = solve_lowest_assignment(item_value, item_lowest, item_above, fixed_mem, mem_budget,
                                     None if unit_upload is None else item_upload, upload_budget, mem_grid,
                                     upload_grid)
    pairs = [(j, c) for i, o in zip(chosen.units, chosen.options)
             for j, c in zip(members[i], options[o]) if c >= 0]
    return RankAssignment(tuple(j for j, _ in pairs), tuple(c for _, c in pairs), chosen.value,
                          chosen.mem_bytes, chosen.upload_bytes)


def _block_items(combos: np.ndarray, members: list[list[int]], value: np.ndarray, save: np.ndarray,
                 upload: np.ndarray, tables: tuple[tuple[tuple[int, ...], ...], ...],
                 never: float) -> tuple[np.ndarray, ...]:
    """(value, lowest_mem, unit_mem, upload), each (blocks x options), of every option of every block;
    `never` bytes of memory where an option trains a unit the block lacks."""
    width = combos.shape[1]
    units = np.array([m + [m[-1]] * (width - len(m)) for m in members])
    trained = combos >= 0
    lacking = trained[None] & (np.arange(width)[None, None] >= np.array([len(m) for m in members])[:, None, None])
    valid = ~lacking.any(axis=2)

    def summed(table: np.ndarray) -> np.ndarray:
        """Per block and option, the sum over its trained units of their entry at their rank option."""
        return np.where(trained[None], table[units[:, None, :], combos.clip(min=0)[None]], 0.0).sum(axis=2)

    mask = (trained * (1 << np.arange(width))).sum(axis=1)
    saved = summed(save)
    costs = []
    for table in tables:
        padded = np.full((len(members), 2**width - 1), never)
        for b, row in enumerate(table):
            padded[b, :len(row)] = row
        costs.append(np.where(valid, np.maximum(padded[:, mask - 1] - saved, 0.0), never))
    return np.where(valid, summed(value), 0.0), costs[0], costs[1], np.where(valid, summed(upload), 0.0)
