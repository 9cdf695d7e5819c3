"""Exact (unit, rank option) assignment (fedpilot.assign.knapsack) against brute force over all choices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import ceil_div, option_cells
from fedpilot.assign.knapsack import RankAssignment, solve_assignment, solve_rank_assignment

MiB = 2**20
INSTANCES_PER_CASE = 300


def random_instance(rng: np.random.Generator, upload: bool, integer_values: bool, coarse: bool) -> dict:
    """One solve_rank_assignment keyword set: n <= 6 units, m <= 3 options, grid 1 unless `coarse`."""
    n, m = int(rng.integers(0, 7)), int(rng.integers(1, 4))
    shape = (n, m)
    values = rng.integers(0, 4, shape).astype(float) if integer_values else rng.random(shape)
    values *= rng.random(shape) < 0.9
    path = np.sort(rng.integers(0, 60, n))[::-1]
    unit = rng.integers(0, 25, shape) * (rng.random(shape) < 0.9)
    up = rng.integers(0, 20, shape)
    if rng.random() < 0.5:
        unit, up = np.sort(unit, axis=1), np.sort(up, axis=1)
    fixed = int(rng.integers(0, 30))
    most = fixed + (int(path.max()) + int(unit.max(axis=1).sum()) if n else 0)
    case = dict(values=values, path_mem=path, unit_mem=unit, fixed_mem=fixed,
                mem_budget=int(rng.integers(fixed, most + 2)), mem_grid=int(rng.integers(2, 9)) if coarse else 1)
    if upload:
        case.update(unit_upload=up, upload_budget=int(rng.integers(0, int(up.max(axis=1, initial=0).sum()) + 2)),
                    upload_grid=int(rng.integers(2, 5)) if coarse else 1)
    return case


def all_choices(n: int, m: int) -> np.ndarray:
    """Every assignment as a row of options per unit, -1 for a skipped unit: shape ((m + 1)^n, n)."""
    rows = list(itertools.product(range(-1, m), repeat=n))
    return np.array(rows, dtype=np.int64).reshape(len(rows), n)


def brute_force(case: dict, down: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Choices feasible with costs rounded up (down: as the module docstring's pass 1 rounds them), with their
    value, memory cells and upload cells (empty set checked in bytes)."""
    values = np.asarray(case["values"], dtype=float)
    n, m = values.shape
    choices = all_choices(n, m)
    taken, option = choices >= 0, np.maximum(choices, 0)
    unit = np.asarray(case["unit_mem"], dtype=np.int64)
    cells = option_cells(unit, case["mem_grid"], values, down)
    base = option_cells(case["fixed_mem"] + np.asarray(case["path_mem"], dtype=np.int64)[:, None] + unit,
                        case["mem_grid"], values, down)
    rows, cols = np.arange(choices.shape[0]), np.arange(n)
    lowest = np.argmax(taken, axis=1) if n else np.zeros(rows.size, np.int64)
    lowest_option = option[rows, lowest] if n else lowest
    mem = np.where(taken, cells[cols, option], 0).sum(axis=1)
    if n:
        mem += base[lowest, lowest_option] - cells[lowest, lowest_option]
    empty = ~taken.any(axis=1)
    mem[empty] = case["fixed_mem"] // case["mem_grid"] if down else ceil_div(case["fixed_mem"], case["mem_grid"])
    fits = mem <= case["mem_budget"] // case["mem_grid"]
    fits[empty] = case["fixed_mem"] <= case["mem_budget"]
    up = np.zeros(rows.size, np.int64)
    if case.get("upload_budget") is not None:
        up = np.where(taken, option_cells(case["unit_upload"], case["upload_grid"], values, down)[cols, option],
                      0).sum(axis=1)
        fits &= up <= case["upload_budget"] // case["upload_grid"]
    value = np.where(taken, values[cols, option], 0.0).sum(axis=1)
    return choices[fits], value[fits], mem[fits], up[fits]


def tie_rule_winner(case: dict, down: bool = False) -> tuple[tuple[int, ...], tuple[int, ...], float]:
    """The tie rule's pick among brute-force choices (costs rounded up; down: rounded down): value, fewer memory
    cells, fewer upload cells, lexicographic."""
    choices, value, mem, up = brute_force(case, down)
    best = value == value.max()
    best &= mem == mem[best].min()
    best &= up == up[best].min()
    pairs = min(tuple((j, int(o)) for j, o in enumerate(row) if o >= 0) for row in choices[best])
    return tuple(j for j, _ in pairs), tuple(o for _, o in pairs), float(value.max())


