"""Exact LoRA-unit assignment for one client of Fed-piLot, with a choice of LoRA rank per unit.

Units j = 0..n-1 are transformer blocks, bottom (0) to top (n-1). Each unit is either skipped or
trained at exactly one of m rank options o = 0..m-1 (the caller maps options to LoRA ranks, e.g.
r/4, r/2, r). Training the set S with options o_j costs

    Mem(S, o) = fixed_mem + path_mem[min S] + sum_{j in S} unit_mem[j, o_j]     (S non-empty)
    Mem({})   = fixed_mem                                                       (head only)
    Up(S, o)  = sum_{j in S} unit_upload[j, o_j]

because autograd keeps activations from the lowest trained block up to the head, whatever its
rank (activations do not depend on the LoRA rank). We solve

    max sum_{j in S} values[j, o_j]   s.t.   Mem(S, o) <= mem_budget,   Up(S, o) <= upload_budget

(upload_budget None: unlimited). The single-rank problem (`solve_assignment`) is the case m = 1.

Rounding. Byte counts are whole bytes (fractional inputs are rounded up first); the DP below runs
on grid cells, g = mem_grid and h = upload_grid, with the budgets rounded down,

    B = floor(mem_budget / g),   U = floor(upload_budget / h),

and the costs rounded by a function r, either floor or ceil:

    b_{ko} = r((fixed_mem + path_mem[k] + unit_mem[k, o]) / g)    cells of S's lowest unit k at option o
    w_{jo} = r(unit_mem[j, o] / g),   u_{jo} = r(unit_upload[j, o] / h)

(S, o) with lowest unit k is r-feasible iff b_{k o_k} + sum_{j in S, j > k} w_{j o_j} <= B and
sum_{j in S} u_{j o_j} <= U; the empty set is feasible iff fixed_mem <= mem_budget.

  1. Rounded down (a relaxation): b_{ko}, w_{jo} and u_{jo} rounded down for options of positive
     value, up for value 0 (so that a worthless unit never rides along for free). A sum of floors
     is at most the floor of the sum, and an optimum loses nothing by dropping its value-0 units,
     so some optimum in bytes is feasible here: the pass's optimum is worth at least the true
     optimum. If it fits in bytes (checked on its true costs), it is the exact optimum in bytes.
  2. Otherwise, rounded up (conservative): every rounded term is >= its bytes / grid, so every
     ceil-feasible choice fits in bytes; the answer is the exact optimum on rounded-up costs, worth
     at most what rounding up loses (<= one cell per unit) below the true optimum.

So a budget that equals a choice's cost to the byte (e.g. a budget of exactly "every unit") gets
that choice when it is also the tie rule's pick on costs rounded down; only where the floor optimum
does not fit may pass 2 miss it.

Algorithm: fixing the lowest unit k and its option leaves a multiple-choice knapsack over the units
above k (each skipped or taken at one option), with b_{k o} (and u_{k o}) already spent. One table
over the suffix {k+1..n-1} is grown from the top unit downwards, so every (k, o) is answered from
the table as it stands just before unit k joins it:
  memory only    a dense vector best[c] = max value at exactly c cells, updated per unit as
                 best = max(best, max_o shift(best, w_{jo}) + v_{jo}): O(n x m x W), W <= B + 1;
  two resources  a sparse set of exact (memory cells, upload cells) states with their best value,
                 dropping states that another beats with <= both costs and >= value (Pareto set).
Both are exact. States never exceed the largest spare cells of any feasible lower (unit, option)
(nor the sum of every unit's largest cells), and units below the lowest feasible k are never visited.

Ties, broken deterministically in this order (cells as rounded in the pass that answered): larger
value (as the DP sums it, top unit first), fewer memory cells, fewer upload cells (two resources
only), lexicographically smallest tuple of (unit, option) pairs sorted by unit; so a lower unit
beats a higher one, and the same unit at a lower option beats it at a higher one. Hence the empty
set (head only) is returned whenever no positive-value choice fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

Candidate = tuple[float, int, int, int, int, tuple[int, int]]
"""(value, memory cells, upload cells, lowest unit k, its option, knapsack cells (memory, upload) above k)."""

Choice = Callable[[int, int, int], int]
"""choice(j, c, d): unit j's option (-1: skipped) in the stored optimum of units j.. at exact cells (c, d)."""

