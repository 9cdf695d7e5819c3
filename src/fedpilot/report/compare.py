"""`fedpilot compare`: run a study's grid (resumably), then tabulate and plot it from the run directories.

A run directory holding `summary.json` is finished and never rerun; one without it was interrupted:
it resumes from its last checkpointed round, or (with no complete round) is removed and run again,
so the study's runs always land in their planned directories.
Results go to `<results_dir>/<study>/`: `table.md`, `table.csv`, `pivot.md` (final accuracy, methods x
settings), `units.md` (which units each method trained, per budget group), `paired.md` when the study
names `paired_with` (each method minus that one, seed by seed), PNGs per setting, and for a pilot
study (`pilot: true`) pilot.json / pilot.png (`report/pilot.py`), for a learning-rate grid (`grid.lrs`)
lr.json / lr.md (`report/lr_choice.py`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedpilot.config import dump_config
from fedpilot.engines.local import resume_local, run_local
from fedpilot.report.lr_choice import write_lr_choice
from fedpilot.report.paired import paired_csv, paired_markdown, paired_rows, pooled_rows
from fedpilot.report.pilot import write_pilot
from fedpilot.report.plots import memory_ratio, plot_accuracy, plot_budget
from fedpilot.report.records import read_rounds
from fedpilot.report.run_records import restore_record, save_record
from fedpilot.report.study import PlannedRun, Study, expand_study, load_study, select_runs
from fedpilot.report.tables import csv_text, markdown_table
from fedpilot.report.unit_use import unit_use_markdown, unit_use_rows

COLUMNS = ("dataset", "partition", "regime", "method", "seeds", "lr", "final_acc_mean", "final_acc_std", "best_acc_mean",
           "final_val_mean", "final_val_std",
           "rounds_to_95pct_ref", "units_per_client", "peak_mem_over_budget", "upload_bytes_per_round",
           "seconds_per_run")
FORMATS = {"lr": "{:g}", "final_acc_mean": "{:.4f}", "final_acc_std": "{:.4f}", "best_acc_mean": "{:.4f}",
           "final_val_mean": "{:.4f}", "final_val_std": "{:.4f}",
           "rounds_to_95pct_ref": "{:.3g}", "units_per_client": "{:.2f}", "peak_mem_over_budget": "{:.3f}",
           "upload_bytes_per_round": "{:,.0f}", "seconds_per_run": "{:.1f}"}
HEADINGS = {"final_acc_mean": "final acc", "final_acc_std": "± std", "best_acc_mean": "best acc",
            "final_val_mean": "final val acc", "final_val_std": "± std",
            "rounds_to_95pct_ref": "rounds to 95% ref", "units_per_client": "units per client",
            "peak_mem_over_budget": "peak mem / budget", "upload_bytes_per_round": "upload B / round",
            "seconds_per_run": "s / run"}
Setting = tuple[str, str]


@dataclass(frozen=True)
class RunResult:
    """A finished run's planned key with its summary and round records, read from its directory."""

    run: PlannedRun
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]


def is_finished(run_dir: Path) -> bool:
    """Whether a run directory holds summary.json (written last)."""
    return (run_dir / "summary.json").is_file()


def finished_note(run: PlannedRun) -> str:
    """What to say about a finished run that is skipped, warning when its config no longer matches."""
    config_file = run.run_dir / "config.yaml"
    if config_file.is_file() and config_file.read_text() == dump_config(run.config):
        return "finished earlier; skipped"
    return "finished earlier; skipped [yellow](its config.yaml differs from the study's: delete it to rerun)[/]"


def execute(run: PlannedRun, console: Console) -> dict[str, Any]:
    """Run one planned run in its directory, resuming it from its checkpoint if it was interrupted."""
    if (run.run_dir / "checkpoint" / "server.json").is_file():
        console.print(f"resuming interrupted run {run.run_dir}", highlight=False)
        return resume_local(run.run_dir, run.config, console)
    if run.run_dir.exists():
        console.print(f"removing interrupted run {run.run_dir} (no complete round)", highlight=False)
        shutil.rmtree(run.run_dir)
    return run_local(run.config, console)[1]


def final_note(summary: dict[str, Any]) -> str:
    """The line printed when a run finishes."""
    final = summary["final_accuracy"]
    return f"final accuracy {final:.4f}" if final is not None else f"final accuracy n/a: {summary['note']}"


def execute_in_worker(run: PlannedRun, threads: int) -> dict[str, Any]:
    """`execute` in a worker process with `threads` torch threads and no terminal output."""
    import torch

    torch.set_num_threads(threads)
    return execute(run, Console(quiet=True))


