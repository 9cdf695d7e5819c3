"""Helpers shared by the benchmark scripts: the packaged model and data at a given size, JSON output."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from fedpilot.config import load_config
from fedpilot.federation import Federation, build_federation

RESULTS = Path(__file__).resolve().parent.parent / "results"


def packaged_federation(*overrides: str) -> Federation:
    """The default model and data (one client holding 2,000 examples) with overrides."""
    return build_federation(load_config(None, ["clients.num_clients=1", "clients.per_round=1",
                                               "data.max_train_examples=2000", "eval.max_examples=100",
                                               *overrides]))


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write results/<name>.json with the machine's description attached."""
    RESULTS.mkdir(exist_ok=True)
    payload = {**payload, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                      "threads": torch.get_num_threads(), "processor": platform.machine()}}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
