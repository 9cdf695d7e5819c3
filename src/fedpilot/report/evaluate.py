"""`fedpilot evaluate`: accuracy, macro-F1 and per-class precision / recall / F1 of a run's model.

Metrics come from scikit-learn. The data is the run's own (its config.yaml: the same seed gives the
same test and validation split), another packaged set, or every row of a labelled CSV / Parquet
file (the run's `data.text_column` and `data.label_column`). Results go to a JSON file and a
confusion-matrix PNG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from fedpilot.config import Config
from fedpilot.data.sources import PACKAGED, DataError, DroppedRows, dropped_only, read_table
from fedpilot.federation import load_partitions

SPLITS = ("test", "val")


@dataclass
class Labelled:
    """Texts and their label names, a short name of where they came from (for file names) and the rows
    the reader dropped (empty text or label; only files that dropped any)."""

    texts: list[str]
    labels: list[str]
    name: str
    dropped: tuple[DroppedRows, ...] = ()


def run_split(config: Config, data: str | None, split: str) -> Labelled:
    """The test or validation split of the run's dataset (or of packaged set `data`), whole, as the run split it.

    Raises DataError for an unknown split or a run without a validation split.
    """
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if data is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update={"name": data})})
    text, _, val = load_partitions(config)
    chosen = text.test if split == "test" else val
    if chosen is None:
        raise DataError("the run holds no validation split (data.val_fraction=0); use --split test")
    names = text.label_names
    read_from = ("test", "all") if split == "test" else ("train", "all")  # validation is carved from training data
    dropped = tuple(d for d in text.dropped if d.split in read_from)
    return Labelled(list(chosen["text"]), [names[i] for i in chosen["label"]], f"{Path(config.data.name).stem}-{split}",
                    dropped)


def labelled_data(config: Config, data: str | None, split: str) -> Labelled:
    """What `fedpilot evaluate` scores: a split of a packaged set or the run's data, or every row of a file."""
    if data is None or data in PACKAGED:
        return run_split(config, data, split)
    frame, dropped = read_table(Path(data), config.data.text_column, config.data.label_column, "all")
    return Labelled(frame["text"].tolist(), frame["label"].tolist(), Path(data).stem, dropped_only(dropped))


def label_ids(labels: list[str], names: list[str]) -> np.ndarray:
    """Ids of label names in the model's label order; DataError naming labels the model does not know."""
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"labels the model was not trained on: {unknown[:5]}; it knows {names}")
    return np.array([index[label] for label in labels])


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over every label of the model), per-class precision/recall/F1/support (fractions 0-1,
    support in examples) and the confusion matrix (rows: true label, columns: predicted, counts)."""
    ids = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=ids, zero_division=0)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(names)}
    return {"examples": int(len(truth)), "accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, labels=ids, average="macro", zero_division=0)),
            "per_class": per_class, "confusion": confusion_matrix(truth, predicted, labels=ids).tolist()}


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Per-class precision, recall and F1 in percent, with accuracy and macro-F1 as the caption."""
    table = Table(title=title)
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, row in metrics["per_class"].items():
        table.add_row(name, f"{row['precision']:.1%}", f"{row['recall']:.1%}", f"{row['f1']:.1%}", str(row["support"]))
    table.caption = (f"accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.1%} "
                     f"on {metrics['examples']} examples")
    return table


def plot_confusion(confusion: list[list[int]], names: list[str], title: str, path: Path) -> Path:
    """Confusion matrix as a PNG: counts, shaded by each true label's share (row-normalized)."""
    counts = np.asarray(confusion)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(5.0, 0.4 * len(names) + 2)
    fig = Figure(figsize=(side + 1, side))
    axes = fig.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=axes, label="share of the true label")
    ticks = range(len(names))
    axes.set_xticks(ticks, names, rotation=90, fontsize=7)
    axes.set_yticks(ticks, names, fontsize=7)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=6,
                      color="white" if shares[row, column] > 0.5 else "black")
    axes.set(xlabel="predicted label", ylabel="true label", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_results(metrics: dict[str, Any], names: list[str], out: Path, stem: str,
                  dropped: tuple[DroppedRows, ...] = ()) -> tuple[Path, Path]:
    """`out/<stem>.json` (the metrics and the `dropped_rows` of the data's files) and `out/<stem>-confusion.png`;
    returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps({"labels": names, **metrics, "dropped_rows": [d.record() for d in dropped]},
                                    indent=2))
    return json_path, plot_confusion(metrics["confusion"], names, f"confusion: {stem}", out / f"{stem}-confusion.png")
