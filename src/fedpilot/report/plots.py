"""Figures drawn from run directories only: accuracy vs round, and memory budget use per client group.

Uses `matplotlib.figure.Figure` directly (Agg canvas, no pyplot state), like `memory/plot.py`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedpilot.assign.budgets import group_of_clients
from fedpilot.report.records import read_rounds


class RunDirError(ValueError):
    """A path given as a run directory holds no run records; the CLI prints it and exits with code 2."""


def load_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """Round records of a run directory, or a RunDirError saying why there are none."""
    if not any((Path(run_dir) / name).is_file() for name in ("metrics.jsonl", "metrics.jsonl.gz")):
        raise RunDirError(f"{str(run_dir)!r} is not a run directory (no metrics.jsonl or kept metrics.jsonl.gz)")
    return read_rounds(run_dir)


def accuracy_curve(rounds: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """Evaluated rounds and their test accuracy."""
    evaluated = [r for r in rounds if r.get("test_accuracy") is not None]
    return [r["round"] for r in evaluated], [r["test_accuracy"] for r in evaluated]


def mean_curve(runs: list[list[dict[str, Any]]]) -> tuple[list[int], list[float]]:
    """Test accuracy per round averaged over runs (seeds)."""
    by_round: dict[int, list[float]] = defaultdict(list)
    for rounds in runs:
        for number, accuracy in zip(*accuracy_curve(rounds)):
            by_round[number].append(accuracy)
    numbers = sorted(by_round)
    return numbers, [float(np.mean(by_round[n])) for n in numbers]


def memory_ratio(client: dict[str, Any]) -> float | None:
    """Memory used over budget of one client record: the counted bytes when recorded (`saved_tensor_bytes`;
    `measured_bytes` in records written before it was renamed), else the estimate."""
    used = client.get("saved_tensor_bytes") or client.get("measured_bytes") or client.get("estimated_bytes")
    budget = client.get("budget_bytes")
    return used / budget if used and budget else None


def group_names(run_dir: Path) -> tuple[list[int], list[str]]:
    """Group index of each client id and each group's name, from the run's config.yaml."""
    clients = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["clients"]
    groups = clients["groups"]
    names = [f"group {index}: {group['memory']}" for index, group in enumerate(groups)]
    return group_of_clients([g["share"] for g in groups], clients["num_clients"]), names


def budget_use(run_dirs: list[Path]) -> tuple[list[str], list[float | None]]:
    """Per client group: mean memory use over budget across the runs' client records."""
    ratios: dict[int, list[float]] = defaultdict(list)
    membership, names = group_names(run_dirs[0])
    for run_dir in run_dirs:
        for record in read_rounds(run_dir):
            for client in record["clients"]:
                ratio = memory_ratio(client)
                if ratio is not None:
                    ratios[membership[client["id"]]].append(ratio)
    return names, [float(np.mean(ratios[g])) if ratios[g] else None for g in range(len(names))]


def save(fig: Figure, path: Path) -> Path:
    """Write a figure, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def accuracy_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    """A figure for accuracy against whole-numbered rounds."""
    fig = Figure(figsize=(7, 4.5))
    axes = fig.subplots()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(xlabel="round", ylabel=ylabel, title=title)
    return fig, axes


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """`fedpilot plot`: test accuracy vs round of each run directory on one chart."""
    curves = {Path(d).name: accuracy_curve(load_rounds(d)) for d in run_dirs}
    fig, axes = accuracy_axes("test accuracy vs round", "test accuracy")
    for name, (numbers, accuracies) in curves.items():
        axes.plot(numbers, accuracies, "o-", label=name)
    axes.legend(fontsize=8)
    return save(fig, Path(out))


def plot_accuracy(dirs_by_method: dict[str, list[Path]], title: str, path: Path) -> Path:
    """Accuracy vs round per method, averaged over its seeds."""
    fig, axes = accuracy_axes(title, "test accuracy (mean over seeds)")
    for method, dirs in dirs_by_method.items():
        axes.plot(*mean_curve([read_rounds(d) for d in dirs]), "o-", label=f"{method} (n={len(dirs)})")
    axes.legend(fontsize=8)
    return save(fig, path)


def plot_budget(dirs_by_method: dict[str, list[Path]], title: str, path: Path) -> Path | None:
    """Bars of mean memory use / budget per client group and method; None when no record has a budget."""
    uses = {method: budget_use(dirs) for method, dirs in dirs_by_method.items()}
    if all(value is None for _, values in uses.values() for value in values):
        return None
    fig = Figure(figsize=(8, 4.5))
    axes = fig.subplots()
    width = 0.8 / len(uses)
    for index, (method, (names, values)) in enumerate(uses.items()):
        positions = np.arange(len(names)) + index * width
        axes.bar(positions, [v if v is not None else 0.0 for v in values], width, label=method)
    names = next(iter(uses.values()))[0]
    axes.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    axes.axhline(1.0, color="gray", ls="--", label="budget")
    axes.set(ylabel="memory use / budget (mean over clients)", title=title)
    axes.legend(fontsize=8)
    return save(fig, path)
