"""The protocol's training length: from a pilot curve of fedavg-full, the fewest rounds after which
more rounds add little (docs/protocol.md).

A pilot study runs fedavg-full for many rounds with validation every round; `enough_rounds` reads
the seed-averaged validation curve and `write_pilot` writes results/<study>/pilot.json and pilot.png.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fedpilot.report.records import read_rounds
from fedpilot.report.study import PlannedRun

Curve = tuple[list[int], list[float]]


def accuracy_at(curve: Curve, round_number: int) -> float:
    """Accuracy at the last evaluated round not after `round_number` (the first one if none is)."""
    rounds, accuracy = curve
    index = max(0, int(np.searchsorted(rounds, round_number, side="right")) - 1)
    return accuracy[index]


def enough_rounds(curve: Curve, tail: float = 0.25, gain: float = 0.01) -> int | None:
    """The fewest evaluated rounds R whose last `tail` share adds less than `gain` accuracy
    (acc(R) - acc(floor((1 - tail) R)) < gain) and that end within `gain` of the curve's best,
    so that a curve still flat at chance does not count. None when no round qualifies (pilot too short).

    `curve`: (rounds ascending, accuracy in [0, 1] at each). Raises ValueError for an empty curve.
    """
    rounds, accuracy = curve
    if not rounds:
        raise ValueError("the pilot curve has no evaluated rounds")
    best = max(accuracy)
    for r, acc in zip(rounds, accuracy):
        earlier = accuracy_at(curve, math.floor((1 - tail) * r))
        if acc >= best - gain and acc - earlier < gain:
            return r
    return None


def seed_mean_curves(runs: list[PlannedRun], key: str = "val_accuracy") -> dict[tuple[str, str], Curve]:
    """Per (dataset, partition), the curve of `key` averaged over the finished seeds' round records."""
    per_setting: dict[tuple[str, str], list[dict[int, float]]] = defaultdict(list)
    for run in runs:
        if (run.run_dir / "summary.json").is_file():
            rounds = read_rounds(run.run_dir)
            per_setting[run.dataset, run.partition].append(
                {r["round"]: r[key] for r in rounds if r.get(key) is not None})
    curves = {}
    for setting, seeds in per_setting.items():
        common = sorted(set.intersection(*(set(seed) for seed in seeds)))
        curves[setting] = (common, [float(np.mean([seed[r] for seed in seeds])) for r in common])
    return curves


def write_pilot(runs: list[PlannedRun], out_dir: Path, tail: float = 0.25, gain: float = 0.01) -> list[Path]:
    """pilot.json (per setting: the curve and its enough_rounds) and pilot.png in `out_dir`."""
    curves = seed_mean_curves(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {f"{d}/{p}": {"rounds": c[0], "val_accuracy": c[1], "enough_rounds": enough_rounds(c, tail, gain)}
              for (d, p), c in sorted(curves.items())}
    json_path = out_dir / "pilot.json"
    json_path.write_text(json.dumps({"tail": tail, "gain": gain, "settings": report}, indent=2) + "\n")
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for name, entry in report.items():
        line, = axes.plot(entry["rounds"], entry["val_accuracy"], label=name)
        if entry["enough_rounds"] is not None:
            axes.axvline(entry["enough_rounds"], color=line.get_color(), linestyle=":")
    axes.set(xlabel="round", ylabel="validation accuracy (mean over seeds)",
             title=f"fedavg-full pilot: dotted = fewest rounds whose last {tail:.0%} add < {gain * 100:.0f} pt")
    axes.legend(fontsize="small")
    png_path = out_dir / "pilot.png"
    figure.savefig(png_path, dpi=120, bbox_inches="tight")
    return [json_path, png_path]
