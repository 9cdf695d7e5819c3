"""Studies: grid expansion, resumable running, tables from hand-written run directories, plots, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from fedpilot.cli import app
from fedpilot.config import ConfigError
from fedpilot.report import compare
from fedpilot.report.lr_choice import choose_lrs
from fedpilot.report.plots import memory_ratio
from fedpilot.report.records import RunRecorder, fresh_run_dir, summarize
from fedpilot.report.study import expand_study, load_study, select_runs

REPO = Path(__file__).resolve().parents[1]
QUIET = Console(quiet=True)


def write_study(tmp_path: Path, grid: dict, **extra) -> Path:
    """A study file in tmp_path whose runs and results stay in tmp_path."""
    study = {"name": "t", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
             "grid": grid, **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def write_run(run_dir: Path, config, accuracies: list[float], clients: list[dict], val: float | None = None) -> None:
    """A finished run directory with one evaluated round per accuracy, each with the same clients (and a
    validation accuracy `val` in every round when given)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = RunRecorder(run_dir, config)
    extra = {} if val is None else {"val_accuracy": val}
    rounds = [{"round": i, "clients": clients, "strategy": {}, "test_accuracy": acc, "test_loss": 1.0,
               "round_seconds": 1.0, "wall_seconds": float(i), **extra} for i, acc in enumerate(accuracies, 1)]
    for record in rounds:
        recorder.log_round(record)
    recorder.write_summary(summarize(rounds, 3.0))


def client(cid: int, units: int, estimated: int, budget: int, upload: int, **more) -> dict:
    """One client record as the local engine writes it."""
    return {"id": cid, "examples": 10, "units": list(range(units)), "budget_bytes": budget,
            "estimated_bytes": estimated, "upload_bytes": upload, "scores": None, "loss": 1.0, **more}


GRID = {
    "methods": ["fedavg-full", "fedpilot", {"name": "fedpilot", "label": "fp-uniform", "set": ["strategy.value=uniform"]}],
    "datasets": ["20newsgroups", "reuters-r8"],
    "partitions": [{"kind": "iid"}, {"kind": "pathological", "classes_per_client": 10}],
    "seeds": [0, 1],
}


def test_grid_expands_in_order_and_skips_pathological_k_above_the_label_count(tmp_path):
    study = load_study(write_study(tmp_path, GRID, overrides=["train.rounds=2"]))
    runs, skipped = expand_study(study)
    assert len(runs) == 18 and len(skipped) == 6
    assert [r.name for r in runs[:4]] == ["fedavg-full-20newsgroups-iid-s0", "fedpilot-20newsgroups-iid-s0",
                                          "fp-uniform-20newsgroups-iid-s0", "fedavg-full-20newsgroups-iid-s1"]
    assert {name for name, _ in skipped} == {f"{m}-reuters-r8-path-k10-s{s}"
                                             for m in ("fedavg-full", "fedpilot", "fp-uniform") for s in (0, 1)}
    assert "exceeds the 8 labels" in skipped[0][1]
    by_name = {r.name: r for r in runs}
    ablation = by_name["fp-uniform-20newsgroups-path-k10-s1"].config
    assert (ablation.strategy.name, ablation.strategy.value, ablation.seed) == ("fedpilot", "uniform", 1)
    assert ablation.partition.classes_per_client == 10 and ablation.train.rounds == 2
    assert by_name["fedpilot-reuters-r8-iid-s0"].config.strategy.value == "combined"
    assert runs[0].run_dir == tmp_path / "runs" / "t" / "fedavg-full-20newsgroups-iid-s0"
    assert runs[0].config.run_name() == runs[0].name
    assert len(select_runs(runs, study, ["fp-uniform"])) == 6
    with pytest.raises(ConfigError, match="unknown method labels"):
        select_runs(runs, study, ["nope"])


@pytest.mark.parametrize("grid, extra, message", [
    ({"methods": ["fedpilot"], "seed": [0]}, {}, "grid.seed: unknown key"),
    ({"methods": ["fedpilott"]}, {}, r"grid.methods\[0\].name: .*unknown strategy 'fedpilott'"),
    ({"methods": ["fedpilot", {"name": "fedpilot", "set": ["strategy.bonus=false"]}]}, {}, "labels \\['fedpilot'\\] repeat"),
    ({"methods": ["fedpilot"], "partitions": [{"kind": "iid", "alpha": 0.1}]}, {}, "alpha applies to kind dirichlet"),
    ({"methods": ["fedpilot"]}, {"overrides": ["train.rouds=2"]}, "train.rouds: unknown key"),
    ({"methods": ["fedpilot"]}, {"overrides": ["output.dir=x"]}, "output.\\* is set by the study"),
    ({"methods": ["fedpilot", "top-k"]}, {"paired_with": "fedra"}, "paired_with: 'fedra' is not a method label"),
])
def test_bad_study_files_are_config_errors_naming_the_field(tmp_path, grid, extra, message):
    with pytest.raises(ConfigError, match=message):
        expand_study(load_study(write_study(tmp_path, grid, **extra)))