def documented_answer(case: dict) -> tuple[tuple[int, ...], tuple[int, ...], float]:
    """The module docstring's answer: the pick on costs rounded down if it fits in bytes, else on costs rounded up."""
    optimistic = tie_rule_winner(case, down=True)
    in_bytes = brute_force({**case, "mem_grid": 1, "upload_grid": 1})[0]
    row = [-1] * in_bytes.shape[1]
    for j, o in zip(*optimistic[:2]):
        row[j] = o
    return optimistic if (in_bytes == row).all(axis=1).any() else tie_rule_winner(case)


def check_feasible(case: dict, got: RankAssignment) -> None:
    """The choice is sorted, one option per unit, within both real budgets, and its costs and value are its own."""
    units, options = list(got.units), list(got.options)
    values = np.asarray(case["values"], dtype=float)
    assert units == sorted(set(units)) and len(options) == len(units)
    assert all(0 <= o < values.shape[1] for o in options)
    unit = np.asarray(case["unit_mem"])
    mem = case["fixed_mem"] + (int(case["path_mem"][units[0]]) + int(unit[units, options].sum()) if units else 0)
    assert got.mem_bytes == mem <= case["mem_budget"]
    assert got.value == pytest.approx(float(values[units, options].sum()), rel=1e-12, abs=1e-12)
    if case.get("upload_budget") is not None:
        assert got.upload_bytes == int(np.asarray(case["unit_upload"])[units, options].sum()) <= case["upload_budget"]


def solve_all(seed: int, upload: bool, integer_values: bool, coarse: bool) -> list[tuple[dict, RankAssignment]]:
    """INSTANCES_PER_CASE random cases and their solutions, each checked feasible in true bytes."""
    rng = np.random.default_rng(seed)
    solved = []
    for _ in range(INSTANCES_PER_CASE):
        case = random_instance(rng, upload, integer_values, coarse)
        got = solve_rank_assignment(**case)
        check_feasible(case, got)
        solved.append((case, got))
    return solved


def assert_mixed(solved: list[tuple[dict, RankAssignment]]) -> None:
    """The random cases reach head-only answers, several units, and options other than 0."""
    assert sum(not got.units for _, got in solved) >= 10
    assert sum(len(got.units) >= 3 for _, got in solved) >= 10
    assert sum(any(o > 0 for o in got.options) for _, got in solved) >= 50


@pytest.mark.parametrize("upload", [False, True], ids=["memory", "memory+upload"])
def test_optimal_value_equals_brute_force(upload: bool) -> None:
    solved = solve_all(100 + upload, upload, integer_values=False, coarse=False)
    for case, got in solved:
        assert got.value == pytest.approx(brute_force(case)[1].max(), rel=1e-9, abs=1e-12)
    assert_mixed(solved)


@pytest.mark.parametrize("upload", [False, True], ids=["memory", "memory+upload"])
def test_ties_follow_the_documented_rule(upload: bool) -> None:
    solved = solve_all(200 + upload, upload, integer_values=True, coarse=False)
    for case, got in solved:
        assert (got.units, got.options, got.value) == tie_rule_winner(case)
    assert_mixed(solved)


@pytest.mark.parametrize("upload", [False, True], ids=["memory", "memory+upload"])
def test_coarse_grids_give_the_documented_answer_and_stay_feasible_in_bytes(upload: bool) -> None:
    solved = solve_all(300 + upload, upload, integer_values=True, coarse=True)
    for case, got in solved:
        assert (got.units, got.options, got.value) == documented_answer(case)
    assert sum(not got.units for _, got in solved) >= 10
    assert sum(got.value > tie_rule_winner(case)[2] for case, got in solved) >= 5  # better than rounding up alone


@pytest.mark.parametrize("upload", [False, True], ids=["memory", "memory+upload"])
def test_single_option_equals_solve_assignment(upload: bool) -> None:
    rng = np.random.default_rng(400 + upload)
    for _ in range(200):
        case = random_instance(rng, upload, integer_values=bool(rng.random() < 0.5), coarse=bool(rng.random() < 0.5))
        case = {key: (value[:, :1] if key in ("values", "unit_mem", "unit_upload") else value)
                for key, value in case.items()}
        got = solve_rank_assignment(**case)
        single = solve_assignment(**{key: (value[:, 0] if key in ("values", "unit_mem", "unit_upload") else value)
                                     for key, value in case.items()})
        assert got.options == (0,) * len(got.units)
        assert (got.units, got.value, got.mem_bytes, got.upload_bytes) == (
            single.units, single.value, single.mem_bytes, single.upload_bytes)


