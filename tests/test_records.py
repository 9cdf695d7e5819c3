"""Run summaries computed from round records: accuracy, unit coverage, IG-Score cost; reading kept records."""

from __future__ import annotations

import json

import pytest

from fedpilot.report.plots import RunDirError, plot_runs
from fedpilot.report.records import ig_cost_fraction, read_rounds, summarize, unit_coverage
from fedpilot.report.run_records import save_record

ROUNDS = [
    {"round": 1, "test_accuracy": 0.5, "test_loss": 1.0, "clients": [
        {"id": 0, "units": [1, 2], "loss": 1.0, "seconds": 9.0, "score_seconds": 1.0},
        {"id": 1, "units": [2], "loss": 1.0, "seconds": 3.0},
        {"id": 2, "units": [0, 1, 2], "failed": "RuntimeError: boom"}]},
    {"round": 2, "test_accuracy": 0.7, "test_loss": 0.8, "clients": [
        {"id": 0, "units": [2], "loss": 0.9, "seconds": 4.0, "score_seconds": 1.0},
        {"id": 1, "skipped": "budget"}]},
    {"round": 3, "test_accuracy": 0.6, "test_loss": 0.9, "clients": []},
]


def test_unit_coverage_counts_clients_per_round_ignoring_failures():
    assert unit_coverage(ROUNDS) == {"0": {"0": 3}, "1": {"1": 1, "0": 2}, "2": {"2": 1, "1": 1, "0": 1}}


def test_ig_cost_fraction_over_scored_clients():
    assert ig_cost_fraction(ROUNDS) == pytest.approx(2.0 / 15.0)
    assert ig_cost_fraction([{"clients": [{"seconds": 1.0}]}]) is None


def test_summary_final_and_best():
    summary = summarize(ROUNDS, 12.0)
    assert (summary["final_accuracy"], summary["best_accuracy"], summary["best_round"]) == (0.6, 0.7, 2)
    assert summary["rounds"] == 3 and summary["wall_seconds"] == 12.0


def test_summary_has_validation_accuracy_when_the_rounds_do():
    rounds = [{**r, "val_accuracy": v} for r, v in zip(ROUNDS, (0.4, 0.65, 0.62))]
    summary = summarize(rounds, 1.0)
    assert (summary["final_val_accuracy"], summary["best_val_accuracy"]) == (0.62, 0.65)
    assert "final_val_accuracy" not in summarize(ROUNDS, 1.0) and summarize(ROUNDS, 1.0)["trained_client_rounds"] == 3


def test_a_run_where_no_client_trained_reports_no_accuracy():
    untrained = [{"round": 1, "test_accuracy": 0.05, "test_loss": 3.0, "val_accuracy": 0.06,
                  "clients": [{"id": 0, "skipped": "budget"}]}]
    summary = summarize(untrained, 1.0)
    assert summary["final_accuracy"] is None and summary["best_accuracy"] is None
    assert summary["final_val_accuracy"] is None and summary["untrained_accuracy"] == 0.05
    assert "no client trained" in summary["note"]


def test_read_rounds_skips_a_torn_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 1}) + "\n" + '{"round": 2, "cli')
    assert read_rounds(tmp_path) == [{"round": 1}]


def test_a_kept_record_reads_and_plots_like_its_run(tmp_path):
    run, kept = tmp_path / "runs" / "r-s0", tmp_path / "results" / "runs"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROUNDS))
    (run / "summary.json").write_text("{}")
    record = save_record(run, kept)
    assert not (record / "metrics.jsonl").exists() and read_rounds(record) == ROUNDS == read_rounds(run)
    assert plot_runs([record], tmp_path / "acc.png").stat().st_size > 0
    with pytest.raises(RunDirError, match="no metrics.jsonl or kept metrics.jsonl.gz"):
        plot_runs([tmp_path], tmp_path / "none.png")
