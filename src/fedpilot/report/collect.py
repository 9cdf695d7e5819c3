"""`fedpilot collect`: one table and one verdict table from several studies' results.

A comparison that spans budget regimes and datasets is several study files (one regime each); each
`fedpilot compare` writes its `table.csv` and `paired.csv`. Collecting concatenates them, so that
results/converged/ holds

- `table.csv` / `table.md`: every (dataset, partition, regime, method) row of every study;
- `paired.csv`: every method-minus-anchor row with its 95% interval and verdict;
- `verdicts.md`: the verdicts as one grid, a row per setting and a column per method, each cell
  `mean difference [interval] verdict` in accuracy points.

Nothing is recomputed: the numbers are the studies' own.
"""

from __future__ import annotations

import csv
from pathlib import Path
from fedpilot.config import ConfigError
from fedpilot.report.compare import COLUMNS
from fedpilot.report.paired import CSV_COLUMNS
from fedpilot.report.study import load_study
from fedpilot.report.tables import csv_text, markdown_table

Row = dict[str, str]
TABLE_MD = ("dataset", "partition", "regime", "method", "seeds", "lr", "final_acc_mean", "final_acc_std",
            "final_val_mean", "units_per_client", "seconds_per_run")


def read_csv(path: Path, study_path: str | Path) -> list[Row]:
    """The rows of one study's CSV result; a ConfigError naming the command that writes it when absent."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run `fedpilot compare --study {study_path} --report-only` first")
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _points(value: str) -> str:
    """A CSV fraction as signed accuracy points; `?` when empty (one seed: no interval)."""
    return f"{100 * float(value):+.1f}" if value else "?"


def verdict_cell(row: Row) -> str:
    """`+1.2 [-0.3, +2.7] tie`: mean difference, 95% interval and verdict of one paired row."""
    return f"{_points(row['mean_diff'])} [{_points(row['ci_low'])}, {_points(row['ci_high'])}] {row['verdict']}"


def verdict_markdown(rows: list[Row], anchor: str) -> str:
    """The paired rows as a grid: a row per (dataset, partition, regime), a column per method (each minus
    `anchor`, in accuracy points)."""
    settings = list(dict.fromkeys((r["dataset"], r["partition"], r["regime"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells = {(r["dataset"], r["partition"], r["regime"], r["method"]): r for r in rows}
    body = [[*setting, *(verdict_cell(cells[(*setting, m)]) if (*setting, m) in cells else "" for m in methods)]
            for setting in settings]
    return (f"Final test accuracy minus {anchor}'s, mean over seeds in points, [95% t interval over the seeds' "
            f"paired differences], verdict of the method against {anchor}.\n\n"
            + markdown_table(["dataset", "partition", "regime", *methods], body))


def table_markdown(rows: list[Row]) -> str:
    """The main columns of the collected table, accuracies in percent."""
    def cell(row: Row, column: str) -> str:
        value = row.get(column, "")
        if value and column.startswith("final_"):
            return f"{100 * float(value):.1f}"
        if value and column in ("units_per_client", "seconds_per_run"):
            return f"{float(value):.1f}"
        return value
    return markdown_table(list(TABLE_MD), [[cell(row, c) for c in TABLE_MD] for row in rows])


def collect(study_paths: list[str | Path], out_dir: Path) -> list[Path]:
    """Concatenate the studies' table.csv and paired.csv into `out_dir`; returns the files written.

    Without a study naming `paired_with`, no paired.csv / verdicts.md is written (an older one in `out_dir`
    is removed). Raises ConfigError for a bad study file, a study without results yet, two studies with
    one results folder, or studies paired with different anchor methods.
    """
    if not study_paths:
        raise ConfigError("collect needs at least one --study")
    studies = {path: load_study(path) for path in study_paths}
    roots = [s.result_root for s in studies.values()]
    repeated = sorted({str(root) for root in roots if roots.count(root) > 1})
    if repeated:
        raise ConfigError(f"studies share their results folder {repeated}; give each study its own name")
    anchors = {s.paired_with for s in studies.values() if s.paired_with}
    if len(anchors) > 1:
        raise ConfigError(f"the studies are paired with different methods {sorted(anchors)}; collect one anchor at a time")
    table = [row for path, s in studies.items() for row in read_csv(s.result_root / "table.csv", path)]
    paired = [row for path, s in studies.items() if s.paired_with
              for row in read_csv(s.result_root / "paired.csv", path)]
    texts = {"table.csv": csv_text(table, COLUMNS), "table.md": table_markdown(table) + "\n"}
    if anchors:
        texts["paired.csv"] = csv_text(paired, CSV_COLUMNS)
        texts["verdicts.md"] = verdict_markdown(paired, anchors.pop()) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("paired.csv", "verdicts.md"):
        if stale not in texts:
            (out_dir / stale).unlink(missing_ok=True)
    for name, text in texts.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in texts]