def run_study(runs: list[PlannedRun], console: Console, jobs: int | None = 1, records: Path | None = None) -> int:
    """Run every planned run not finished yet, `jobs` at a time in separate processes (each with an equal
    share of the CPU cores as torch threads) or in order in this one; returns how many ran now. `jobs`
    None: `auto_jobs`. Never more jobs than runs left; one job runs them here with every thread. With a
    `records` folder, each run's record is kept there as it finishes.

    Raises ValueError for jobs < 1; a run's error (e.g. over budget) is raised here.
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    pending = []
    for run in runs:
        if is_finished(run.run_dir):
            console.print(f"{run.name}: {finished_note(run)}", highlight=False)
        else:
            pending.append(run)
    jobs = min(auto_jobs(pending) if jobs is None else jobs, max(1, len(pending)))
    if jobs == 1:
        for index, run in enumerate(pending, 1):
            console.rule(f"run {index}/{len(pending)}: {run.name}")
            console.print(final_note(execute(run, console)))
            keep_record(run, records)
    else:
        run_parallel(pending, console, jobs, records)
    console.print(f"all {len(runs)} runs done: {len(pending)} ran now, {len(runs) - len(pending)} had finished earlier")
    return len(pending)


def auto_jobs(pending: list[PlannedRun]) -> int:
    """The default number of jobs: one per CPU core this process may use (one torch thread each; on 2 cores
    that ran 1.10x the runs per hour of one process with both threads, benchmarks/compare_throughput.py)
    when every run trains on the CPU; 1 when any uses another device (one accelerator, one run at a time)."""
    if any(torch_device_type(run.config.train.device) != "cpu" for run in pending):
        return 1
    return usable_cores()


def torch_device_type(device: str) -> str:
    """The type of a torch device string: "cpu" for "cpu" or "cpu:0", "cuda" for "cuda:1"."""
    return device.split(":")[0].strip().lower()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS has one, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def keep_record(run: PlannedRun, records: Path | None) -> None:
    """Keep a finished run's record in `records` (nothing without a folder)."""
    if records is not None:
        save_record(run.run_dir, records)


