"""`fedpilot collect`: several studies' tables and verdicts in one folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fedpilot.cli import app
from fedpilot.report import compare
from fedpilot.report.collect import verdict_cell, verdict_markdown
from fedpilot.report.study import expand_study, load_study
from test_compare import client, write_run, write_study

QUIET = Console(quiet=True)


def finished_study(tmp_path: Path, name: str, regime: str, pilot_acc: list[float]) -> Path:
    """A study of fedavg-full and fedpilot over two seeds with hand-written runs; fedavg-full at 0.8 / 0.7."""
    path = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"], "seeds": [0, 1]},
                       paired_with="fedpilot", regime=regime)
    renamed = path.with_name(f"{name}.yaml")
    renamed.write_text(path.read_text().replace("name: t", f"name: {name}"))
    study = load_study(renamed)
    runs, _ = expand_study(study)
    finals = {("fedavg-full", 0): 0.8, ("fedavg-full", 1): 0.7, ("fedpilot", 0): pilot_acc[0], ("fedpilot", 1): pilot_acc[1]}
    for run in runs:
        write_run(run.run_dir, run.config, [finals[(run.method, run.seed)]], [client(0, 6, 90, 100, 40)])
    compare.write_results(study, runs, QUIET)
    return renamed


def test_collect_concatenates_tables_and_grids_the_verdicts(tmp_path):
    memory = finished_study(tmp_path, "mem", "memory-only", [0.7, 0.6])      # fedavg-full +10 / +10 -> interval 0 wide
    upload = finished_study(tmp_path, "upl", "memory+upload", [0.85, 0.65])   # -5 / +5 -> tie
    out = tmp_path / "converged"
    result = CliRunner().invoke(app, ["collect", "--study", str(memory), "--study", str(upload), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["regime"], r["method"]) for r in table] == [("memory-only", "fedavg-full"), ("memory-only", "fedpilot"),
                                                           ("memory+upload", "fedavg-full"), ("memory+upload", "fedpilot")]
    assert float(table[1]["final_acc_mean"]) == pytest.approx(0.65)
    paired = list(csv.DictReader((out / "paired.csv").open()))
    assert [(r["regime"], r["verdict"]) for r in paired] == [("memory-only", "ahead"), ("memory+upload", "tie")]
    verdicts = (out / "verdicts.md").read_text()
    assert "| 20newsgroups | iid | memory-only | +10.0 [+10.0, +10.0] ahead |" in verdicts
    assert "| 20newsgroups | iid | memory+upload | +0.0 [-63.5, +63.5] tie |" in verdicts  # t(0.975,1)*5 pts
    assert "| 20newsgroups | iid | memory-only | fedpilot | 2 | 0.003 | 65.0 | 5.0 |" in (out / "table.md").read_text()


def test_collect_without_results_names_the_command_that_makes_them(tmp_path):
    path = write_study(tmp_path, {"methods": ["fedpilot"]})
    result = CliRunner().invoke(app, ["collect", "--study", str(path), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    said = result.output.replace("\n", "")
    assert f"table.csv does not exist: run `fedpilot compare --study {path} --report-only` first" in said


def test_a_missing_interval_shows_as_a_question_mark_and_absent_methods_as_empty_cells():
    rows = [{"dataset": "d", "partition": "iid", "regime": "r", "method": "a", "mean_diff": "-0.02", "ci_low": "",
             "ci_high": "", "verdict": "n/a"},
            {"dataset": "d", "partition": "dir", "regime": "r", "method": "b", "mean_diff": "0.01", "ci_low": "0.005",
             "ci_high": "0.015", "verdict": "ahead"}]
    assert verdict_cell(rows[0]) == "-2.0 [?, ?] n/a"
    text = verdict_markdown(rows, "fedpilot")
    assert "| d | iid | r | -2.0 [?, ?] n/a |  |" in text and "| d | dir | r |  | +1.0 [+0.5, +1.5] ahead |" in text


def test_studies_paired_with_different_methods_are_refused(tmp_path):
    first = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"]}, paired_with="fedpilot")
    second = first.with_name("second.yaml")
    second.write_text(first.read_text().replace("paired_with: fedpilot", "paired_with: fedavg-full")
                      .replace("name: t", "name: t2"))
    result = CliRunner().invoke(app, ["collect", "--study", str(first), "--study", str(second)])
    assert result.exit_code == 2 and "different methods" in result.output


def test_two_studies_with_one_results_folder_are_refused(tmp_path):
    path = write_study(tmp_path, {"methods": ["fedpilot"]})
    twin = path.with_name("twin.yaml")
    twin.write_text(path.read_text())
    result = CliRunner().invoke(app, ["collect", "--study", str(path), "--study", str(twin)])
    assert result.exit_code == 2 and "share their results folder" in result.output
