"""Tables: rich ones printed at the end of a run and by `fedpilot data-stats`, and Markdown for study results."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.table import Table

from fedpilot.config_fields import FieldDoc


def round_table(rounds: list[dict[str, Any]]) -> Table:
    """Test (and validation) accuracy, test loss, mean client loss and time per evaluated round."""
    table = Table(title="rounds")
    for column in ("round", "test acc", "val acc", "test loss", "client loss", "round s"):
        table.add_column(column, justify="right")
    for record in rounds:
        if record.get("test_accuracy") is None:
            continue
        losses = [c["loss"] for c in record["clients"] if "loss" in c]
        client_loss = f"{np.mean(losses):.3f}" if losses else "-"
        val = f"{record['val_accuracy']:.1%}" if record.get("val_accuracy") is not None else "-"
        table.add_row(str(record["round"]), f"{record['test_accuracy']:.1%}", val, f"{record['test_loss']:.4f}",
                      client_loss, f"{record['round_seconds']:.1f}")
    return table


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV with the given columns; a missing or None value is empty, other keys are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows([{c: "" if row.get(c) is None else row[c] for c in columns} for row in rows])
    return buffer.getvalue()


def percent(value: float | None) -> str:
    """A 0-1 fraction in percent with one decimal ("59.3%"), or "-" when missing."""
    return "-" if value is None else f"{value:.1%}"


def summary_table(summary: dict[str, Any]) -> Table:
    """Final accuracy (per-round test set, and the whole test split), best accuracy, majority rate, wall time
    of a run (its directory is printed apart, never wrapped)."""
    table = Table(title="summary")
    for column in ("final acc", "whole test split", "best acc (round)", "majority class", "wall time"):
        table.add_column(column, justify="right")
    majority, wall = percent(summary.get("test_majority_rate")), f"{summary['wall_seconds']:.0f} s"
    if summary["final_accuracy"] is None:
        table.add_row("n/a", "n/a", "n/a", majority, wall)
        table.caption = summary.get("note")
        return table
    full = percent(summary.get("final_test_accuracy_full"))
    if summary.get("test_examples_full"):
        full += f" (n={summary['test_examples_full']})"
    table.add_row(percent(summary["final_accuracy"]) + f" (n={summary.get('round_test_examples', '?')})", full,
                  f"{percent(summary['best_accuracy'])} ({summary['best_round']})", majority, wall)
    return table


def fields_table(docs: Sequence[FieldDoc]) -> Table:
    """Every config field with its type, default and description (`fedpilot config`)."""
    table = Table(title="config fields (set with --set section.field=value)")
    table.add_column("field", no_wrap=True)
    table.add_column("type", overflow="fold", max_width=24)
    table.add_column("default", overflow="fold", max_width=24)
    table.add_column("description", overflow="fold", min_width=24)
    for doc in docs:
        table.add_row(doc.name, doc.type, doc.default, doc.description)
    return table


def data_stats_table(sizes: list[int], histograms: list[np.ndarray], label_names: list[str]) -> Table:
    """Per-client size and label histogram (top labels) of a partition."""
    table = Table(title="clients")
    table.add_column("client", justify="right")
    table.add_column("examples", justify="right")
    table.add_column("labels present", justify="right")
    table.add_column("largest labels (count)")
    for client, (size, hist) in enumerate(zip(sizes, histograms)):
        top = np.argsort(-hist)[:3]
        shown = ", ".join(f"{label_names[i]} ({hist[i]})" for i in top if hist[i] > 0)
        table.add_row(str(client), str(size), str(int((hist > 0).sum())), shown)
    return table


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A Markdown table of already formatted cells, one inner sequence per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"