def fake_study(tmp_path: Path):
    """Two methods x two seeds on one setting in the memory-only regime, with hand-written run directories."""
    study = load_study(write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"], "seeds": [0, 1]},
                                   paired_with="fedpilot", regime="memory-only"))
    runs, _ = expand_study(study)
    full = [client(0, 6, 90, 100, 40), client(1, 6, 90, 100, 40)]
    pilot = [client(0, 2, 60, 100, 10), client(1, 4, 90, 100, 20, saved_tensor_bytes=110), {"id": 2, "skipped": "budget"}]
    curves = {"fedavg-full-20newsgroups-iid-s0": [0.5, 0.8, 0.9], "fedavg-full-20newsgroups-iid-s1": [0.4, 0.7, 0.7],
              "fedpilot-20newsgroups-iid-s0": [0.6, 0.77, 0.8], "fedpilot-20newsgroups-iid-s1": [0.5, 0.7, 0.78]}
    for run in runs:
        write_run(run.run_dir, run.config, curves[run.name], full if run.method == "fedavg-full" else pilot)
    return study, runs


def test_final_accuracy_and_test_verdicts_use_the_whole_test_split_where_runs_evaluated_it(tmp_path):
    study, runs = fake_study(tmp_path)
    whole = {"fedavg-full-20newsgroups-iid-s0": 0.86, "fedavg-full-20newsgroups-iid-s1": 0.76,
             "fedpilot-20newsgroups-iid-s0": 0.81, "fedpilot-20newsgroups-iid-s1": 0.71}
    for run in runs:
        summary = json.loads((run.run_dir / "summary.json").read_text())
        (run.run_dir / "summary.json").write_text(json.dumps({**summary, "final_test_accuracy_full": whole[run.name]}))
    compare.write_results(study, runs, QUIET)
    rows = {row["method"]: row for row in csv.DictReader((tmp_path / "results/t/table.csv").open())}
    assert float(rows["fedavg-full"]["final_acc_mean"]) == pytest.approx(0.81)
    assert float(rows["fedpilot"]["final_acc_mean"]) == pytest.approx(0.76)
    assert float(rows["fedpilot"]["best_acc_mean"]) == pytest.approx(0.79)  # the per-round subset's best
    assert float(rows["fedpilot"]["rounds_to_95pct_ref"]) == 2.5  # subset curves against the subset reference 0.8
    paired = next(csv.DictReader((tmp_path / "results/t/paired.csv").open()))
    assert float(paired["mean_diff"]) == pytest.approx(0.05) and paired["verdict"] == "ahead"  # +5 points in both seeds
    assert compare.final_test_accuracy({"final_accuracy": None, "final_test_accuracy_full": 0.1}) is None
    assert compare.final_test_accuracy({"final_accuracy": 0.3, "final_test_accuracy_full": None}) == 0.3


