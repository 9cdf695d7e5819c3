"""Exact LoRA-unit assignment for one client of Fed-piLot.

Units j = 0..n-1 are transformer blocks, bottom (0) to top (n-1). Training the set S costs

    Mem(S) = fixed_mem + path_mem[min S] + sum_{j in S} unit_mem[j]     (S non-empty)
    Mem({}) = fixed_mem                                                 (head only)
    Up(S)  = sum_{j in S} unit_upload[j]

because autograd keeps activations from the lowest trained block up to the head. We solve

    max sum_{j in S} values[j]   s.t.   Mem(S) <= mem_budget,   Up(S) <= upload_budget (None: unlimited).

Rounding (conservative: every rounded-feasible set is truly feasible). Byte counts are whole
bytes (fractional inputs are rounded up first), then with g = mem_grid and h = upload_grid

    B   = floor(mem_budget / g)                                budget cells, rounded down
    b_k = ceil((fixed_mem + path_mem[k] + unit_mem[k]) / g)    cells of S's lowest unit k
    w_j = ceil(unit_mem[j] / g),   u_j = ceil(unit_upload[j] / h),   U = floor(upload_budget / h)

and S with lowest unit k is rounded-feasible iff b_k + sum_{j in S, j > k} w_j <= B and
sum_{j in S} u_j <= U. Every rounded term is >= its bytes / grid, so the true cost is at most
B * g <= mem_budget (likewise for upload). The empty set is feasible iff fixed_mem <= mem_budget.

Algorithm: fixing the lowest unit k leaves a 0/1 knapsack over the units above k, with b_k (and
u_k) already spent. One table over the suffix {k+1..n-1} is grown from the top unit downwards,
so every k is answered from the table as it stands just before unit k joins it:
  memory only    a dense vector best[c] = max value at exactly c cells, updated per unit as
                 best = maximum(best, shift(best, w_j) + v_j): O(n x W) in total, W <= B + 1;
  two resources  a sparse set of exact (memory cells, upload cells) states with their best value,
                 dropping states that another beats with <= both costs and >= value (Pareto set).
Both are exact. States never exceed the largest spare cells of any feasible lower unit (nor the
sum of all unit cells), and units below the lowest feasible k are never visited.

Ties, broken deterministically in this order: larger value (as the DP sums it, top unit first),
fewer memory cells, fewer upload cells (two resources only), lexicographically smallest sorted
unit tuple. Hence the empty set (head only) is returned whenever no positive-value unit fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

Candidate = tuple[float, int, int, int, tuple[int, int]]
"""(value, memory cells, upload cells, lowest unit k, knapsack cells (memory, upload) above k)."""

Taken = Callable[[int, int, int], bool]
"""taken(j, c, d): whether unit j is in the stored optimum of units j.. at exact cells (c memory, d upload)."""

_PRUNE_GRID_CELLS = 2**20
"""Dominance pruning of a level is skipped (all its states kept, still exact) above this many rank-grid cells."""


@dataclass(frozen=True)
class Assignment:
    """Units one client trains, their summed value and their true (unrounded) costs in bytes."""

    units: tuple[int, ...]
    value: float
    mem_bytes: int
    upload_bytes: int


def memory_of(units: Iterable[int], path_mem: ArrayLike, unit_mem: ArrayLike, fixed_mem: int) -> int:
    """True memory in bytes of training `units`: Mem(S) from the module docstring."""
    path = _byte_array("path_mem", path_mem)
    unit = _byte_array("unit_mem", unit_mem, path.size)
    return _memory(_unit_indices(units, path.size), math.ceil(_non_negative("fixed_mem", fixed_mem)), path, unit)


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
    """Exactly maximise the trained units' value under the memory (and upload) budget."""
    value = _value_array(values)
    path = _byte_array("path_mem", path_mem, value.size)
    unit = _byte_array("unit_mem", unit_mem, value.size)
    if upload_budget is not None and unit_upload is None:
        raise ValueError("upload_budget is set but unit_upload is None: give the upload bytes of every unit")
    upload = np.zeros(value.size, np.int64)
    if unit_upload is not None:
        upload = _byte_array("unit_upload", unit_upload, value.size)
    head, budget = _head_and_budget(fixed_mem, mem_budget)
    grid = _grid("mem_grid", mem_grid)
    base, cells = _cells(head + path + unit, grid), _cells(unit, grid)
    if upload_budget is None:
        up_cells = np.zeros(value.size, np.int64)
        candidates, taken = _memory_dp(value, base, cells, budget // grid)
    else:
        up_grid = _grid("upload_grid", upload_grid)
        up_cells = _cells(upload, up_grid)
        up_budget = math.floor(_non_negative("upload_budget", upload_budget)) // up_grid
        candidates, taken = _memory_upload_dp(value, base, cells, budget // grid, up_cells, up_budget)
    chosen = _pick(candidates)
    if chosen is None:
        return Assignment((), 0.0, head, 0)
    units = _walk(chosen, taken, value, cells, up_cells)
    return Assignment(units, chosen[0], _memory(units, head, path, unit), int(upload[list(units)].sum()))


def _memory_dp(value: np.ndarray, base: np.ndarray, cells: np.ndarray, budget: int) -> tuple[list[Candidate], Taken]:
    """Memory only: dense exact-cost knapsack vector over the units above k, grown from the top unit down."""
    spare = budget - base
    reach = _reach(spare, spare >= 0)
    lowest = _lowest(reach)
    best = np.full(int(min(reach.max(initial=0), cells.sum())) + 1, -np.inf)
    best[0] = 0.0
    take: dict[int, np.ndarray] = {}
    candidates: list[Candidate] = []
    for k in range(value.size - 1, lowest - 1, -1):
        if spare[k] >= 0:
            c = int(np.argmax(best[: spare[k] + 1]))
            candidates.append((float(best[c] + value[k]), int(base[k]) + c, 0, k, (c, 0)))
        if k > lowest:
            best = best[: min(reach[k - 1], best.size - 1) + 1]
            w = int(cells[k])
            take[k] = np.zeros(best.size, dtype=bool)
            shifted = best[: max(best.size - w, 0)] + value[k]
            take[k][w:] = shifted >= best[w:]
            np.maximum(best[w:], shifted, out=best[w:])
    return candidates, lambda j, c, d: bool(take[j][c])


def _memory_upload_dp(
    value: np.ndarray, base: np.ndarray, cells: np.ndarray, budget: int, up_cells: np.ndarray, up_budget: int
) -> tuple[list[Candidate], Taken]:
    """Two resources: sparse Pareto set of exact (memory, upload) cell states above k, grown top unit down."""
    spare, up_spare = budget - base, up_budget - up_cells
    fits = (spare >= 0) & (up_spare >= 0)
    reach, up_reach = _reach(spare, fits), _reach(up_spare, fits)
    total, up_total = int(cells.sum()), int(up_cells.sum())
    lowest = _lowest(reach)
    mem, up, val = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1)
    levels: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    candidates: list[Candidate] = []
    for k in range(value.size - 1, lowest - 1, -1):
        if fits[k]:
            i = int(np.argmax(np.where((mem <= spare[k]) & (up <= up_spare[k]), val, -np.inf)))
            candidates.append((float(val[i] + value[k]), int(base[k] + mem[i]), int(up_cells[k] + up[i]), k,
                               (int(mem[i]), int(up[i]))))
        if k > lowest:
            limit = (min(int(reach[k - 1]), total), min(int(up_reach[k - 1]), up_total))
            unit = (int(cells[k]), int(up_cells[k]), float(value[k]))
            mem, up, val, took = _add_unit(mem, up, val, unit, limit)
            levels[k] = (mem, up, took)

    def taken(j: int, c: int, d: int) -> bool:
        """Whether unit j is taken in the stored state (c, d) of the suffix starting at j."""
        mem_j, up_j, took_j = levels[j]
        return bool(took_j[np.flatnonzero((mem_j == c) & (up_j == d))[0]])

    return candidates, taken


def _reach(spare: np.ndarray, fits: np.ndarray) -> np.ndarray:
    """reach[k]: the most spare cells any feasible lowest unit k' <= k leaves (-1 if none), bounding states."""
    return np.maximum.accumulate(np.where(fits, spare, -1))


def _lowest(reach: np.ndarray) -> int:
    """The lowest feasible lowest unit (len(reach) if none): units below it need no DP level."""
    return int(np.argmax(reach >= 0)) if reach.size and reach[-1] >= 0 else reach.size


def _add_unit(
    mem: np.ndarray, up: np.ndarray, val: np.ndarray, unit: tuple[int, int, float], limit: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Offer one more unit within the cell limits: best value per cell (take wins ties), undominated only."""
    w, u, v = unit
    inside = (mem <= limit[0]) & (up <= limit[1])
    fits = (mem + w <= limit[0]) & (up + u <= limit[1])
    mem = np.concatenate([mem[inside], mem[fits] + w])
    up = np.concatenate([up[inside], up[fits] + u])
    val = np.concatenate([val[inside], val[fits] + v])
    took = np.arange(mem.size) >= np.count_nonzero(inside)
    order = np.lexsort((~took, -val, up, mem))
    mem, up, val, took = mem[order], up[order], val[order], took[order]
    first = np.ones(mem.size, dtype=bool)
    first[1:] = (mem[1:] != mem[:-1]) | (up[1:] != up[:-1])
    keep = np.flatnonzero(first)
    keep = keep[_undominated(mem[keep], up[keep], val[keep])]
    return mem[keep], up[keep], val[keep], took[keep]


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
    chosen: Candidate, taken: Taken, value: np.ndarray, cells: np.ndarray, up_cells: np.ndarray
) -> tuple[int, ...]:
    """Rebuild the chosen set upwards from its lowest unit, taking each unit whenever that stays optimal."""
    free = _free_value_ahead(value, (cells == 0) & (up_cells == 0))
    units = [chosen[3]]
    c, d = chosen[4]
    for j in range(chosen[3] + 1, value.size):
        if c == 0 and d == 0 and not free[j]:
            break
        if taken(j, c, d):
            units.append(j)
            c, d = c - int(cells[j]), d - int(up_cells[j])
    return tuple(units)


def _memory(units: tuple[int, ...], head: int, path: np.ndarray, unit: np.ndarray) -> int:
    """Mem(S) in bytes for sorted `units`."""
    return head if not units else head + int(path[units[0]]) + int(unit[list(units)].sum())


def _pick(candidates: list[Candidate]) -> Candidate | None:
    """Best candidate by the documented tie rule; None when the empty set wins (best value 0)."""
    if not candidates:
        return None
    best = max(candidates, key=lambda c: (c[0], -c[1], -c[2], -c[3]))
    return best if best[0] > 0 else None


def _free_value_ahead(value: np.ndarray, zero_cost: np.ndarray) -> np.ndarray:
    """free[j]: some unit >= j costs no cells yet has positive value, so the walk must not stop."""
    return np.logical_or.accumulate(((value > 0) & zero_cost)[::-1])[::-1]


def _cells(nbytes: np.ndarray | int, grid: int) -> np.ndarray:
    """Byte counts rounded up to whole grid cells."""
    return -(-np.asarray(nbytes, dtype=np.int64) // grid)


def _head_and_budget(fixed_mem: float, mem_budget: float) -> tuple[int, int]:
    """Head bytes (rounded up) and memory budget bytes (rounded down); error if the head alone does not fit."""
    head = math.ceil(_non_negative("fixed_mem", fixed_mem))
    budget = math.floor(_non_negative("mem_budget", mem_budget))
    if head > budget:
        raise ValueError(f"mem_budget {budget} bytes is below fixed_mem: at least {head} bytes are needed "
                         "to train the head alone")
    return head, budget


def _value_array(values: ArrayLike) -> np.ndarray:
    """Unit values as a 1-D float array, finite and non-negative."""
    value = np.asarray(values, dtype=float)
    if value.ndim != 1:
        raise ValueError(f"values must be 1-D (one per unit), got shape {value.shape}")
    if not np.all(np.isfinite(value)) or np.any(value < 0):
        raise ValueError("values must be finite and non-negative")
    return value


def _byte_array(name: str, nbytes: ArrayLike, size: int | None = None) -> np.ndarray:
    """Per-unit byte counts as int64 (fractions rounded up), checked for length and sign."""
    array = np.asarray(nbytes)
    if array.ndim != 1 or (size is not None and array.size != size):
        raise ValueError(f"{name} must be 1-D with one entry per unit ({size}), got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric bytes, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return np.ceil(array).astype(np.int64) if array.dtype.kind == "f" else array.astype(np.int64)


def _non_negative(name: str, number: float) -> float:
    """A finite, non-negative scalar, or a ValueError naming it."""
    if not isinstance(number, (int, float, np.integer, np.floating)) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {number!r}")
    return number


def _grid(name: str, grid: int) -> int:
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
