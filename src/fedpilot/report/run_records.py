"""A study's run records kept with its results, so that a study goes on on another machine.

With `records: true` in a study file, every finished run's record (`config.yaml`, `summary.json` and
`metrics.jsonl`, the last gzipped: about 15 KB, no weights) is copied to `results/<study>/runs/<run>/` as it finishes,
to be committed; before running, a run whose record is there, made with the config the study now
gives it, and whose directory under `runs/` is missing or unfinished gets the record back, so it
counts as finished and is not rerun. A record made with another config is not restored: the run
runs again and its new record replaces the old. Tables and plots read only these files.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from fedpilot.report.records import run_file_text

RECORD_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
"""What a record holds (metrics.jsonl as metrics.jsonl.gz); summary.json is written last."""
GZIPPED = {"metrics.jsonl"}


def copy_file(source: Path, target: Path, gzipped: bool) -> None:
    """Copy `source` to `target`, gzipping it (`target` gets `.gz`) when `gzipped`, with a zero timestamp in the
    gzip header so that the same file always packs to the same bytes (a record saved again is no change to git)."""
    if gzipped:
        with (source.open("rb") as raw, target.with_name(target.name + ".gz").open("wb") as out,
              gzip.GzipFile(source.name, "wb", fileobj=out, mtime=0) as packed):
            shutil.copyfileobj(raw, packed)
    else:
        shutil.copy2(source, target)


def unpack_file(record: Path, target: Path, name: str) -> None:
    """Write the record's `name` (stored gzipped or plain) to `target/name` (nothing when the record lacks it)."""
    text = run_file_text(record, name)
    if text is not None:
        (target / name).write_text(text)


def save_record(run_dir: Path, records_root: Path) -> Path | None:
    """Copy a finished run's record files to `records_root/<run name>/`, replacing an older record whole
    (written to a temporary folder first, so an interrupted copy never looks complete); None (nothing
    copied) when the run has no summary.json yet. Returns the record folder."""
    if not (run_dir / "summary.json").is_file():
        return None
    record = records_root / run_dir.name
    partial = records_root / f".{run_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            copy_file(run_dir / name, partial / name, name in GZIPPED)
    shutil.rmtree(record, ignore_errors=True)
    partial.rename(record)
    return record


def restore_record(run_dir: Path, records_root: Path, config_text: str) -> bool:
    """Put a kept record back as `run_dir` unless that run has finished there already or the record was
    made with another config than `config_text` (the run's config.yaml as the study now gives it); an
    interrupted directory (no summary.json) is replaced. Returns whether a record was restored."""
    record = records_root / run_dir.name
    if (run_dir / "summary.json").is_file() or not (record / "summary.json").is_file():
        return False
    if not (record / "config.yaml").is_file() or (record / "config.yaml").read_text() != config_text:
        return False
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    for name in RECORD_FILES:
        unpack_file(record, run_dir, name)
    return True