def test_table_aggregates_seeds_and_rounds_to_95pct_of_the_reference(tmp_path):
    study, runs = fake_study(tmp_path)
    paths = compare.write_results(study, runs, QUIET)
    rows = {row["method"]: row for row in csv.DictReader((tmp_path / "results/t/table.csv").open())}
    full, pilot = rows["fedavg-full"], rows["fedpilot"]
    assert (pilot["dataset"], pilot["partition"], pilot["regime"], pilot["seeds"], pilot["lr"]) == (
        "20newsgroups", "iid", "memory-only", "2", "0.003")
    assert float(full["final_acc_mean"]) == pytest.approx(0.8) and float(full["final_acc_std"]) == pytest.approx(0.1)
    assert float(pilot["final_acc_mean"]) == pytest.approx(0.79) and float(pilot["final_acc_std"]) == pytest.approx(0.01)
    assert float(full["best_acc_mean"]) == pytest.approx(0.8)
    # reference = mean fedavg-full final accuracy 0.8 -> target 0.76: fedpilot reaches it in rounds 2 and 3
    assert float(pilot["rounds_to_95pct_ref"]) == 2.5
    assert full["rounds_to_95pct_ref"] == ""  # seed 1 peaks at 0.7
    assert float(pilot["units_per_client"]) == 2.0 and float(full["units_per_client"]) == 6.0
    assert float(pilot["peak_mem_over_budget"]) == pytest.approx(1.1)  # the counted bytes beat the estimate
    assert float(full["peak_mem_over_budget"]) == pytest.approx(0.9)
    assert float(pilot["upload_bytes_per_round"]) == 30 and float(full["upload_bytes_per_round"]) == 80
    assert float(pilot["seconds_per_run"]) == 3.0  # summary wall_seconds of each hand-written run
    names = {p.name for p in paths}
    assert {"table.md", "table.csv", "units.md", "accuracy-20newsgroups-iid.png", "budget-20newsgroups-iid.png"} <= names
    assert "| 20newsgroups | iid | fedpilot |" in (tmp_path / "results/t/units.md").read_text()
    # fedavg-full minus fedpilot: seed 0 0.9 - 0.8, seed 1 0.7 - 0.78
    # t(0.975, 1) = 12.7062, sd of the diffs 0.12728: half width 1.1436 around +0.01
    assert "| 20newsgroups | iid | fedavg-full | 2 | +1.0 | -113.4 .. +115.4 | tie | +10.0 / -8.0 | 1/2 |" in (
        tmp_path / "results/t/paired.md").read_text()
    assert (tmp_path / "results/t/paired.csv").read_text().splitlines()[1].startswith(
        "20newsgroups,iid,memory-only,fedavg-full,2,")
    assert (tmp_path / "results/t/pivot.md").read_text().splitlines() == [
        "| method | 20newsgroups iid |", "|---|---|",
        "| fedavg-full | 80.0 ± 10.0 (2) |", "| fedpilot | 79.0 ± 1.0 (2) |"]
    assert (tmp_path / "results/t/table.md").read_text().count("\n") == 4
    assert not (tmp_path / "results/t/pivot-val.md").exists()  # these runs have no validation split
    assert "| 20newsgroups | iid | memory-only | fedpilot | 2 | 0.003 | 0.7900 | 0.0100 | 0.7900 |  |  | 2.5 |" in (
        tmp_path / "results/t/table.md").read_text()


def test_validation_accuracy_gets_its_own_pivot_and_paired_section(tmp_path):
    path = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"], "seeds": [0, 1, 2]}, paired_with="fedpilot")
    study = load_study(path)
    runs, _ = expand_study(study)
    vals = {("fedavg-full", 0): 0.50, ("fedavg-full", 1): 0.60, ("fedavg-full", 2): 0.70,
            ("fedpilot", 0): 0.40, ("fedpilot", 1): 0.51, ("fedpilot", 2): 0.59}
    for run in runs:
        write_run(run.run_dir, run.config, [0.5], [client(0, 6, 90, 100, 40)], val=vals[(run.method, run.seed)])
    compare.write_results(study, runs, QUIET)
    assert "| fedavg-full | 60.0 ± 8.2 (3) |" in (tmp_path / "results/t/pivot-val.md").read_text()
    paired = (tmp_path / "results/t/paired.md").read_text()
    assert paired.startswith("Final validation accuracy minus fedpilot's")
    # diffs 0.10, 0.09, 0.11: mean 0.10, sd 0.01, half width 4.302653 * 0.01 / sqrt(3) = 0.0248
    assert "| 20newsgroups | iid | fedavg-full | 3 | +10.0 | +7.5 .. +12.5 | ahead |" in paired
    assert "| all |" not in paired  # one partition: nothing to pool
    assert (tmp_path / "results/t/paired-val.csv").read_text().splitlines()[1].endswith(",ahead")


