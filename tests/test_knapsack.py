"""Exact LoRA-unit assignment (fedpilot.assign.knapsack) against brute force over all subsets."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ceil_div, option_cells
from fedpilot.assign.knapsack import Assignment, memory_of, solve_assignment

MiB = 2**20
INSTANCES_PER_CASE = 400


def random_instance(rng: np.random.Generator, realistic: bool, upload: bool, integer_values: bool) -> dict:
    """One solve_assignment keyword set: mostly few units, sometimes up to 16, random or 7B-like costs."""
    n = int(rng.integers(11, 17)) if rng.random() < 0.05 else int(rng.integers(0, 11))
    values = rng.integers(0, 4, n).astype(float) if integer_values else rng.random(n) * (rng.random(n) < 0.9)
    if realistic:
        grid, up_grid = MiB, 4096
        path = (25.5 * MiB * (n - np.arange(n))).astype(np.int64)
        unit = (1.56 * MiB * rng.uniform(0.8, 1.2, n)).astype(np.int64)
        fixed = int(rng.integers(100, 400)) * MiB
        up = (0.4 * MiB * rng.uniform(0.8, 1.2, n)).astype(np.int64)
    else:
        grid, up_grid = int(rng.integers(1, 9)), int(rng.integers(1, 5))
        path = np.sort(rng.integers(0, 60, n))[::-1]
        unit = rng.integers(0, 25, n) * (rng.random(n) < 0.9)
        fixed = int(rng.integers(0, 30))
        up = rng.integers(0, 20, n)
    most = fixed + (int(path.max()) + int(unit.sum()) if n else 0)
    case = dict(values=values, path_mem=path, unit_mem=unit, fixed_mem=fixed,
                mem_budget=int(rng.integers(fixed, most + 2)), mem_grid=grid)
    if upload:
        case.update(unit_upload=up, upload_budget=int(rng.integers(0, int(up.sum()) + 2)), upload_grid=up_grid)
    return case


def brute_force(case: dict, down: bool = False) -> list[tuple[float, int, int, tuple[int, ...]]]:
    """Every set feasible with its costs rounded up (down: as the module docstring's pass 1 rounds them) as
    (value, memory cells, upload cells, units); the empty set is checked in bytes."""
    values = np.asarray(case["values"])
    n, grid = values.size, case["mem_grid"]
    masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    lowest = np.argmax(masks, axis=1) if n else np.zeros(1, int)
    unit = np.asarray(case["unit_mem"], dtype=np.int64)
    base = option_cells(case["fixed_mem"] + np.asarray(case["path_mem"], dtype=np.int64) + unit, grid, values, down)
    cells = option_cells(unit, grid, values, down)
    mem = masks @ cells + (base[lowest] - cells[lowest] if n else 0)
    mem[0] = case["fixed_mem"] // grid if down else ceil_div(case["fixed_mem"], grid)
    up = np.zeros(2**n, np.int64)
    fits = mem <= case["mem_budget"] // grid
    fits[0] = case["fixed_mem"] <= case["mem_budget"]
    if case.get("upload_budget") is not None:
        up = masks @ option_cells(case["unit_upload"], case["upload_grid"], values, down)
        fits &= up <= case["upload_budget"] // case["upload_grid"]
    value = masks @ values
    return [(float(value[i]), int(mem[i]), int(up[i]), tuple(np.flatnonzero(masks[i]).tolist()))
            for i in np.flatnonzero(fits)]


def in_bytes(case: dict) -> dict:
    """The same case on 1-byte grids: rounding changes nothing, feasible means feasible in bytes."""
    return {**case, "mem_grid": 1, "upload_grid": 1}


def winner(feasible: list[tuple[float, int, int, tuple[int, ...]]]) -> tuple[float, int, int, tuple[int, ...]]:
    """The tie rule's pick: larger value, fewer memory cells, fewer upload cells, lexicographically smaller set."""
    return min(feasible, key=lambda s: (-s[0], s[1], s[2], s[3]))


def documented_answer(case: dict) -> tuple[float, int, int, tuple[int, ...]]:
    """The module docstring's answer: the winner on costs rounded down if it fits in bytes, else on costs rounded up."""
    optimistic = winner(brute_force(case, down=True))
    fits = {units for *_, units in brute_force(in_bytes(case))}
    return optimistic if optimistic[3] in fits else winner(brute_force(case))


def check_feasible(case: dict, got: Assignment) -> None:
    """The returned set is sorted, within both real budgets, and its reported costs and value are its own."""
    units = list(got.units)
    assert units == sorted(set(units))
    assert got.mem_bytes == memory_of(units, case["path_mem"], case["unit_mem"], case["fixed_mem"])
    assert got.mem_bytes <= case["mem_budget"]
    assert got.value == pytest.approx(float(np.sum(np.asarray(case["values"])[units])), rel=1e-12, abs=1e-12)
    if case.get("upload_budget") is not None:
        assert got.upload_bytes == int(np.sum(np.asarray(case["unit_upload"])[units]))
        assert got.upload_bytes <= case["upload_budget"]


@pytest.mark.parametrize("upload", [False, True], ids=["memory", "memory+upload"])
@pytest.mark.parametrize("realistic", [False, True], ids=["random", "realistic"])
def test_optimal_value_equals_brute_force(realistic: bool, upload: bool) -> None:
    rng = np.random.default_rng(1000 + 2 * realistic + upload)
    gains = 0
    for _ in range(INSTANCES_PER_CASE):
        case = random_instance(rng, realistic, upload, integer_values=False)
        got = solve_assignment(**case)
        check_feasible(case, got)
        rounded_up, exact = winner(brute_force(case))[0], winner(brute_force(in_bytes(case)))[0]
        assert got.value == pytest.approx(documented_answer(case)[0], rel=1e-9, abs=1e-12)
        assert rounded_up - 1e-9 <= got.value <= exact + 1e-9
        gains += got.value > rounded_up + 1e-9
    assert gains >= 5  # the floor pass's pick fits in bytes and beats rounding up alone


@pytest.mark.parametrize("upload", [False, True], ids=["memory", "memory+upload"])
def test_ties_prefer_fewer_cells_then_lexicographically_smaller_set(upload: bool) -> None:
    rng = np.random.default_rng(7 + upload)
    for _ in range(INSTANCES_PER_CASE):
        case = random_instance(rng, realistic=False, upload=upload, integer_values=True)
        got = solve_assignment(**case)
        check_feasible(case, got)
        value, _, _, units = documented_answer(case)
        assert (got.units, got.value) == (units, value)


@pytest.mark.parametrize("n", [24, 48])
def test_unlimited_upload_matches_memory_only_on_large_models(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        values = rng.random(n)
        path = (25.5 * MiB * (n - np.arange(n))).astype(np.int64)
        unit = (1.56 * MiB * rng.uniform(0.5, 1.5, n)).astype(np.int64)
        budget = int(rng.integers(300 * MiB, 1500 * MiB))
        alone = solve_assignment(values, path, unit, 200 * MiB, budget)
        both = solve_assignment(values, path, unit, 200 * MiB, budget, unit, 10**15)
        assert (both.units, both.value, both.mem_bytes) == (alone.units, alone.value, alone.mem_bytes)


def test_budget_below_every_unit_gives_head_only() -> None:
    got = solve_assignment([5.0, 1.0], [3 * MiB, 2 * MiB], [MiB, MiB], 10 * MiB, 12 * MiB)
    assert got == Assignment((), 0.0, 10 * MiB, 0)


def test_budget_above_everything_gives_all_units() -> None:
    got = solve_assignment([1.0, 2.0, 3.0], [30 * MiB, 20 * MiB, 10 * MiB], [MiB, 2 * MiB, 3 * MiB], MiB, 2**40,
                           [4096, 8192, 4096], 10**9)
    assert got == Assignment((0, 1, 2), 6.0, 37 * MiB, 16384)


def test_upload_budget_binds() -> None:
    got = solve_assignment([1.0, 2.0, 3.0], [3, 2, 1], [1, 1, 1], 0, 100, [5, 5, 5], 10, mem_grid=1, upload_grid=1)
    assert got == Assignment((1, 2), 5.0, 4, 10)


def test_zero_values_give_head_only() -> None:
    assert solve_assignment([0.0, 0.0], [2, 1], [1, 1], 3, 100, mem_grid=1).units == ()


def test_zero_cost_zero_value_unit_is_not_appended() -> None:
    got = solve_assignment([1.0, 1.0, 0.0], [9, 5, 1], [1, 1, 0], 0, 100, mem_grid=1)
    assert got.units == (0, 1)


def test_a_set_that_fits_to_the_byte_is_found_on_a_coarse_grid() -> None:
    # {0, 1} needs 8 + 4 + 0 + 1 = 13 bytes = the budget: ceil(12 / 4) + ceil(1 / 4) = 4 cells > floor(13 / 4) = 3,
    # but rounded down it takes 3 + 0 cells and its true 13 bytes fit
    assert solve_assignment([1.0, 1.0], [4, 1], [0, 1], 8, 13, mem_grid=4) == Assignment((0, 1), 2.0, 13, 0)


def test_a_worthless_unit_does_not_ride_along_on_rounding_down() -> None:
    # unit 1 (3 bytes, value 0) would take floor(3 / 4) = 0 cells; rounded up it takes 1, so it stays out and
    # {0, 2} (9 bytes = the budget) is found
    assert solve_assignment([1.0, 0.0, 1.0], [0, 0, 0], [4, 3, 5], 0, 9, mem_grid=4) == Assignment((0, 2), 2.0, 9, 0)
    assert solve_assignment([1.0, 0.0, 1.0], [0, 0, 0], [4, 3, 5], 0, 12, mem_grid=4).units == (0, 2)


def test_a_worthless_lowest_unit_does_not_ride_along_either() -> None:
    # rounded down, unit 0 (value 0) as the lowest would cost floor(7 / 4) = 1 cell, as little as unit 1 alone
    assert solve_assignment([0.0, 1.0], [6, 4], [1, 1], 0, 8, mem_grid=4) == Assignment((1,), 1.0, 5, 0)


def test_rounding_never_exceeds_real_budget() -> None:
    # rounded down, {0, 1} takes floor(12 / 4) + floor(3 / 4) = 3 cells <= 3, but its 15 bytes exceed 13:
    # the answer comes from costs rounded up, where {0} (12 bytes) wins
    assert solve_assignment([1.0, 1.0], [4, 1], [0, 3], 8, 13, mem_grid=4) == Assignment((0,), 1.0, 12, 0)
    assert solve_assignment([1.0, 1.0], [4, 1], [0, 3], 8, 15, mem_grid=4).units == (0, 1)


def test_fractional_bytes_are_rounded_up() -> None:
    got = solve_assignment([1.0], [0.5], [0.25], 1.5, 4, mem_grid=1)
    assert got == Assignment((0,), 1.0, 4, 0)
    assert solve_assignment([1.0], [0.5], [0.25], 1.5, 3.9, mem_grid=1).units == ()


def test_unlimited_upload_still_reports_upload_bytes() -> None:
    got = solve_assignment([1.0, 1.0], [2, 1], [1, 1], 0, 100, [7, 9], None, mem_grid=1)
    assert (got.units, got.upload_bytes) == ((0, 1), 16)


def test_no_units_gives_head_only() -> None:
    assert solve_assignment([], [], [], 5, 5, [], 0) == Assignment((), 0.0, 5, 0)


def test_fixed_mem_above_budget_names_bytes_needed() -> None:
    with pytest.raises(ValueError, match="at least 1234 bytes"):
        solve_assignment([1.0], [1], [1], 1234, 1000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(values=[1.0, 2.0]), "path_mem must be 1-D with one entry per unit"),
        (dict(unit_mem=[1, 2]), "unit_mem must be 1-D"),
        (dict(values=[[1.0]]), "values must be 1-D"),
        (dict(values=[-1.0]), "values must be finite and non-negative"),
        (dict(values=[np.nan]), "values must be finite and non-negative"),
        (dict(path_mem=[-1]), "path_mem must be finite and non-negative"),
        (dict(unit_mem=["a"]), "unit_mem must be numeric"),
        (dict(fixed_mem=-1), "fixed_mem must be a finite non-negative number"),
        (dict(mem_budget=-5), "mem_budget must be a finite non-negative number"),
        (dict(mem_budget=float("inf")), "mem_budget must be a finite non-negative number"),
        (dict(upload_budget=10), "upload_budget is set but unit_upload is None"),
        (dict(unit_upload=[1, 2], upload_budget=10), "unit_upload must be 1-D"),
        (dict(unit_upload=[1], upload_budget=-1), "upload_budget must be a finite non-negative number"),
        (dict(mem_grid=0), "mem_grid must be a positive integer"),
        (dict(unit_upload=[1], upload_budget=1, upload_grid=1.5), "upload_grid must be a positive integer"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, message: str) -> None:
    case = dict(values=[1.0], path_mem=[1], unit_mem=[1], fixed_mem=1, mem_budget=100) | kwargs
    with pytest.raises(ValueError, match=message):
        solve_assignment(**case)


def test_memory_of() -> None:
    assert memory_of([], [5, 3], [1, 2], 7) == 7
    assert memory_of([1], [5, 3], [1, 2], 7) == 12
    assert memory_of((1, 0), [5, 3], [1, 2], 7) == 15
    with pytest.raises(ValueError, match="distinct indices"):
        memory_of([2], [5, 3], [1, 2], 7)
    with pytest.raises(ValueError, match="distinct indices"):
        memory_of([0, 0], [5, 3], [1, 2], 7)
