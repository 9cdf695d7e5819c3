"""What every run ends with besides its records: the whole-test-split evaluation, figures, TensorBoard, tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import csv_with_empty_rows, headless_bert, tiny_run_config
from fedpilot.data.sources import load_text_data
from fedpilot.engines.local import run_local
from fedpilot.report.records import read_rounds
from fedpilot.report.run_plots import plot_units, unit_grid
from fedpilot.report.tables import round_table, summary_table
from fedpilot.report.tensorboard import round_scalars


def test_the_final_model_is_evaluated_on_the_whole_test_split(finished_run):
    _, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    labels = np.asarray(load_text_data("20newsgroups").test["label"])
    assert summary["round_test_examples"] == 64 and summary["test_examples_full"] == len(labels) == 7528
    assert summary["test_majority_rate"] == pytest.approx(np.bincount(labels).max() / len(labels))
    assert 0 <= summary["final_test_accuracy_full"] <= 1 and summary["final_test_loss_full"] > 0


def test_a_run_ends_with_its_accuracy_and_unit_figures(finished_run):
    _, run_dir = finished_run
    assert (run_dir / "accuracy.png").stat().st_size > 10_000
    assert (run_dir / "units.png").stat().st_size > 5_000


def test_tensorboard_event_file_holds_every_rounds_scalars(finished_run):
    _, run_dir = finished_run
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    rounds = read_rounds(run_dir)
    tags = set(events.Tags()["scalars"])
    assert {"accuracy/test", "accuracy/val", "loss/test", "loss/clients_mean", "loss/client_0", "coverage/unit_1",
            "bytes/up", "bytes/down"} <= tags
    test = events.Scalars("accuracy/test")
    assert [e.step for e in test] == [1, 2]
    assert [e.value for e in test] == pytest.approx([r["test_accuracy"] for r in rounds], abs=1e-6)
    assert [e.value for e in events.Scalars("coverage/unit_1")] == [3.0, 3.0]  # fedavg-full: every client, every unit
    assert events.Scalars("bytes/up")[0].value == sum(c["sent_bytes"] for c in rounds[0]["clients"])


def client(id_: int, units: list[int], budget: int | None, loss: float | None = 1.0) -> dict:
    """A client record as the engine writes it (a skipped one has no loss)."""
    return {"id": id_, "units": units, "budget_bytes": budget, "sent_bytes": 10 * len(units), "download_bytes": 100,
            **({"loss": loss} if loss is not None else {})}


def test_round_scalars_count_coverage_of_trained_clients_only():
    record = {"round": 3, "test_accuracy": 0.5, "test_loss": 2.0,
              "clients": [client(0, [0, 1], 1), client(1, [1], 1, loss=3.0), client(2, [0], 1, loss=None)]}
    scalars = round_scalars(record, units=3)
    assert scalars["coverage/unit_0"] == 1 and scalars["coverage/unit_1"] == 2 and scalars["coverage/unit_2"] == 0
    assert scalars["loss/clients_mean"] == 2.0 and scalars["bytes/up"] == 40 and scalars["bytes/down"] == 300
    assert "accuracy/val" not in scalars


def test_unit_grid_is_the_share_of_a_groups_clients_per_round(tmp_path):
    grid = unit_grid({1: [client(0, [0], 1), client(1, [0, 1], 1)], 2: [client(0, [1], 1)]}, units=2)
    assert grid.tolist() == [[1.0, 0.0], [0.5, 1.0]]
    rounds = [{"round": 1, "clients": [client(0, [0], None)]}]
    assert plot_units(rounds, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_end_of_run_tables_show_percentages_with_one_decimal(finished_run):
    _, run_dir = finished_run
    summary = {"final_accuracy": 0.59312, "best_accuracy": 0.6, "best_round": 9, "wall_seconds": 12.0,
               "round_test_examples": 1000, "final_test_accuracy_full": 0.581, "test_examples_full": 7528,
               "test_majority_rate": 0.0531}
    console = Console(record=True, width=200)
    console.print(summary_table(summary))
    console.print(round_table(read_rounds(run_dir)))
    text = console.export_text()
    assert "59.3% (n=1000)" in text and "58.1% (n=7528)" in text and "60.0% (9)" in text and "5.3%" in text
    accuracy = read_rounds(run_dir)[0]["test_accuracy"]
    assert f"{accuracy:.1%}" in text


def test_rows_dropped_for_an_empty_text_or_label_are_told_on_the_console_and_kept_in_the_summary(tmp_path):
    csv_with_empty_rows(tmp_path / "reviews.csv")
    headless_bert(tmp_path / "base")
    config = tiny_run_config(tmp_path / "base", tmp_path / "runs", "csv", f"data.name={tmp_path / 'reviews.csv'}",
                             "train.rounds=1", "train.local_steps=1", "output.tensorboard=false")
    console = Console(record=True, width=200)
    run_dir, summary = run_local(config, console)
    line = "reviews.csv (all): dropped 4 of 40 rows: 3 with an empty text, 2 with an empty label"
    assert f"data: {line}" in console.export_text()
    recorded = json.loads((run_dir / "summary.json").read_text())["dropped_rows"]
    assert recorded == summary["dropped_rows"] == [{"file": "reviews.csv", "split": "all", "rows": 40,
                                                    "empty_text": 3, "empty_label": 2, "dropped": 4}]