def test_an_lr_grid_runs_each_method_per_rate_and_chooses_on_validation_only(tmp_path):
    path = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"], "seeds": [0, 1], "lrs": [0.001, 0.01]})
    study = load_study(path)
    runs, _ = expand_study(study)
    assert [r.name for r in runs[:4]] == ["fedavg-full-lr0.001-20newsgroups-iid-s0", "fedavg-full-lr0.01-20newsgroups-iid-s0",
                                          "fedpilot-lr0.001-20newsgroups-iid-s0", "fedpilot-lr0.01-20newsgroups-iid-s0"]
    assert [r.config.train.lr for r in runs[:4]] == [0.001, 0.01, 0.001, 0.01]
    assert study.reference_label() is None  # no plain fedavg-full run to measure rounds against
    # validation favours 0.01 for fedavg-full (0.6 vs 0.5) and 0.001 for fedpilot (0.55 vs 0.45);
    # the test accuracy says the opposite and must not matter
    val = {("fedavg-full-lr0.001", 0): 0.5, ("fedavg-full-lr0.001", 1): 0.5, ("fedavg-full-lr0.01", 0): 0.7,
           ("fedavg-full-lr0.01", 1): 0.5, ("fedpilot-lr0.001", 0): 0.6, ("fedpilot-lr0.001", 1): 0.5,
           ("fedpilot-lr0.01", 0): 0.4, ("fedpilot-lr0.01", 1): 0.5}
    for run in runs:
        test = 1.0 - val[(run.method, run.seed)]
        write_run(run.run_dir, run.config, [test], [client(0, 6, 90, 100, 40)], val=val[(run.method, run.seed)])
    compare.write_results(study, runs, QUIET)
    choice = json.loads((tmp_path / "results/t/lr.json").read_text())["methods"]
    assert (choice["fedavg-full"]["chosen"], choice["fedpilot"]["chosen"]) == (0.01, 0.001)
    assert choice["fedpilot"]["val_accuracy"] == {"0.001": pytest.approx(0.55), "0.01": pytest.approx(0.45)}
    assert "| fedpilot | 55.0 | 45.0 | 0.001 | `set: [train.lr=0.001]` |" in (tmp_path / "results/t/lr.md").read_text()


def test_an_lr_grid_with_one_rate_missing_says_so_and_ties_go_to_the_earlier_rate(tmp_path):
    study = load_study(write_study(tmp_path, {"methods": ["fedpilot"], "lrs": [0.003, 0.001, 0.01]}))
    rows = [{"method": "fedpilot-lr0.003", "lr": 0.003, "final_val_mean": 0.5},
            {"method": "fedpilot-lr0.001", "lr": 0.001, "final_val_mean": 0.5}]
    entry = choose_lrs(rows, study)["fedpilot"]
    assert (entry["chosen"], entry["complete"]) == (0.003, False)
    uneven = [*rows, {"method": "fedpilot-lr0.01", "lr": 0.01, "final_val_mean": 0.4, "seeds": 2}]
    assert choose_lrs(uneven, study)["fedpilot"]["complete"] is False  # 0.01 seen on more runs than the others
    assert choose_lrs([{**r, "seeds": 2} for r in uneven], study)["fedpilot"]["complete"] is True


@pytest.mark.parametrize("lrs", [[0.01, 0.01], [0.0, 0.01], [-1e-3], [0.0012345671, 0.0012345674]])
def test_bad_lr_grids_are_refused(tmp_path, lrs):
    with pytest.raises(ConfigError, match="lrs"):
        load_study(write_study(tmp_path, {"methods": ["fedpilot"], "lrs": lrs}))


def test_a_method_with_its_own_rate_in_an_lr_grid_is_refused(tmp_path):
    grid = {"methods": [{"name": "fedpilot", "set": ["train.lr=0.5"]}], "lrs": [0.01]}
    with pytest.raises(ConfigError, match=r"methods \['fedpilot'\] set train.lr themselves"):
        load_study(write_study(tmp_path, grid))


def test_the_reference_is_the_method_labelled_fedavg_full_even_with_its_own_rate(tmp_path):
    grid = {"methods": [{"name": "fedavg-full", "label": "centralized", "set": ["clients.num_clients=1"]},
                        {"name": "fedavg-full", "set": ["train.lr=0.01"]}, "fedpilot"]}
    assert load_study(write_study(tmp_path, grid)).reference_label() == "fedavg-full"
    assert load_study(write_study(tmp_path, {"methods": ["fedpilot"]})).reference_label() is None


def test_no_reference_leaves_rounds_to_95pct_empty(tmp_path):
    study, runs = fake_study(tmp_path)
    rows = compare.table_rows(compare.read_results(runs[1::2]), study.reference_label())
    assert [row["rounds_to_95pct_ref"] for row in rows] == [None]