_PRUNE_GRID_CELLS = 2**20
"""Dominance pruning of a level is skipped (all its states kept, still exact) above this many rank-grid cells."""


@dataclass(frozen=True)
class Assignment:
    """Units one client trains, their summed value and their true (unrounded) costs in bytes."""

    units: tuple[int, ...]
    value: float
    mem_bytes: int
    upload_bytes: int


@dataclass(frozen=True)
class RankAssignment:
    """Units one client trains, the rank option of each (same order), their summed value and true costs in bytes."""

    units: tuple[int, ...]
    options: tuple[int, ...]
    value: float
    mem_bytes: int
    upload_bytes: int


def memory_of(units: Iterable[int], path_mem: ArrayLike, unit_mem: ArrayLike, fixed_mem: int) -> int:
    """True memory in bytes of training `units` at a single rank: Mem(S) from the module docstring (m = 1)."""
    path = _byte_array("path_mem", path_mem)
    unit = _byte_array("unit_mem", unit_mem, (path.size,))[:, None]
    chosen = _unit_indices(units, path.size)
    return _memory(chosen, (0,) * len(chosen), math.ceil(_non_negative("fixed_mem", fixed_mem)), path[:, None] + unit,
                   unit)


def solve_assignment(
    values: ArrayLike,
    path_mem: ArrayLike,
    unit_mem: ArrayLike,
    fixed_mem: int,
    mem_budget: int,
    unit_upload: ArrayLike | None = None,
    upload_budget: int | None = None,
    mem_grid: int = 2**20,
    upload_grid: int = 4096,
) -> Assignment:
    """Exactly maximise the trained units' value under the memory (and upload) budget, one rank for all.

    `values`, `path_mem`, `unit_mem` and `unit_upload` hold one entry per unit (bytes for the costs);
    this is `solve_rank_assignment` with a single rank option. Raises ValueError as it does, naming
    the argument, and for arrays that are not 1-D.
    """
    value = _value_array(values, 1)
    path = _byte_array("path_mem", path_mem, value.shape)
    unit = _byte_array("unit_mem", unit_mem, value.shape)
    upload = _upload_array(unit_upload, upload_budget, value.shape)
    got = _solve(value[:, None], (path + unit)[:, None], unit[:, None], upload[:, None], fixed_mem, mem_budget,
                 upload_budget, (mem_grid, upload_grid))
    return Assignment(got.units, got.value, got.mem_bytes, got.upload_bytes)


def solve_rank_assignment(
    values: ArrayLike,
    path_mem: ArrayLike,
    unit_mem: ArrayLike,
    fixed_mem: int,
    mem_budget: int,
    unit_upload: ArrayLike | None = None,
    upload_budget: int | None = None,
    mem_grid: int = 2**20,
    upload_grid: int = 4096,
) -> RankAssignment:
    """Exactly maximise the value of the trained (unit, rank option) pairs under the memory (and upload) budget.

    values (n, m): value of unit j at option o; path_mem (n,): activation bytes kept from unit k up;
    unit_mem (n, m) and unit_upload (n, m): bytes of unit j at option o; fixed_mem, mem_budget,
    upload_budget (None: unlimited): bytes; mem_grid, upload_grid: rounding grids in bytes (module
    docstring). Returns the optimum by the module docstring's tie rule, with its true costs.

    Raises ValueError naming the argument when values is not 2-D with m >= 1 columns, a cost array
    has the wrong shape, is not numeric, or holds negative or non-finite entries, a scalar is
    negative or non-finite, a grid is not a positive integer, upload_budget is set without
    unit_upload, or fixed_mem exceeds mem_budget.
    """
    value = _value_array(values, 2)
    path = _byte_array("path_mem", path_mem, value.shape[:1])
    unit = _byte_array("unit_mem", unit_mem, value.shape)
    upload = _upload_array(unit_upload, upload_budget, value.shape)
    return _solve(value, path[:, None] + unit, unit, upload, fixed_mem, mem_budget, upload_budget,
                  (mem_grid, upload_grid))


