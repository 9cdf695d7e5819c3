"""A SuperNode's own data: the file named in its node config, read on that node only.

A SuperNode started with `--node-config "partition-id=2 data-path=/srv/mine.csv"` (optionally
`text-column=...`, `label-column=...`) trains on that CSV or Parquet file instead of a partition of
the server's dataset. The run's label names are agreed up front (`data.labels` in the server's
config); a file holding any other label is refused before training, with the label named.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from fedpilot.data.sources import DataError, DroppedRows, read_table, to_dataset

DATA_KEYS = ("data-path", "text-column", "label-column")
"""Node config keys naming a node's own data file and its columns."""


@dataclass(frozen=True)
class NodeData:
    """Where a node's own data is: a .csv/.parquet path and its text and label columns."""

    path: str
    text_column: str = "text"
    label_column: str = "label"


def node_data_of(node_config: Mapping[str, Any]) -> NodeData | None:
    """The node's own data named by its node config, or None when it holds a partition of the shared data.

    Raises DataError for column keys without `data-path`, or a path that is not .csv/.parquet.
    """
    if "data-path" not in node_config:
        given = [key for key in DATA_KEYS[1:] if key in node_config]
        if given:
            raise DataError(f"node config sets {', '.join(given)} without data-path")
        return None
    path = str(node_config["data-path"])
    if not path.endswith((".csv", ".parquet")):
        raise DataError(f"node config data-path={path!r} must be a .csv or .parquet file")
    return NodeData(path, str(node_config.get("text-column", "text")), str(node_config.get("label-column", "label")))


def node_config_tree(tree: dict[str, Any], data: NodeData) -> dict[str, Any]:
    """The run's raw config as this node sees it: its own file as `data.name`, no server test file.

    The server's data paths need not exist on the node; `data.labels` must be set (DataError if not).
    """
    section = dict(tree.get("data") or {})
    if not section.get("labels"):
        raise DataError(f"this SuperNode has its own data ({data.path}) but the server's config does not list "
                        f"the run's labels; set data.labels, e.g. data.labels=[neg, pos]")
    section.update(name=data.path, test_path=None, text_column=data.text_column, label_column=data.label_column)
    return {**tree, "data": section}


def load_node_data(data: NodeData, labels: list[str]) -> tuple[Dataset, DroppedRows]:
    """The node's examples as a Dataset (`text`, `label` as indexes into `labels`), and the rows left out
    for an empty text or label (also said on stderr, the SuperNode's log; the node's report carries
    their count to the server).

    Raises DataError for a missing file or column, an empty file, or a label outside `labels` (named).
    """
    frame, dropped = read_table(Path(data.path), data.text_column, data.label_column, "node")
    if dropped.dropped:
        print(f"data: {dropped.describe()}", file=sys.stderr)
    if frame.empty:
        raise DataError(f"node data {data.path} has no labelled examples")
    return to_dataset(frame, labels, f"node data {data.path}"), dropped


def label_counts(labels: np.ndarray | list[int], num_labels: int) -> list[int]:
    """Examples per label index 0..num_labels-1 (a node's label histogram)."""
    return [int(n) for n in np.bincount(np.asarray(labels, dtype=int), minlength=num_labels)]