def fake_runs(monkeypatch) -> list[Path]:
    """Replace compare's run_local by one that writes a finished run at once; the list of run dirs it made."""
    calls = []

    def fake_run_local(config, console):
        run_dir = fresh_run_dir(config.output.dir, config.run_name())
        calls.append(run_dir)
        write_run(run_dir, config, [0.6], [client(0, 3, 50, 100, 20)])
        return run_dir, json.loads((run_dir / "summary.json").read_text())

    monkeypatch.setattr(compare, "run_local", fake_run_local)
    return calls


def test_compare_resumes_finished_runs_and_reruns_interrupted_ones_in_place(tmp_path, monkeypatch):
    path = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"]})
    runs, _ = expand_study(load_study(path))
    write_run(runs[0].run_dir, runs[0].config, [0.5], [client(0, 6, 90, 100, 40)])
    runs[1].run_dir.mkdir(parents=True)
    (runs[1].run_dir / "metrics.jsonl").write_text("")  # interrupted before summary.json
    calls = fake_runs(monkeypatch)
    compare.run_compare(path, [], QUIET)
    assert calls == [runs[1].run_dir]
    compare.run_compare(path, [], QUIET)
    assert len(calls) == 1
    assert compare.finished_note(runs[0]) == "finished earlier; skipped"
    (runs[0].run_dir / "config.yaml").write_text("changed")
    assert "differs from the study's" in compare.finished_note(runs[0])
    rows = list(csv.DictReader((tmp_path / "results/t/table.csv").open()))
    assert [(r["method"], r["final_acc_mean"]) for r in rows] == [("fedavg-full", "0.5"), ("fedpilot", "0.6")]


def test_kept_records_carry_a_study_to_another_machine(tmp_path, monkeypatch):
    path = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"]}, records=True)
    runs, _ = expand_study(load_study(path))
    calls = []

    def fake_run_local(config, console):
        run_dir = Path(config.output.dir) / config.output.name
        calls.append(run_dir.name)
        write_run(run_dir, config, [0.6], [client(0, 3, 50, 100, 20)])
        (run_dir / "checkpoint").mkdir()  # weights stay out of the record
        return run_dir, json.loads((run_dir / "summary.json").read_text())

    monkeypatch.setattr(compare, "run_local", fake_run_local)
    compare.run_compare(path, ["fedavg-full"], QUIET)
    kept = tmp_path / "results/t/runs" / runs[0].name
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "metrics.jsonl.gz", "summary.json"]
    metrics = (runs[0].run_dir / "metrics.jsonl").read_text()
    assert (kept / "metrics.jsonl.gz").read_bytes()[4:8] == bytes(4)  # no timestamp: saved again, the same bytes
    shutil.rmtree(tmp_path / "runs")  # a fresh machine: only the committed results
    runs[1].run_dir.mkdir(parents=True)  # and an interrupted directory of the other method, no round done
    compare.run_compare(path, ["fedpilot"], QUIET)
    assert calls == [runs[0].name, runs[1].name]  # the kept run is not run again
    assert (runs[0].run_dir / "metrics.jsonl").read_text() == metrics  # unpacked as it was
    assert (runs[0].run_dir / "summary.json").is_file() and (tmp_path / "results/t/runs" / runs[1].name).is_dir()
    rows = list(csv.DictReader((tmp_path / "results/t/table.csv").open()))
    assert [r["method"] for r in rows] == ["fedavg-full", "fedpilot"]  # --only leaves the other in the tables
    # a record made with another config is not put back: its run runs again and replaces the record
    shutil.rmtree(tmp_path / "runs")
    (kept / "config.yaml").write_text("seed: 99\n")
    (kept / "extra.txt").write_text("stale")
    compare.run_compare(path, [], QUIET)
    assert calls[2:] == [runs[0].name]
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "metrics.jsonl.gz", "summary.json"]
    assert (kept / "config.yaml").read_text() == (runs[0].run_dir / "config.yaml").read_text()
    assert not list((tmp_path / "results/t/runs").glob(".*"))  # no partial copy left


def test_jobs_below_one_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        compare.run_study([], QUIET, jobs=0)


