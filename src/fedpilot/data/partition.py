"""Split a training set over clients with flwr-datasets partitioners, reproducibly from a seed.

The Dirichlet partitioner redraws until every client holds `MIN_CLIENT_EXAMPLES`, warning once per
failed draw; those warnings are held back, and a draw that never succeeds is one DataError that
names `partition.alpha` and `clients.num_clients` and what would work instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
from datasets import Dataset, disable_progress_bars
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner, Partitioner

from fedpilot.data.sources import DataError


MIN_CLIENT_EXAMPLES = 2
"""The fewest examples a Dirichlet draw may give a client (flwr-datasets' `min_partition_size`)."""

ALPHA_LADDER = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""The larger `partition.alpha` values tried, in order, when a Dirichlet draw is infeasible."""


def make_partitioner(kind: str, num_clients: int, alpha: float, classes_per_client: int,
                     num_labels: int, seed: int) -> Partitioner:
    """The flwr-datasets partitioner for `kind`, checked against the label count."""
    if kind == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if kind == "dirichlet":
        return DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=alpha,
                                    min_partition_size=MIN_CLIENT_EXAMPLES, self_balancing=False, seed=seed)
    if kind == "pathological":
        if classes_per_client > num_labels:
            raise DataError(f"partition.classes_per_client={classes_per_client} exceeds the "
                            f"dataset's {num_labels} labels")
        return PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                       num_classes_per_partition=classes_per_client,
                                       class_assignment_mode="first-deterministic", seed=seed)
    raise DataError(f"unknown partition kind {kind!r}; valid: iid, dirichlet, pathological")


def load_parts(partitioner: Partitioner, num_clients: int) -> list[Dataset]:
    """The first `num_clients` partitions, with the partitioner's warnings held back (the Dirichlet
    partitioner warns once per failed draw, each warning listing every client's alpha) and the datasets
    library's progress bars off (a partitioner flattens a shuffled or split dataset, with a bar each time).

    Raises the partitioner's ValueError (for Dirichlet: no draw gave every client its minimum).
    """
    disable_progress_bars()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [partitioner.load_partition(i) for i in range(num_clients)]


def dirichlet_feasible(train: Dataset, num_clients: int, alpha: float, seed: int) -> bool:
    """Whether the seeded Dirichlet draw over `num_clients` gives every client `MIN_CLIENT_EXAMPLES`."""
    partitioner = make_partitioner("dirichlet", num_clients, alpha, 1, train.features["label"].num_classes, seed)
    partitioner.dataset = train
    try:
        load_parts(partitioner, 1)
    except ValueError:
        return False
    return True


def halvings(count: int) -> Iterator[int]:
    """count // 2, count // 4, ... down to 1."""
    while count > 1:
        count //= 2
        yield count


def infeasible_dirichlet(train: Dataset, num_clients: int, alpha: float, seed: int) -> DataError:
    """The error for a Dirichlet split that never gave every client its minimum, with a larger alpha and a
    smaller client count that do work (at this seed), when the ladder and halving find them."""
    larger = next((a for a in ALPHA_LADDER if a > alpha and dirichlet_feasible(train, num_clients, a, seed)), None)
    fewer = next((n for n in halvings(num_clients) if dirichlet_feasible(train, n, alpha, seed)), None)
    options = [f"a larger partition.alpha ({larger:g} works with {num_clients} clients)" if larger
               else "a larger partition.alpha",
               f"fewer clients.num_clients ({fewer} work at alpha {alpha:g})" if fewer else "fewer clients.num_clients"]
    return DataError(f"partition.alpha={alpha:g} is too skewed for clients.num_clients={num_clients} over "
                     f"{len(train)} training examples ({len(train) / num_clients:.1f} per client on average): "
                     f"every seeded Dirichlet draw left some client with fewer than {MIN_CLIENT_EXAMPLES} "
                     f"examples, the least a client may hold. Use {options[0]} or {options[1]}")


def partition(train: Dataset, kind: str, num_clients: int, seed: int, alpha: float = 0.5,
              classes_per_client: int = 2) -> list[Dataset]:
    """One Dataset per client; the IID split shuffles first so shards are random.

    Raises DataError for more clients than examples, a Dirichlet alpha too small for the client count
    (naming a larger alpha and a smaller count that work), or a client left without data.
    """
    if num_clients > len(train):
        raise DataError(f"clients.num_clients={num_clients} exceeds the {len(train)} training examples clients "
                        "can hold (after data.val_fraction's validation split)")
    num_labels = train.features["label"].num_classes
    partitioner = make_partitioner(kind, num_clients, alpha, classes_per_client, num_labels, seed)
    partitioner.dataset = train.shuffle(seed=seed) if kind == "iid" else train
    try:
        parts = load_parts(partitioner, num_clients)
    except ValueError as error:
        if kind == "dirichlet":
            raise infeasible_dirichlet(train, num_clients, alpha, seed) from None
        raise DataError(f"cannot partition {len(train)} examples over {num_clients} clients ({kind}): {error}") from None
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise DataError(f"partition {kind} left clients {empty} without data; use fewer clients")
    return parts


def label_histogram(part: Dataset, num_labels: int) -> np.ndarray:
    """Count of each label in one client's data."""
    return np.bincount(np.asarray(part["label"]), minlength=num_labels)
