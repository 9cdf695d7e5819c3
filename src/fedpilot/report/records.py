"""One run directory: `config.yaml` (resolved), `metrics.jsonl` (a line per round), `summary.json`.

Tables and plots read only these files. `summary.json` is written last, so its presence marks a
finished run.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from fedpilot.config import Config, dump_config


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fresh_run_dir(parent: str, name: str) -> Path:
    """A new directory `parent/name`, or `name-2`, `name-3`... so no earlier run is overwritten."""
    base = Path(parent) / name
    candidate, counter = base, 1
    while candidate.exists():
        counter += 1
        candidate = base.with_name(f"{name}-{counter}")
    candidate.mkdir(parents=True)
    return candidate


class RunRecorder:
    """Appends round records and writes the summary of one run directory."""

    def __init__(self, run_dir: Path, config: Config) -> None:
        self.run_dir = run_dir
        write_atomic(run_dir / "config.yaml", dump_config(config))
        self.metrics_path = run_dir / "metrics.jsonl"

    def log_round(self, record: dict[str, Any]) -> None:
        """Append one round's record as a JSON line."""
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def rewrite_rounds(self, rounds: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with exactly these rounds (used when resuming)."""
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rounds))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json (marks the run as complete)."""
        write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))


def run_file_text(folder: Path, name: str) -> str | None:
    """The text of a run's file `name` in `folder`, or of its gzipped copy `name.gz` in a study's kept record;
    None when there is neither."""
    if (folder / name).is_file():
        return (folder / name).read_text()
    if (folder / f"{name}.gz").is_file():
        return gzip.decompress((folder / f"{name}.gz").read_bytes()).decode()
    return None


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """All complete round records of a run (a line torn by a crash is left out), from `metrics.jsonl` or, in
    a study's kept record (`results/<study>/runs/<run>/`), `metrics.jsonl.gz`; [] when there is neither."""
    text = run_file_text(Path(run_dir), "metrics.jsonl")
    if text is None:
        return []
    rounds = []
    for line in text.splitlines():
        try:
            rounds.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rounds


def last_global_scores(run_dir: str | Path) -> list[float] | None:
    """The last round's `strategy.global_scores` of a run, by unit index; None when no round logged them."""
    for record in reversed(read_rounds(run_dir)):
        scores = record.get("strategy", {}).get("global_scores")
        if scores:
            return [float(scores[str(j)]) for j in range(len(scores))]
    return None


def unit_coverage(rounds: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per unit: in how many rounds it was trained by 0, 1, 2, ... clients (survivors only)."""
    num_units = 1 + max((u for r in rounds for c in r["clients"] for u in c.get("units", [])), default=-1)
    table: dict[str, dict[str, int]] = {str(j): {} for j in range(num_units)}
    for record in rounds:
        trained = [c["units"] for c in record["clients"] if "loss" in c]
        for j in range(num_units):
            count = str(sum(j in units for units in trained))
            table[str(j)][count] = table[str(j)].get(count, 0) + 1
    return table


def ig_cost_fraction(rounds: list[dict[str, Any]]) -> float | None:
    """Time spent on IG-Scores as a share of the scored clients' round time (scoring + training)."""
    scored = [c for r in rounds for c in r["clients"] if "score_seconds" in c and "seconds" in c]
    if not scored:
        return None
    scoring = sum(c["score_seconds"] for c in scored)
    return scoring / (scoring + sum(c["seconds"] for c in scored))


def validation_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best validation accuracy (empty when the run had no validation split)."""
    accuracies = [r["val_accuracy"] for r in rounds if r.get("val_accuracy") is not None]
    if not accuracies:
        return {}
    return {"final_val_accuracy": accuracies[-1], "best_val_accuracy": max(accuracies)}


def trained_client_rounds(rounds: list[dict[str, Any]]) -> int:
    """How many (client, round) pairs returned a trained update."""
    return sum("loss" in c for r in rounds for c in r["clients"])


def summarize(rounds: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """Final and best test (and validation) accuracy, rounds, wall time, unit coverage, IG-Score cost, the
    clients excluded for their budget (`clients.unaffordable: exclude`) and the number of client replies the
    server refused (`rejected_updates`), from the records.

    A run in which no client ever trained (no client qualified for its method) has no accuracy of
    its own: `final_accuracy` and the other accuracies are None, the untrained model's is kept as
    `untrained_accuracy`, and `note` says why.
    """
    evaluated = [r for r in rounds if r.get("test_accuracy") is not None]
    accuracies = [r["test_accuracy"] for r in evaluated]
    summary = {
        "rounds": len(rounds),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "best_round": evaluated[accuracies.index(max(accuracies))]["round"] if accuracies else None,
        "final_loss": evaluated[-1]["test_loss"] if evaluated else None,
        **validation_summary(rounds),
        "trained_client_rounds": trained_client_rounds(rounds),
        "wall_seconds": wall_seconds,
        "unit_coverage": unit_coverage(rounds),
        "ig_cost_fraction": ig_cost_fraction(rounds),
        "excluded_clients": sorted({c for r in rounds for c in r.get("excluded", [])}),
        "rejected_updates": sum("rejected" in c for r in rounds for c in r["clients"]),
    }
    if rounds and summary["trained_client_rounds"] == 0:
        summary.update(untrained_accuracy=summary["final_accuracy"], final_accuracy=None, best_accuracy=None,
                       best_round=None, final_val_accuracy=None, best_val_accuracy=None,
                       note="no client trained in any round (none qualified for this method): no accuracy to report")
    return summary
