"""A study's run records kept with its results, so that a study goes on on another machine.

With `records: true` in a study file, every finished run's record (`config.yaml`, `summary.json`,
`metrics.jsonl`: tens of KB, no weights) is copied to `results/<study>/runs/<run>/` as it finishes,
to be committed; before running, a run whose record is there and whose directory under `runs/` is
missing or unfinished gets the record back, so it counts as finished and is not rerun. Tables and
plots read only these files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

RECORD_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
"""What a record holds; summary.json is written last, so a record with it is complete."""


def save_record(run_dir: Path, records_root: Path) -> Path | None:
    """Copy a finished run's record files to `records_root/<run name>/`; None (nothing copied) when the run
    has no summary.json yet. Returns the record folder."""
    if not (run_dir / "summary.json").is_file():
        return None
    record = records_root / run_dir.name
    record.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, record / name)
    return record


def restore_record(run_dir: Path, records_root: Path) -> bool:
    """Put a kept record back as `run_dir` unless that run has finished there already; an interrupted
    directory (no summary.json) is replaced. Returns whether a record was restored."""
    record = records_root / run_dir.name
    if (run_dir / "summary.json").is_file() or not (record / "summary.json").is_file():
        return False
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    for name in RECORD_FILES:
        if (record / name).is_file():
            shutil.copy2(record / name, run_dir / name)
    return True
