"""Paired-by-seed differences against an anchor method: hand-computed cases and bad study input."""

from __future__ import annotations

import pytest

from fedpilot.report.paired import paired_csv, paired_markdown, paired_rows, pooled_rows, t_interval, verdict

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


def test_t_interval_against_hand_computed_cases():
    # diffs 0.02, 0.01, -0.01: mean 0.00667, sd 0.015275, sem 0.0088192, t(0.975, 2) = 4.302653
    low, high = t_interval([0.02, 0.01, -0.01])
    assert (low, high) == pytest.approx((-0.031279, 0.044612), abs=1e-6)
    assert verdict(low, high) == "tie"
    # diffs 0.02, 0.03, 0.025: mean 0.025, sd 0.005, half width 4.302653 * 0.0028868 = 0.012421
    low, high = t_interval([0.02, 0.03, 0.025])
    assert (low, high) == pytest.approx((0.012579, 0.037421), abs=1e-6)
    assert verdict(low, high) == "ahead"
    assert verdict(*t_interval([-0.02, -0.03, -0.025])) == "behind"
    assert t_interval([0.5]) == (None, None) and verdict(None, None) == "n/a"  # one seed decides nothing


def test_markdown_shows_points_interval_and_verdict():
    table = paired_markdown(paired_rows(ACC, "fedpilot"), "fedpilot")
    assert table.startswith("Final test accuracy minus fedpilot's, seed by seed;")
    assert "| 20ng | iid | top-k | 3 | +0.7 | -3.1 .. +4.5 | tie | +2.0 / +1.0 / -1.0 | 2/3 |" in table
    assert "| 20ng | iid | fedra | 1 | -10.0 | n/a .. n/a | n/a | -10.0 | 0/1 |" in table


def test_csv_has_interval_columns_and_empty_bounds_for_one_seed():
    lines = paired_csv(paired_rows(ACC, "fedpilot")).splitlines()
    assert lines[0] == "dataset,partition,regime,method,seeds,mean_diff,ci_low,ci_high,verdict"
    assert lines[2].startswith("20ng,iid,,fedra,1,") and lines[2].endswith(",,,n/a")
    labelled = paired_csv([{**row, "regime": "memory-only"} for row in paired_rows(ACC, "fedpilot")]).splitlines()
    assert labelled[2].startswith("20ng,iid,memory-only,fedra,1,")


def test_pooled_rows_join_every_partition_and_seed_of_a_dataset():
    accuracies = {**ACC, ("20ng", "dir", "fedpilot"): {0: 0.30, 1: 0.20}, ("20ng", "dir", "top-k"): {0: 0.33, 1: 0.22}}
    pooled = {row["method"]: row for row in pooled_rows(paired_rows(accuracies, "fedpilot"))}
    top = pooled["top-k"]
    assert top["partition"] == "all" and top["diffs"] == pytest.approx([0.02, 0.01, -0.01, 0.03, 0.02])
    assert (top["ci_low"], top["ci_high"]) == pytest.approx(t_interval([0.02, 0.01, -0.01, 0.03, 0.02]))
    assert top["ahead"] == 4 and len(top["seeds"]) == 5
    assert "fedra" not in pooled  # one partition only