@pytest.mark.parametrize("n", [24, 48])
def test_unlimited_upload_matches_memory_only_on_large_models(n: int) -> None:
    rng = np.random.default_rng(n)
    ranks = np.array([0.25, 0.5, 1.0])
    for _ in range(10):
        values = rng.random((n, 1)) * np.sqrt(ranks)
        path = (25.5 * MiB * (n - np.arange(n))).astype(np.int64)
        unit = (1.56 * MiB * rng.uniform(0.5, 1.5, (n, 1)) * ranks).astype(np.int64)
        budget = int(rng.integers(300 * MiB, 1500 * MiB))
        alone = solve_rank_assignment(values, path, unit, 200 * MiB, budget)
        both = solve_rank_assignment(values, path, unit, 200 * MiB, budget, unit, 10**15)
        assert both == RankAssignment(alone.units, alone.options, alone.value, alone.mem_bytes, both.upload_bytes)


def test_upload_bound_client_covers_every_unit_at_a_lower_rank() -> None:
    # options r/4, r/2, r: value 1, 1.5, 2 per unit, upload 1, 2, 4 bytes; 4 bytes buy one unit at r or four at r/4.
    # At a single rank r the best is one unit (the top one, least memory).
    values = np.tile([1.0, 1.5, 2.0], (4, 1))
    upload = np.tile([1, 2, 4], (4, 1))
    unit_mem = np.tile([10, 20, 40], (4, 1))
    path = [400, 300, 200, 100]
    got = solve_rank_assignment(values, path, unit_mem, 50, 10**6, upload, 4, mem_grid=1, upload_grid=1)
    assert got == RankAssignment((0, 1, 2, 3), (0, 0, 0, 0), 4.0, 50 + 400 + 40, 4)
    single = solve_assignment(values[:, 2], path, unit_mem[:, 2], 50, 10**6, upload[:, 2], 4, mem_grid=1, upload_grid=1)
    assert (single.units, single.value) == ((3,), 2.0)


def test_memory_bound_client_trades_rank_for_units() -> None:
    # 30 spare bytes: one unit at full rank (value 2, 30 bytes) or two at half rank (1.5 each, 15 bytes)
    got = solve_rank_assignment([[1.5, 2.0], [1.5, 2.0]], [0, 0], [[15, 30], [15, 30]], 0, 30, mem_grid=1)
    assert (got.units, got.options, got.value, got.mem_bytes) == ((0, 1), (0, 0), 3.0, 30)


def test_equal_options_prefer_the_lower_one() -> None:
    got = solve_rank_assignment([[1.0, 1.0, 1.0]], [5], [[3, 3, 3]], 0, 100, [[2, 2, 2]], 10, mem_grid=1, upload_grid=1)
    assert got == RankAssignment((0,), (0,), 1.0, 8, 2)


def test_no_units_gives_head_only() -> None:
    empty = np.zeros((0, 3))
    assert solve_rank_assignment(empty, [], empty, 5, 5, empty, 0) == RankAssignment((), (), 0.0, 5, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(values=[1.0, 2.0]), r"values must be 2-D \(units x rank options\)"),
        (dict(values=np.zeros((1, 0))), "values must be 2-D .* with at least one option"),
        (dict(values=[[1.0, -1.0]]), "values must be finite and non-negative"),
        (dict(values=[[np.inf, 1.0]]), "values must be finite and non-negative"),
        (dict(path_mem=[[1, 1]]), r"path_mem must be 1-D with one entry per unit \(1\)"),
        (dict(path_mem=[1, 1]), r"path_mem must be 1-D with one entry per unit \(1\), got shape \(2,\)"),
        (dict(unit_mem=[1, 1]), r"unit_mem must be 2-D of shape \(1, 2\)"),
        (dict(unit_mem=[[1, 1, 1]]), r"unit_mem must be 2-D of shape \(1, 2\) .*got shape \(1, 3\)"),
        (dict(unit_mem=[[1, -1]]), "unit_mem must be finite and non-negative"),
        (dict(unit_upload=[[1]], upload_budget=5), r"unit_upload must be 2-D of shape \(1, 2\)"),
        (dict(unit_upload=[[1, np.nan]], upload_budget=5), "unit_upload must be finite and non-negative"),
        (dict(upload_budget=5), "upload_budget is set but unit_upload is None"),
        (dict(mem_budget=0), "at least 1 bytes are needed"),
        (dict(mem_grid=-1), "mem_grid must be a positive integer"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, message: str) -> None:
    case = dict(values=[[1.0, 2.0]], path_mem=[1], unit_mem=[[1, 2]], fixed_mem=1, mem_budget=100) | kwargs
    with pytest.raises(ValueError, match=message):
        solve_rank_assignment(**case)