def run_parallel(pending: list[PlannedRun], console: Console, jobs: int, records: Path | None = None) -> None:
    """Run `pending` in `jobs` worker processes, reporting each as it finishes under a progress bar (and
    keeping its record in `records`)."""
    threads = max(1, usable_cores() // jobs)
    console.print(f"{len(pending)} runs, {jobs} at a time, {threads} torch thread(s) each")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool, Progress(*columns, console=console) as progress:
        task = progress.add_task("runs", total=len(pending))
        futures = {pool.submit(execute_in_worker, run, threads): run for run in pending}
        try:
            for future in as_completed(futures):
                progress.console.print(f"{futures[future].name}: {final_note(future.result())}", highlight=False)
                keep_record(futures[future], records)
                progress.advance(task)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a failed run: start no more; those running finish
            raise


def read_results(runs: list[PlannedRun]) -> list[RunResult]:
    """The finished runs among `runs`, read from their directories."""
    return [RunResult(run, json.loads((run.run_dir / "summary.json").read_text()), read_rounds(run.run_dir))
            for run in runs if is_finished(run.run_dir)]


def rounds_to_reach(rounds: list[dict[str, Any]], target: float) -> int | None:
    """First round whose test accuracy reaches `target`, or None."""
    return next((r["round"] for r in rounds if r.get("test_accuracy") is not None and r["test_accuracy"] >= target),
                None)


def mean_or_none(values: list[float]) -> float | None:
    """Mean of the values, or None when there are none."""
    return float(np.mean(values)) if values else None


def rounds_to_reference(results: list[RunResult], reference: float | None) -> float | None:
    """Mean over seeds of the rounds to reach 95% of the reference accuracy; None if a seed never does."""
    if reference is None:
        return None
    reached = [rounds_to_reach(r.rounds, 0.95 * reference) for r in results]
    return None if None in reached else mean_or_none(reached)


def group_stats(results: list[RunResult], reference: float | None) -> dict[str, Any]:
    """The numeric columns of one (dataset, partition, method) row over its seeds.

    Final accuracy is `final_test_accuracy` (the whole test split where the runs evaluated it); best
    accuracy and rounds-to-95% follow the per-round test subset. A client the strategy left out (a record
    without `units`) counts as training 0 units.
    """
    finals = [a for a in map(final_test_accuracy, (r.summary for r in results)) if a is not None]
    vals = [a for a in map(final_val_accuracy, (r.summary for r in results)) if a is not None]
    clients = [c for r in results for record in r.rounds for c in record["clients"]]
    ratios = [ratio for ratio in map(memory_ratio, clients) if ratio is not None]
    uploads = [[c["upload_bytes"] for c in record["clients"] if c.get("upload_bytes") is not None]
               for r in results for record in r.rounds]
    return {
        "seeds": len(results),
        "final_acc_mean": mean_or_none(finals),
        "final_acc_std": float(np.std(finals)) if finals else None,
        "best_acc_mean": mean_or_none([r.summary["best_accuracy"] for r in results
                                       if r.summary.get("best_accuracy") is not None]),
        "final_val_mean": mean_or_none(vals),
        "final_val_std": float(np.std(vals)) if vals else None,
        "rounds_to_95pct_ref": rounds_to_reference(results, reference),
        "units_per_client": mean_or_none([len(c.get("units", ())) for c in clients]),
        "peak_mem_over_budget": max(ratios) if ratios else None,
        "upload_bytes_per_round": mean_or_none([sum(u) for u in uploads if u]),
        "seconds_per_run": mean_or_none([r.summary["wall_seconds"] for r in results if "wall_seconds" in r.summary]),
    }


def group_results(results: list[RunResult]) -> dict[tuple[str, str, str], list[RunResult]]:
    """Finished runs by (dataset, partition, method), in study order."""
    groups: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for result in results:
        groups[(result.run.dataset, result.run.partition, result.run.method)].append(result)
    return groups


def table_rows(results: list[RunResult], reference_label: str | None, regime: str | None = None) -> list[dict[str, Any]]:
    """One row per (dataset, partition, method), labelled with the study's budget `regime` and the runs' learning
    rate; rounds-to-95% against the reference's mean final accuracy on the per-round test subset."""
    groups = group_results(results)
    rows = []
    for (dataset, partition, method), members in groups.items():
        reference_runs = groups.get((dataset, partition, reference_label), [])
        reference = mean_or_none([r.summary["final_accuracy"] for r in reference_runs
                                  if r.summary.get("final_accuracy") is not None])
        rows.append({"dataset": dataset, "partition": partition, "regime": regime, "method": method,
                     "lr": members[0].run.config.train.lr, **group_stats(members, reference)})
    return rows


def formatted(row: dict[str, Any]) -> list[str]:
    """A row's cells as shown in Markdown and on the terminal; missing values are empty."""
    return ["" if row[c] is None else FORMATS.get(c, "{}").format(row[c]) for c in COLUMNS]


def pivot_markdown(rows: list[dict[str, Any]], metric: str = "final_acc") -> str:
    """Final test (`final_acc`) or validation (`final_val`) accuracy, mean ± std over seeds in %, with one
    row per method and one column per setting."""
    settings = list(dict.fromkeys(f"{row['dataset']} {row['partition']}" for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    cells = {(row["method"], f"{row['dataset']} {row['partition']}"): row for row in rows}
    body = [[method, *(_accuracy_cell(cells.get((method, setting)), metric) for setting in settings)]
            for method in methods]
    return markdown_table(["method", *settings], body)


def _accuracy_cell(row: dict[str, Any] | None, metric: str) -> str:
    """`mean ± std (seeds)` of a row's `metric` in percent; empty without the row, n/a when its runs have no
    accuracy (no client ever trained)."""
    if row is None:
        return ""
    if row[f"{metric}_mean"] is None:
        return f"n/a ({row['seeds']})"
    return f"{100 * row[f'{metric}_mean']:.1f} ± {100 * row[f'{metric}_std']:.1f} ({row['seeds']})"


def csv_table(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with full-precision numbers; missing values are empty."""
    return csv_text(rows, COLUMNS)


def rich_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The rows as a terminal table."""
    table = Table(title=title)
    for column in COLUMNS:
        text = column in ("dataset", "partition", "regime", "method")
        table.add_column(HEADINGS.get(column, column), justify="left" if text else "right", no_wrap=text)
    for row in rows:
        table.add_row(*formatted(row))
    return table


def plot_results(results: list[RunResult], out_dir: Path) -> list[Path]:
    """Accuracy-vs-round and budget-use PNGs for each (dataset, partition) setting."""
    settings: dict[Setting, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        settings[(result.run.dataset, result.run.partition)][result.run.method].append(result.run.run_dir)
    paths = []
    for (dataset, partition), dirs in settings.items():
        stem = f"{dataset}-{partition}"
        paths.append(plot_accuracy(dirs, f"{dataset}, {partition}", out_dir / f"accuracy-{stem}.png"))
        budget = plot_budget(dirs, f"memory use per client group: {dataset}, {partition}", out_dir / f"budget-{stem}.png")
        paths += [budget] if budget else []
    return paths


def final_test_accuracy(summary: dict[str, Any]) -> float | None:
    """A run's final test accuracy: on the whole test split where the run evaluated it there
    (`eval.final_full`: `final_test_accuracy_full`), else on the per-round test subset (`final_accuracy`);
    None for a run that trained nothing (`final_accuracy` None)."""
    if summary.get("final_accuracy") is None:
        return None
    full = summary.get("final_test_accuracy_full")
    return summary["final_accuracy"] if full is None else full


def final_val_accuracy(summary: dict[str, Any]) -> float | None:
    """A run's final validation accuracy; None without a validation split or for a run that trained nothing."""
    return summary.get("final_val_accuracy")


def seed_accuracies(groups: dict[tuple[str, str, str], list[RunResult]],
                    metric: Callable[[dict[str, Any]], float | None]) -> dict:
    """{(dataset, partition, method): {seed: metric(summary)}} over the runs where the metric is not None."""
    return {group: {r.run.seed: metric(r.summary) for r in members if metric(r.summary) is not None}
            for group, members in groups.items()}


def paired_texts(groups: dict[tuple[str, str, str], list[RunResult]], anchor: str,
                 regime: str | None = None) -> dict[str, str]:
    """paired.md (validation, where the runs have it, then test; each per setting and pooled over a dataset's
    partitions) and paired.csv (test) against `anchor`, its rows labelled with the budget `regime`."""
    test_rows = [{**row, "regime": regime} for row in paired_rows(seed_accuracies(groups, final_test_accuracy), anchor)]
    val_rows = [{**row, "regime": regime} for row in paired_rows(seed_accuracies(groups, final_val_accuracy), anchor)]
    sections = []
    for rows, metric in ((val_rows, "final validation accuracy"), (test_rows, "final test accuracy")):
        if rows:
            sections.append(paired_markdown(rows + pooled_rows(rows), anchor, metric))
    texts = {"paired.md": "\n\n".join(sections), "paired.csv": paired_csv(test_rows)}
    if val_rows:
        texts["paired-val.csv"] = paired_csv(val_rows)
    return texts


def unit_names(groups: dict[tuple[str, str, str], list[RunResult]]) -> dict[tuple[str, str, str], list[str]]:
    """Per setting, the unit labels its runs recorded (`unit_names` in summary.json; older runs have none)."""
    return {key: members[0].summary["unit_names"] for key, members in groups.items()
            if members and "unit_names" in members[0].summary}


def write_tables(out_dir: Path, rows: list[dict[str, Any]], groups: dict[tuple[str, str, str], list[RunResult]],
                 paired_with: str | None, regime: str | None = None) -> list[Path]:
    """table.md, table.csv, pivot.md, units.md and, with an anchor method, paired.md / .csv; returns their paths."""
    texts = {"table.md": markdown_table(COLUMNS, [formatted(row) for row in rows]), "table.csv": csv_table(rows),
             "pivot.md": pivot_markdown(rows),
             **({"pivot-val.md": pivot_markdown(rows, "final_val")} if any(r["final_val_mean"] is not None
                                                                            for r in rows) else {}),
             "units.md": unit_use_markdown(unit_use_rows({key: [r.rounds for r in members]
                                                          for key, members in groups.items()},
                                                         unit_names(groups)))}
    if paired_with:
        texts.update(paired_texts(groups, paired_with, regime))
    for name, text in texts.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in texts]


def write_results(study: Study, runs: list[PlannedRun], console: Console) -> list[Path]:
    """Tables and plots of the study's finished runs; returns the files written."""
    results = read_results(runs)
    rows = table_rows(results, study.reference_label(), study.regime)
    out_dir = study.result_root
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (write_tables(out_dir, rows, group_results(results), study.paired_with, study.regime)
             + plot_results(results, out_dir))
    if study.pilot:
        paths += write_pilot(runs, out_dir)
    if study.grid.lrs:
        paths += write_lr_choice(rows, study, out_dir)
    console.print(rich_table(rows, f"study {study.name}: {len(results)}/{len(runs)} runs finished"))
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)
    return paths


def run_compare(study_path: str | Path, only: list[str], console: Console, run: bool = True,
                jobs: int | None = 1) -> list[Path]:
    """`fedpilot compare`: expand the study, run what is missing (of the `only` methods, `jobs` at a
    time, None: `auto_jobs`) unless `run` is False, and write the results of every finished run."""
    study = load_study(study_path)
    runs, skipped = expand_study(study)
    for name, reason in skipped:
        console.print(f"[yellow]skipped[/] {name}: {reason}", highlight=False)
    selected = select_runs(runs, study, only)
    records = study.records_root
    if records is not None:
        restore_records(runs, records, console)
    if run:
        run_study(selected, console, jobs, records)
    if records is not None:
        for planned in runs:
            save_record(planned.run_dir, records)
    return write_results(study, runs, console)


def restore_records(runs: list[PlannedRun], records: Path, console: Console) -> None:
    """Put back every kept record made with its run's current config (`run_records.restore_record`)."""
    for run in runs:
        if restore_record(run.run_dir, records, dump_config(run.config)):
            console.print(f"{run.name}: restored from its record in {records}", highlight=False)
