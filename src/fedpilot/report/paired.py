"""Paired comparison by seed: each method's final accuracy minus an anchor method's, seed by seed.

Runs of one setting that share a seed share the partition, the client sampling and the data order,
so the per-seed difference removes most of the seed-to-seed spread that mean ± std carries: a
method 2 points ahead in every seed is ahead even when both stds are 2 points.

The interval is a two-sided 95% Student-t interval over the seeds' differences,
mean ± t_{0.975, n-1} * sd / sqrt(n) (needs n >= 2 seeds). The verdict says whether the method is
ahead of the anchor (interval above 0), behind (below 0) or tied (the interval covers 0); with one
seed there is no interval and the verdict is `n/a`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from fedpilot.report.tables import markdown_table

Accuracies = Mapping[tuple[str, str, str], Mapping[int, float]]
HEADER = ("dataset", "partition", "method", "seeds", "mean diff (pts)", "95% CI (pts)", "verdict",
          "per seed (pts)", "ahead in")
CSV_COLUMNS = ("dataset", "partition", "regime", "method", "seeds", "mean_diff", "ci_low", "ci_high", "verdict")


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """Student-t interval of the mean of `diffs`; (None, None) with fewer than two values."""
    if len(diffs) < 2:
        return None, None
    mean, sem = float(np.mean(diffs)), float(np.std(diffs, ddof=1)) / np.sqrt(len(diffs))
    half = float(stats.t.ppf(0.5 + level / 2, len(diffs) - 1)) * sem
    return mean - half, mean + half


def verdict(low: float | None, high: float | None) -> str:
    """ahead / behind when the interval excludes 0, tie when it covers 0, n/a without an interval (one seed)."""
    if low is None or high is None:
        return "n/a"
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    return "tie"


def paired_rows(accuracies: Accuracies, anchor: str) -> list[dict[str, Any]]:
    """Per (dataset, partition, method other than `anchor`): accuracy minus the anchor's, per shared seed.

    `accuracies` maps (dataset, partition, method) to {seed: accuracy}; settings without the anchor
    and methods sharing no seed with it are left out. Rows carry the t interval and the verdict.
    """
    rows = []
    for (dataset, partition, method), by_seed in accuracies.items():
        reference = accuracies.get((dataset, partition, anchor))
        seeds = sorted(set(by_seed) & set(reference or {}))
        if method == anchor or not seeds:
            continue
        diffs = [by_seed[s] - reference[s] for s in seeds]
        low, high = t_interval(diffs)
        rows.append({"dataset": dataset, "partition": partition, "method": method, "seeds": seeds,
                     "diffs": diffs, "mean_diff": float(np.mean(diffs)), "ci_low": low, "ci_high": high,
                     "verdict": verdict(low, high), "ahead": sum(d > 0 for d in diffs)})
    return rows


def pooled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, method) with more than one partition: the paired differences of every partition and
    seed together, with their t interval and verdict (more pairs, a narrower interval; partition `all`)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"]), []).append(row)
    pooled = []
    for (dataset, method), members in groups.items():
        if len(members) < 2:
            continue
        diffs = [d for row in members for d in row["diffs"]]
        low, high = t_interval(diffs)
        pooled.append({"dataset": dataset, "partition": "all", "method": method,
                       "seeds": [s for row in members for s in row["seeds"]], "diffs": diffs,
                       "mean_diff": float(np.mean(diffs)), "ci_low": low, "ci_high": high,
                       "verdict": verdict(low, high), "ahead": sum(d > 0 for d in diffs)})
    return pooled


def _points(value: float | None) -> str:
    """A difference in accuracy points with its sign, or n/a."""
    return "n/a" if value is None else f"{100 * value:+.1f}"


def paired_markdown(rows: list[dict[str, Any]], anchor: str, metric: str = "final test accuracy") -> str:
    """The rows as Markdown, differences in accuracy points (method minus `anchor`)."""
    cells = [[row["dataset"], row["partition"], row["method"], str(len(row["seeds"])), _points(row["mean_diff"]),
              f"{_points(row['ci_low'])} .. {_points(row['ci_high'])}", row["verdict"],
              " / ".join(_points(d) for d in row["diffs"]), f"{row['ahead']}/{len(row['seeds'])}"] for row in rows]
    return (f"{metric[0].upper()}{metric[1:]} minus {anchor}'s, seed by seed; 95% t interval over seeds; "
            f"verdict of the method against {anchor}.\n\n" + markdown_table(HEADER, cells))


def paired_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV (differences as fractions, not points; empty interval bounds with one seed, empty
    regime when the rows have none)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{c: row.get(c) for c in CSV_COLUMNS if c != "seeds"}, "seeds": len(row["seeds"]),
                         "ci_low": "" if row["ci_low"] is None else row["ci_low"],
                         "ci_high": "" if row["ci_high"] is None else row["ci_high"]})
    return buffer.getvalue()
