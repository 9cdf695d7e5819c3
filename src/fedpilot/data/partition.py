"""Split a training set over clients with flwr-datasets partitioners, reproducibly from a seed."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner, Partitioner

from fedpilot.data.sources import DataError


def make_partitioner(kind: str, num_clients: int, alpha: float, classes_per_client: int,
                     num_labels: int, seed: int) -> Partitioner:
    """The flwr-datasets partitioner for `kind`, checked against the label count."""
    if kind == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if kind == "dirichlet":
        return DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=alpha,
                                    min_partition_size=2, self_balancing=False, seed=seed)
    if kind == "pathological":
        if classes_per_client > num_labels:
            raise DataError(f"partition.classes_per_client={classes_per_client} exceeds the "
                            f"dataset's {num_labels} labels")
        return PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                       num_classes_per_partition=classes_per_client,
                                       class_assignment_mode="first-deterministic", seed=seed)
    raise DataError(f"unknown partition kind {kind!r}; valid: iid, dirichlet, pathological")


def partition(train: Dataset, kind: str, num_clients: int, seed: int, alpha: float = 0.5,
              classes_per_client: int = 2) -> list[Dataset]:
    """One Dataset per client; the IID split shuffles first so shards are random."""
    if num_clients > len(train):
        raise DataError(f"clients.num_clients={num_clients} exceeds the {len(train)} training examples clients "
                        "can hold (after data.val_fraction's validation split)")
    num_labels = train.features["label"].num_classes
    partitioner = make_partitioner(kind, num_clients, alpha, classes_per_client, num_labels, seed)
    partitioner.dataset = train.shuffle(seed=seed) if kind == "iid" else train
    try:
        parts = [partitioner.load_partition(i) for i in range(num_clients)]
    except ValueError as error:
        raise DataError(f"cannot partition {len(train)} examples over {num_clients} clients ({kind}): {error}") from None
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise DataError(f"partition {kind} left clients {empty} without data; use fewer clients")
    return parts


def label_histogram(part: Dataset, num_labels: int) -> np.ndarray:
    """Count of each label in one client's data."""
    return np.bincount(np.asarray(part["label"]), minlength=num_labels)
