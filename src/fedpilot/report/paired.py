"""Paired comparison by seed: each method's final accuracy minus an anchor method's, seed by seed.

Runs of one setting that share a seed share the partition, the client sampling and the data order,
so the per-seed difference removes most of the seed-to-seed spread that mean ± std carries: a
method 2 points ahead in every seed is ahead even when both stds are 2 points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedpilot.report.tables import markdown_table

Accuracies = Mapping[tuple[str, str, str], Mapping[int, float]]
HEADER = ("dataset", "partition", "method", "seeds", "mean diff (pts)", "per seed (pts)", "ahead in")


def paired_rows(accuracies: Accuracies, anchor: str) -> list[dict[str, Any]]:
    """Per (dataset, partition, method other than `anchor`): final accuracy minus the anchor's, per shared seed.

    `accuracies` maps (dataset, partition, method) to {seed: final accuracy}; settings without the
    anchor and methods sharing no seed with it are left out.
    """
    rows = []
    for (dataset, partition, method), by_seed in accuracies.items():
        reference = accuracies.get((dataset, partition, anchor))
        seeds = sorted(set(by_seed) & set(reference or {}))
        if method == anchor or not seeds:
            continue
        diffs = [by_seed[s] - reference[s] for s in seeds]
        rows.append({"dataset": dataset, "partition": partition, "method": method, "seeds": seeds,
                     "diffs": diffs, "mean_diff": float(np.mean(diffs)), "ahead": sum(d > 0 for d in diffs)})
    return rows


def paired_markdown(rows: list[dict[str, Any]], anchor: str) -> str:
    """The rows as Markdown, differences in accuracy points (method minus `anchor`)."""
    cells = [[row["dataset"], row["partition"], row["method"], str(len(row["seeds"])),
              f"{100 * row['mean_diff']:+.1f}", " / ".join(f"{100 * d:+.1f}" for d in row["diffs"]),
              f"{row['ahead']}/{len(row['seeds'])}"] for row in rows]
    return f"Final accuracy minus {anchor}'s, seed by seed.\n\n" + markdown_table(HEADER, cells)