def solve_lowest_assignment(
    values: ArrayLike,
    lowest_mem: ArrayLike,
    unit_mem: ArrayLike,
    fixed_mem: int,
    mem_budget: int,
    unit_upload: ArrayLike | None = None,
    upload_budget: int | None = None,
    mem_grid: int = 2**20,
    upload_grid: int = 4096,
) -> RankAssignment:
    """`solve_rank_assignment` with the lowest chosen unit's cost given per option: lowest_mem (n, m) is
    what unit k at option o costs beyond fixed_mem when it is the lowest (path_mem[k] + unit_mem[k, o]
    there), so Mem(S, o) = fixed_mem + lowest_mem[k, o_k] + sum_{j in S, j > k} unit_mem[j, o_j].
    Same rounding, ties, result and errors (`lowest_mem` checked like `unit_mem`)."""
    value = _value_array(values, 2)
    lowest = _byte_array("lowest_mem", lowest_mem, value.shape)
    unit = _byte_array("unit_mem", unit_mem, value.shape)
    upload = _upload_array(unit_upload, upload_budget, value.shape)
    return _solve(value, lowest, unit, upload, fixed_mem, mem_budget, upload_budget, (mem_grid, upload_grid))


def _solve(
    value: np.ndarray, lowest: np.ndarray, unit: np.ndarray, upload: np.ndarray, fixed_mem: float,
    mem_budget: float, upload_budget: float | None, grids: tuple[int, int],
) -> RankAssignment:
    """solve_lowest_assignment on checked (n, m) value, lowest, unit and upload byte arrays: the optimum on
    costs rounded down when it fits in bytes, else the optimum on costs rounded up (module docstring)."""
    head, budget = _head_and_budget(fixed_mem, mem_budget)
    grid = checked_grid("mem_grid", grids[0])
    up_grid = 1 if upload_budget is None else checked_grid("upload_grid", grids[1])
    up_budget = None if upload_budget is None else math.floor(_non_negative("upload_budget", upload_budget))
    costs = (value, head + lowest, unit, upload)
    optimistic = _solve_on_cells(costs, head, lowest, (budget, up_budget), (grid, up_grid), down=True)
    if optimistic.mem_bytes <= budget and (up_budget is None or optimistic.upload_bytes <= up_budget):
        return optimistic
    return _solve_on_cells(costs, head, lowest, (budget, up_budget), (grid, up_grid), down=False)


