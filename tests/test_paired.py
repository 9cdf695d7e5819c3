"""Paired-by-seed differences against an anchor method: hand-computed cases and bad study input."""

from __future__ import annotations

import pytest

from fedpilot.report.paired import paired_markdown, paired_rows

ACC = {
    ("20ng", "iid", "fedpilot"): {0: 0.40, 1: 0.30, 2: 0.35},
    ("20ng", "iid", "top-k"): {0: 0.42, 1: 0.31, 2: 0.34},
    ("20ng", "iid", "fedra"): {1: 0.20, 5: 0.9},          # shares seed 1 only
    ("20ng", "dir", "top-k"): {0: 0.5},                   # no anchor in this setting
}


def test_differences_are_taken_seed_by_seed_over_shared_seeds():
    rows = {row["method"]: row for row in paired_rows(ACC, "fedpilot")}
    assert set(rows) == {"top-k", "fedra"}
    assert rows["top-k"]["seeds"] == [0, 1, 2]
    assert rows["top-k"]["diffs"] == pytest.approx([0.02, 0.01, -0.01])
    assert rows["top-k"]["mean_diff"] == pytest.approx(0.02 / 3)
    assert rows["top-k"]["ahead"] == 2
    assert (rows["fedra"]["seeds"], rows["fedra"]["ahead"]) == ([1], 0)
    assert rows["fedra"]["diffs"] == pytest.approx([-0.10])


def test_markdown_shows_points_with_signs():
    table = paired_markdown(paired_rows(ACC, "fedpilot"), "fedpilot")
    assert table.startswith("Final accuracy minus fedpilot's, seed by seed.")
    assert "| 20ng | iid | top-k | 3 | +0.7 | +2.0 / +1.0 / -1.0 | 2/3 |" in table
    assert "| 20ng | iid | fedra | 1 | -10.0 | -10.0 | 0/1 |" in table
