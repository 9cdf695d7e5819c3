"""Unit-use table: hand-counted shares per budget group, and bad input."""

from __future__ import annotations

import pytest

from fedpilot.report.unit_use import by_budget, unit_count, unit_shares, unit_use_markdown, unit_use_rows

MiB = 2**20


def rec(units: list[int], budget: int | None) -> dict:
    """A client record with only the fields the table reads."""
    return {"units": units, "budget_bytes": budget}


def test_shares_count_each_unit_over_the_groups_client_rounds():
    records = [rec([4, 5], 100 * MiB), rec([5], 100 * MiB), rec([], 100 * MiB), rec([0, 5], 100 * MiB)]
    assert unit_shares(records, 6) == [0.25, 0.0, 0.0, 0.0, 0.25, 0.75]
    assert unit_count(records) == 6
    assert unit_count([rec([], 1)]) == 0
    with pytest.raises(ValueError, match="at least one"):
        unit_shares([], 6)


def test_records_group_by_budget_smallest_first_and_missing_budget_last():
    groups = by_budget([rec([1], 300), rec([2], None), rec([3], 100), rec([4], 300)])
    assert list(groups) == [100, 300, None]
    assert [r["units"] for r in groups[300]] == [[1], [4]]


def test_rows_pool_seeds_and_the_markdown_shows_percent_per_budget():
    seed0 = [{"clients": [rec([2, 3], 120 * MiB), rec([0, 1, 2, 3], 160 * MiB)]}]
    seed1 = [{"clients": [rec([3], 120 * MiB)]}, {"clients": [rec([], 120 * MiB)]}]
    rows = unit_use_rows({("20newsgroups", "iid", "top-k"): [seed0, seed1]})
    assert [(r["budget"], r["client_rounds"]) for r in rows] == [(120 * MiB, 3), (160 * MiB, 1)]
    assert rows[0]["shares"] == pytest.approx([0, 0, 1 / 3, 2 / 3])
    table = unit_use_markdown(rows)
    assert table.splitlines()[0] == "| dataset | partition | method | budget | client_rounds | unit 0 | unit 1 | unit 2 | unit 3 |"
    assert "| 20newsgroups | iid | top-k | 120.0 MiB | 3 | 0% | 0% | 33% | 67% |" in table
    assert "| 20newsgroups | iid | top-k | 160.0 MiB | 1 | 100% | 100% | 100% | 100% |" in table


def test_mean_ranks_show_where_the_records_give_them():
    records = [{**rec([4, 5], MiB), "ranks": [2, 8]}, {**rec([5], MiB), "ranks": [4]}, rec([5], MiB)]
    rows = unit_use_rows({("20ng", "iid", "fedpilot"): [[{"clients": records}]]})
    assert rows[0]["ranks"] == [None, None, None, None, 2.0, 6.0]  # unit 5: ranks 8 and 4; the third gave none
    assert "| 20ng | iid | fedpilot | 1.0 MiB | 3 | 0% | 0% | 0% | 0% | 33% r2.0 | 100% r6.0 |" in unit_use_markdown(rows)