def _solve_on_cells(
    costs: tuple[np.ndarray, ...], head: int, lowest: np.ndarray, budgets: tuple[int, int | None],
    grids: tuple[int, int], down: bool,
) -> RankAssignment:
    """The tie rule's optimum with costs (value, head + lowest, unit, upload bytes) rounded to cells, down
    (pass 1 of the module docstring) or up, and budgets (bytes; upload None: unlimited) rounded down; its
    true costs in bytes."""
    value, base_bytes, unit, upload = costs
    (budget, up_budget), (grid, up_grid) = budgets, grids
    base, cells = _option_cells(base_bytes, grid, value, down), _option_cells(unit, grid, value, down)
    if up_budget is None:
        up_cells = np.zeros(value.shape, np.int64)
        candidates, choice = _memory_dp(value, base, cells, budget // grid)
    else:
        up_cells = _option_cells(upload, up_grid, value, down)
        candidates, choice = _memory_upload_dp(value, base, cells, budget // grid, up_cells, up_budget // up_grid)
    chosen = _pick(candidates)
    if chosen is None:
        return RankAssignment((), (), 0.0, head, 0)
    units, options = _walk(chosen, choice, value, cells, up_cells)
    return RankAssignment(units, options, chosen[0], _memory(units, options, head, lowest, unit),
                          int(upload[list(units), list(options)].sum()))


def _memory_dp(value: np.ndarray, base: np.ndarray, cells: np.ndarray, budget: int) -> tuple[list[Candidate], Choice]:
    """Memory only: dense exact-cost knapsack vector over the units above k, grown from the top unit down."""
    spare = budget - base
    fits = spare >= 0
    reach = _reach(spare, fits)
    lowest = _lowest(reach)
    best = np.full(int(min(reach.max(initial=0), cells.max(axis=1, initial=0).sum())) + 1, -np.inf)
    best[0] = 0.0
    won: dict[int, tuple[int, list[np.ndarray]]] = {}
    candidates: list[Candidate] = []
    fitting, spare_of, base_of = _fitting_options(fits), spare.tolist(), base.tolist()
    cells_of, value_of = cells.tolist(), value.tolist()
    for k in range(value.shape[0] - 1, lowest - 1, -1):
        for o in fitting[k]:
            c = int(np.argmax(best[: spare_of[k][o] + 1]))
            candidates.append((float(best[c]) + value_of[k][o], base_of[k][o] + c, 0, k, o, (c, 0)))
        if k > lowest:
            best, masks = _offer_dense(best[: min(reach[k - 1], best.size - 1) + 1], cells_of[k], value_of[k])
            won[k] = (best.size, masks)
    return candidates, lambda j, c, d: _dense_option(*won[j], c)


def _offer_dense(best: np.ndarray, cells: list[int], value: list[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Offer one more unit at each option to the dense vector, in place; returns it and where each option won.

    won[o] covers the vector's cells from cells[o] up (empty when cells[o] exceeds it). Options are tried from the last down with >=, so on equal value a lower option beats a higher one
    and any option beats skipping (the lexicographic tie rule): a cell's option is the lowest that won.
    """
    shifted = [best[: max(best.size - w, 0)] + v for w, v in zip(cells, value)]
    won = [np.empty(0, bool)] * len(cells)
    for o in range(len(cells) - 1, -1, -1):
        w = best.size - shifted[o].size
        won[o] = shifted[o] >= best[w:]
        np.maximum(best[w:], shifted[o], out=best[w:])
    return best, won


def _dense_option(size: int, won: list[np.ndarray], c: int) -> int:
    """The option at exact cell c of a dense level of `size` cells: the lowest that won there, -1 (skip) if none."""
    for o, mask in enumerate(won):
        i = c - (size - mask.size)
        if i >= 0 and mask[i]:
            return o
    return -1


def _memory_upload_dp(
    value: np.ndarray, base: np.ndarray, cells: np.ndarray, budget: int, up_cells: np.ndarray, up_budget: int
) -> tuple[list[Candidate], Choice]:
    """Two resources: sparse Pareto set of exact (memory, upload) cell states above k, grown top unit down."""
    spare, up_spare = budget - base, up_budget - up_cells
    fits = (spare >= 0) & (up_spare >= 0)
    reach, up_reach = _reach(spare, fits), _reach(up_spare, fits)
    total, up_total = int(cells.max(axis=1, initial=0).sum()), int(up_cells.max(axis=1, initial=0).sum())
    lowest = _lowest(reach)
    mem, up, val = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1)
    levels: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    candidates: list[Candidate] = []
    fitting = _fitting_options(fits)
    for k in range(value.shape[0] - 1, lowest - 1, -1):
        for o in fitting[k]:
            i = int(np.argmax(np.where((mem <= spare[k, o]) & (up <= up_spare[k, o]), val, -np.inf)))
            candidates.append((float(val[i] + value[k, o]), int(base[k, o] + mem[i]), int(up_cells[k, o] + up[i]),
                               k, o, (int(mem[i]), int(up[i]))))
        if k > lowest:
            limit = (min(int(reach[k - 1]), total), min(int(up_reach[k - 1]), up_total))
            mem, up, val, option = _add_unit(mem, up, val, (cells[k], up_cells[k], value[k]), limit)
            levels[k] = (mem, up, option)

    def choice(j: int, c: int, d: int) -> int:
        """Unit j's option (-1: skipped) in the stored state (c, d) of the suffix starting at j."""
        mem_j, up_j, option_j = levels[j]
        return int(option_j[np.flatnonzero((mem_j == c) & (up_j == d))[0]])

    return candidates, choice


def _reach(spare: np.ndarray, fits: np.ndarray) -> np.ndarray:
    """reach[k]: the most spare cells any feasible (unit k' <= k, option) leaves (-1 if none), bounding states."""
    return np.maximum.accumulate(np.where(fits, spare, -1).max(axis=1, initial=-1))


def _fitting_options(fits: np.ndarray) -> list[list[int]]:
    """For each unit, the options at which it fits as the lowest unit."""
    return [[o for o, ok in enumerate(row) if ok] for row in fits.tolist()]


def _lowest(reach: np.ndarray) -> int:
    """The lowest feasible lowest unit (len(reach) if none): units below it need no DP level."""
    return int(np.argmax(reach >= 0)) if reach.size and reach[-1] >= 0 else reach.size


def _add_unit(
    mem: np.ndarray, up: np.ndarray, val: np.ndarray, unit: tuple[np.ndarray, np.ndarray, np.ndarray],
    limit: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Offer one more unit at each option within the cell limits: best value per cell, undominated only.

    Each state keeps the option that reached it (-1: skip); on equal value a lower option wins, and
    any option beats skipping (the lexicographic tie rule).
    """
    w, u, v = unit
    inside = (mem <= limit[0]) & (up <= limit[1])
    parts = [(mem[inside], up[inside], val[inside], -1)]
    for o in range(w.size):
        fits = (mem + w[o] <= limit[0]) & (up + u[o] <= limit[1])
        parts.append((mem[fits] + w[o], up[fits] + u[o], val[fits] + v[o], o))
    mem, up, val = (np.concatenate([part[i] for part in parts]) for i in range(3))
    option = np.concatenate([np.full(part[0].size, part[3], np.int32) for part in parts])
    order = np.lexsort((np.where(option < 0, w.size, option), -val, up, mem))
    mem, up, val, option = mem[order], up[order], val[order], option[order]
    first = np.ones(mem.size, dtype=bool)
    first[1:] = (mem[1:] != mem[:-1]) | (up[1:] != up[:-1])
    keep = np.flatnonzero(first)
    keep = keep[_undominated(mem[keep], up[keep], val[keep])]
    return mem[keep], up[keep], val[keep], option[keep]


def _undominated(mem: np.ndarray, up: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Mask of states no other state beats with <= memory, <= upload and >= value (all kept if too sparse)."""
    mem_levels, mem_rank = np.unique(mem, return_inverse=True)
    up_levels, up_rank = np.unique(up, return_inverse=True)
    if mem_levels.size * up_levels.size > _PRUNE_GRID_CELLS:
        return np.ones(mem.size, dtype=bool)
    grid = np.full((mem_levels.size + 1, up_levels.size + 1), -np.inf)
    grid[mem_rank + 1, up_rank + 1] = val
    np.maximum.accumulate(grid, axis=0, out=grid)
    np.maximum.accumulate(grid, axis=1, out=grid)
    return np.maximum(grid[mem_rank, up_rank + 1], grid[mem_rank + 1, up_rank]) < val


def _walk(
    chosen: Candidate, choice: Choice, value: np.ndarray, cells: np.ndarray, up_cells: np.ndarray
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Rebuild the chosen units and options upwards from the lowest unit, following each stored choice."""
    free = _free_value_ahead(value, (cells == 0) & (up_cells == 0))
    units, options = [chosen[3]], [chosen[4]]
    c, d = chosen[5]
    for j in range(chosen[3] + 1, value.shape[0]):
        if c == 0 and d == 0 and not free[j]:
            break
        o = choice(j, c, d)
        if o >= 0:
            units.append(j)
            options.append(o)
            c, d = c - int(cells[j, o]), d - int(up_cells[j, o])
    return tuple(units), tuple(options)


def _memory(units: tuple[int, ...], options: tuple[int, ...], head: int, lowest: np.ndarray, unit: np.ndarray) -> int:
    """Mem(S, o) in bytes for sorted `units` at `options`: the lowest unit's cost, the others' unit costs."""
    if not units:
        return head
    return head + int(lowest[units[0], options[0]]) + int(unit[list(units[1:]), list(options[1:])].sum())


def _pick(candidates: list[Candidate]) -> Candidate | None:
    """Best candidate by the documented tie rule; None when the empty set wins (best value 0)."""
    if not candidates:
        return None
    best = max(candidates, key=lambda c: (c[0], -c[1], -c[2], -c[3], -c[4]))
    return best if best[0] > 0 else None


def _free_value_ahead(value: np.ndarray, zero_cost: np.ndarray) -> np.ndarray:
    """free[j]: some unit >= j has an option that costs no cells yet has positive value, so the walk must not stop."""
    return np.logical_or.accumulate(((value > 0) & zero_cost).any(axis=1)[::-1])[::-1]


def _cells(nbytes: np.ndarray | int, grid: int) -> np.ndarray:
    """Byte counts rounded up to whole grid cells."""
    return -(-np.asarray(nbytes, dtype=np.int64) // grid)


def _option_cells(nbytes: np.ndarray, grid: int, value: np.ndarray, down: bool) -> np.ndarray:
    """Per-option byte counts in grid cells: rounded up, or when `down` rounded down where the option has
    positive value (a value-0 option stays rounded up, as the lowest unit or above it)."""
    up = _cells(nbytes, grid)
    return np.where(value > 0, nbytes // grid, up) if down else up


def _head_and_budget(fixed_mem: float, mem_budget: float) -> tuple[int, int]:
    """Head bytes (rounded up) and memory budget bytes (rounded down); error if the head alone does not fit."""
    head = math.ceil(_non_negative("fixed_mem", fixed_mem))
    budget = math.floor(_non_negative("mem_budget", mem_budget))
    if head > budget:
        raise ValueError(f"mem_budget {budget} bytes is below fixed_mem: at least {head} bytes are needed "
                         "to train the head alone")
    return head, budget


def _upload_array(unit_upload: ArrayLike | None, upload_budget: float | None, shape: tuple[int, ...]) -> np.ndarray:
    """Checked upload bytes of `shape` (zeros when not given); error if upload_budget is set without them."""
    if unit_upload is None:
        if upload_budget is not None:
            raise ValueError("upload_budget is set but unit_upload is None: give the upload bytes of every unit")
        return np.zeros(shape, np.int64)
    return _byte_array("unit_upload", unit_upload, shape)


def _value_array(values: ArrayLike, ndim: int) -> np.ndarray:
    """Values as a float array, 1-D (one per unit) or 2-D (units x rank options, m >= 1), finite and non-negative."""
    value = np.asarray(values, dtype=float)
    if ndim == 1 and value.ndim != 1:
        raise ValueError(f"values must be 1-D (one per unit), got shape {value.shape}")
    if ndim == 2 and (value.ndim != 2 or value.shape[1] == 0):
        raise ValueError(f"values must be 2-D (units x rank options) with at least one option, got shape {value.shape}")
    if not np.all(np.isfinite(value)) or np.any(value < 0):
        raise ValueError("values must be finite and non-negative")
    return value


def _byte_array(name: str, nbytes: ArrayLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Byte counts as int64 (fractions rounded up), checked for shape (None: any 1-D) and sign."""
    array = np.asarray(nbytes)
    if (array.ndim != 1) if shape is None else (array.shape != shape):
        raise ValueError(f"{name} must be {_shape_text(shape)}, got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric bytes, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return np.ceil(array).astype(np.int64) if array.dtype.kind == "f" else array.astype(np.int64)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    """How an array of `shape` is described in errors."""
    if shape is None:
        return "1-D with one entry per unit"
    if len(shape) == 1:
        return f"1-D with one entry per unit ({shape[0]})"
    return f"2-D of shape {shape} (units x rank options)"


def _non_negative(name: str, number: float) -> float:
    """A finite, non-negative scalar, or a ValueError naming it."""
    if not isinstance(number, (int, float, np.integer, np.floating)) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {number!r}")
    return number


def checked_grid(name: str, grid: int) -> int:
    """A positive integer grid size in bytes."""
    if not isinstance(grid, (int, np.integer)) or grid <= 0:
        raise ValueError(f"{name} must be a positive integer number of bytes, got {grid!r}")
    return int(grid)


def _unit_indices(units: Iterable[int], size: int) -> tuple[int, ...]:
    """Sorted distinct unit indices, each in range(size)."""
    chosen = tuple(sorted(int(j) for j in units))
    if len(set(chosen)) != len(chosen) or any(not 0 <= j < size for j in chosen):
        raise ValueError(f"units must be distinct indices in 0..{size - 1}, got {chosen}")
    return chosen