def test_jobs_default_to_one_per_core_on_cpu_and_never_exceed_the_runs_left(tmp_path, monkeypatch):
    path = write_study(tmp_path, {"methods": ["fedavg-full", {"name": "fedpilot", "set": ["train.device=cuda"]}]})
    runs, _ = expand_study(load_study(path))
    monkeypatch.setattr(compare, "usable_cores", lambda: 4)
    assert compare.auto_jobs(runs[:1]) == 4 and compare.auto_jobs(runs) == 1 and compare.auto_jobs([]) == 4
    assert [compare.torch_device_type(d) for d in ("cpu", "cpu:0", "cuda:1")] == ["cpu", "cpu", "cuda"]
    parallel = []
    monkeypatch.setattr(compare, "run_parallel", lambda pending, console, jobs, records: parallel.append(jobs))
    cpu_runs = [runs[0], replace(runs[0], seed=1)]
    assert compare.run_study(cpu_runs, QUIET, jobs=None) == 2 and parallel == [2]  # 4 cores, 2 runs: 2 jobs
    seen = []
    monkeypatch.setattr(compare, "run_study", lambda runs, console, jobs, records: seen.append(jobs))
    assert CliRunner().invoke(app, ["compare", "--study", str(path)]).exit_code == 0
    assert CliRunner().invoke(app, ["compare", "--study", str(path), "--jobs", "3"]).exit_code == 0
    assert seen == [None, 3]
    monkeypatch.undo()
    calls = fake_runs(monkeypatch)
    assert compare.run_study(runs[:1], QUIET, jobs=2) == 1  # one run left: run here, not in a worker
    assert calls == [runs[0].run_dir]


def test_report_only_tabulates_finished_runs_and_runs_nothing(tmp_path, monkeypatch):
    path = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"]})
    runs, _ = expand_study(load_study(path))
    write_run(runs[0].run_dir, runs[0].config, [0.5], [client(0, 6, 90, 100, 40)])

    def no_run(config, console):
        raise AssertionError("--report-only must not start a run")

    monkeypatch.setattr(compare, "run_local", no_run)
    result = CliRunner().invoke(app, ["compare", "--study", str(path), "--report-only"])
    assert result.exit_code == 0, result.output
    assert not runs[1].run_dir.exists()
    rows = list(csv.DictReader((tmp_path / "results/t/table.csv").open()))
    assert [(r["method"], r["final_acc_mean"]) for r in rows] == [("fedavg-full", "0.5")]


def test_plot_command_draws_runs_and_rejects_non_run_dirs(tmp_path):
    _, runs = fake_study(tmp_path)
    out = tmp_path / "plots" / "acc.png"
    result = CliRunner().invoke(app, ["plot", str(runs[0].run_dir), str(runs[1].run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(app, ["plot", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "(no metrics.jsonl or kept" in " ".join(result.output.split())


def test_compare_command_reports_a_bad_study_with_exit_code_2(tmp_path):
    path = write_study(tmp_path, {"methods": ["fedpilot"], "sedes": [0]})
    result = CliRunner().invoke(app, ["compare", "--study", str(path)])
    assert result.exit_code == 2 and "grid.sedes: unknown key" in result.output


@pytest.mark.slow
def test_tiny_real_comparison_end_to_end_two_runs_at_once(tmp_path):
    overrides = ["train.rounds=1", "train.local_steps=2", "data.max_train_examples=300", "eval.max_examples=100",
                 "eval.final_full=false", "model.max_length=48"]
    path = write_study(tmp_path, {"methods": ["fedavg-full", "fedpilot"]}, base=str(REPO / "configs/hetero.yaml"),
                       overrides=overrides)
    console = Console(record=True, width=200)
    compare.run_compare(path, [], console, jobs=2)
    assert "2 runs, 2 at a time" in console.export_text()
    rows = list(csv.DictReader((tmp_path / "results/t/table.csv").open()))
    assert [r["method"] for r in rows] == ["fedavg-full", "fedpilot"]
    assert all(0 <= float(r["final_acc_mean"]) <= 1 and r["seeds"] == "1" for r in rows)
    assert float(rows[0]["units_per_client"]) == 6 and float(rows[1]["units_per_client"]) < 6
    assert (tmp_path / "results/t/accuracy-20newsgroups-iid.png").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "configs/studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_studies_expand_to_valid_runs(path):
    study = load_study(path)
    runs, skipped = expand_study(study)
    assert runs and not skipped
    assert len({run.name for run in runs}) == len(runs)


def test_memory_over_budget_reads_the_counted_bytes_then_the_old_key_then_the_estimate():
    assert memory_ratio(client(0, 1, 80, 100, 1, saved_tensor_bytes=90)) == pytest.approx(0.9)
    assert memory_ratio(client(0, 1, 80, 100, 1, measured_bytes=110)) == pytest.approx(1.1)  # records before the rename
    assert memory_ratio(client(0, 1, 80, 100, 1)) == pytest.approx(0.8)
    assert memory_ratio({"id": 0, "skipped": "budget"}) is None
