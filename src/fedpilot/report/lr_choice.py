"""The protocol's learning rate per method (docs/protocol.md): from a study with a learning-rate grid
(`grid.lrs`), the value with the highest final validation accuracy, averaged over the study's seeds
and settings. The test split plays no part.

`choose_lrs` is a pure function over table rows; `write_lr_choice` writes results/<study>/lr.json
and lr.md, the second with the `set:` lines to paste into the grid's study files.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fedpilot.report.study import Study, lr_label
from fedpilot.report.tables import markdown_table


def choose_lrs(rows: list[dict[str, Any]], study: Study) -> dict[str, dict[str, Any]]:
    """Per method label of the study: {lr: final validation accuracy, the mean over the study's settings of
    each setting's mean over seeds}, the chosen lr (highest; the earlier value of `grid.lrs` on a tie;
    None before any run has validation accuracy) and `complete` (every lr measured on as many settings
    and seeds as the others).

    `rows`: table rows (`method`, `lr`, `final_val_mean`) of the study's finished runs.
    """
    by_label: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    runs: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    labels = {lr_label(m.tag, lr): (m.tag, lr) for m in study.grid.methods for lr in study.grid.lrs}
    for row in rows:
        if row["method"] in labels and row["final_val_mean"] is not None:
            tag, lr = labels[row["method"]]
            by_label[tag][lr].append(row["final_val_mean"])
            runs[tag][lr] += int(row.get("seeds") or 1)
    choice = {}
    for method in study.grid.methods:
        means = {lr: float(np.mean(by_label[method.tag][lr])) for lr in study.grid.lrs if by_label[method.tag][lr]}
        chosen = max(means, key=lambda lr: (means[lr], -study.grid.lrs.index(lr))) if means else None
        counts = {runs[method.tag][lr] for lr in study.grid.lrs}
        choice[method.tag] = {"val_accuracy": means, "chosen": chosen,
                              "complete": len(means) == len(study.grid.lrs) and len(counts) == 1}
    return choice


def lr_markdown(choice: dict[str, dict[str, Any]], lrs: list[float]) -> str:
    """Validation accuracy per method and learning rate (%), the chosen value, and its study-file line."""
    body = []
    for tag, entry in choice.items():
        cells = [f"{100 * entry['val_accuracy'][lr]:.1f}" if lr in entry["val_accuracy"] else "" for lr in lrs]
        chosen = entry["chosen"]
        line = f"`set: [train.lr={chosen:g}]`" if chosen is not None else ""
        note = "" if entry["complete"] else " (grid incomplete)"
        body.append([tag, *cells, f"{chosen:g}{note}" if chosen is not None else "-", line])
    header = ["method", *(f"lr {lr:g}" for lr in lrs), "chosen", "study file"]
    return ("Final validation accuracy (%, mean over the study's seeds and settings) per learning rate; "
            "the chosen value is the highest.\n\n" + markdown_table(header, body))


def write_lr_choice(rows: list[dict[str, Any]], study: Study, out_dir: Path) -> list[Path]:
    """lr.json and lr.md in `out_dir`; returns their paths."""
    choice = choose_lrs(rows, study)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "lr.json", out_dir / "lr.md"
    json_path.write_text(json.dumps({"lrs": study.grid.lrs, "methods": {
        tag: {**entry, "val_accuracy": {f"{lr:g}": acc for lr, acc in entry["val_accuracy"].items()}}
        for tag, entry in choice.items()}}, indent=2) + "\n")
    md_path.write_text(lr_markdown(choice, study.grid.lrs) + "\n")
    return [json_path, md_path]
