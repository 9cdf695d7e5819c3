"""`fedpilot predict`: the label name and its probability for each text, from a run's model.

Texts are tokenized as in training (truncated and padded to the run's `max_length`) and classified
in batches; a rich progress bar shows the batches of a file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedpilot.data.sources import DataError
from fedpilot.models.export import RunModel
from fedpilot.models.inputs import accepted_inputs

READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet}


def read_texts(path: Path, column: str) -> list[str]:
    """The texts of a CSV or Parquet file's `column` (missing cells read as "").

    Raises DataError for a missing or empty file, another suffix, or a missing column.
    """
    if path.suffix not in READERS:
        raise DataError(f"{path}: give a .csv or .parquet file")
    if not path.is_file():
        raise DataError(f"file {str(path)!r} does not exist")
    try:
        frame = READERS[path.suffix](path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    if column not in frame.columns:
        raise DataError(f"text column {column!r} not in {path.name}; columns: {list(frame.columns)} "
                        "(choose one with --text-column)")
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame[column].fillna("").astype(str).tolist()


def class_probabilities(run_model: RunModel, texts: list[str], batch_size: int,
                        advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """Softmax over the labels for each text: shape (len(texts), labels), float32; `advance(n)` after each batch."""
    model, tokenizer = run_model.model, run_model.tokenizer
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            encoded = tokenizer(batch, truncation=True, max_length=run_model.max_length, padding="max_length",
                                return_tensors="pt")
            inputs = accepted_inputs(encoded, model)
            parts.append(torch.softmax(model(**inputs).logits.float(), dim=-1))
            if advance is not None:
                advance(len(batch))
    return torch.cat(parts) if parts else torch.empty(0, len(run_model.label_names))


def probabilities_with_progress(run_model: RunModel, texts: list[str], batch_size: int,
                                console: Console) -> torch.Tensor:
    """`class_probabilities` with a progress bar over the texts."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("classifying", total=len(texts))
        return class_probabilities(run_model, texts, batch_size, lambda n: progress.advance(task, n))


def predictions(run_model: RunModel, texts: list[str], probabilities: torch.Tensor) -> pd.DataFrame:
    """One row per text: `text`, `label` (name of the most probable class), `probability` (its softmax, 0-1)."""
    best, index = probabilities.max(dim=-1)
    labels = [run_model.label_names[i] for i in index.tolist()]
    return pd.DataFrame({"text": texts, "label": labels, "probability": best.tolist()})
