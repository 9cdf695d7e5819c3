"""The figures every run ends with: `accuracy.png` and, when its clients had budgets, `units.png`.

Drawn from the run's round records with `matplotlib.figure.Figure` (no pyplot state), like `plots.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from fedpilot.memory.cost import human
from fedpilot.report.plots import accuracy_axes, save
from fedpilot.report.unit_use import by_budget, unit_count


def curve(rounds: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Rounds where `key` was recorded and its values."""
    kept = [r for r in rounds if r.get(key) is not None]
    return [r["round"] for r in kept], [r[key] for r in kept]


def plot_run_accuracy(rounds: Sequence[Mapping[str, Any]], majority_rate: float, path: Path) -> Path:
    """Test and validation accuracy per evaluated round, with the majority-class rate as a horizontal line."""
    fig, axes = accuracy_axes("accuracy per round", "accuracy")
    axes.plot(*curve(rounds, "test_accuracy"), "o-", label="test")
    if any(r.get("val_accuracy") is not None for r in rounds):
        axes.plot(*curve(rounds, "val_accuracy"), "s--", label="validation")
    axes.axhline(majority_rate, color="gray", ls=":", label=f"majority class ({majority_rate:.1%})")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.legend(fontsize=8)
    return save(fig, path)


def unit_grid(records_by_round: Mapping[int, Sequence[Mapping[str, Any]]], units: int) -> np.ndarray:
    """Shares (0-1) of a group's sampled clients that trained each unit, shape (units, rounds)."""
    numbers = sorted(records_by_round)
    grid = np.full((units, len(numbers)), np.nan)
    for column, number in enumerate(numbers):
        records = records_by_round[number]
        for unit in range(units):
            grid[unit, column] = sum(unit in r.get("units", ()) for r in records) / len(records)
    return grid


def plot_units(rounds: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Per budget group, which units its sampled clients trained in each round (share of the group's clients).

    Returns None (and draws nothing) when no client record carries a budget.
    """
    tagged = [{**c, "round": r["round"]} for r in rounds for c in r["clients"] if c.get("budget_bytes")]
    if not tagged:
        return None
    groups = by_budget(tagged)
    units = max(unit_count(tagged), 1)
    numbers = sorted({r["round"] for r in rounds})
    fig = Figure(figsize=(max(6.0, 0.5 * len(numbers) + 2), 1.2 + 0.35 * units * len(groups)))
    for index, (budget, members) in enumerate(groups.items()):
        axes = fig.add_subplot(len(groups), 1, index + 1)
        by_round = {n: [m for m in members if m["round"] == n] for n in numbers}
        grid = unit_grid({n: ms for n, ms in by_round.items() if ms}, units)
        shown = [n for n in numbers if by_round[n]]
        image = axes.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1, origin="lower",
                            extent=(min(shown) - 0.5, max(shown) + 0.5, -0.5, units - 0.5))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set(ylabel="unit", title=f"budget {human(budget)} ({len(members)} client-rounds)")
        fig.colorbar(image, ax=axes, label="share trained")
    axes.set_xlabel("round")
    return save(fig, path)
