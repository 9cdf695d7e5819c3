"""A run directory's model: written when the run finishes, exported again from its last checkpoint, loaded back.

`runs/<name>/model/` is the PEFT adapter folder of `models/export.py`. A run that finished before
it existed, or was interrupted, still has `checkpoint/adapters.safetensors` (the global state of its
last complete round): `fedpilot export` rebuilds the folder from that, and `predict` / `evaluate`
fall back to it when `model/` is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedpilot.config import Config, ConfigError, load_config
from fedpilot.data.sources import load_text_data
from fedpilot.models.export import ExportError, RunModel, load_adapter, peft_classifier, save_adapter, save_merged
from fedpilot.report.checkpoint import load_checkpoint

MODEL_DIR = "model"


def run_config(run_dir: Path) -> Config:
    """The resolved config a run directory was made with; ExportError when it is not a run directory."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ExportError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        return load_config(path)
    except ConfigError as error:
        raise ExportError(f"{path}: {error}") from None


def run_labels(run_dir: Path, config: Config) -> list[str]:
    """Label names of a run: from its summary.json, else (older or interrupted runs) from its dataset."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        names = json.loads(summary.read_text()).get("label_names")
        if names:
            return names
    data = config.data
    return load_text_data(data.name, data.text_column, data.label_column, data.test_path, data.test_fraction,
                          config.seed).label_names


def write_run_model(run_dir: Path, config: Config, state: dict[str, torch.Tensor], label_names: list[str],
                    round_number: int) -> Path:
    """Write `run_dir/model/` from a global state (the run's last round); returns the folder."""
    return save_adapter(peft_classifier(config, state, label_names), config, round_number, run_dir / MODEL_DIR)


def checkpoint_model(run_dir: Path) -> tuple[RunModel, Config, int]:
    """The model of a run's last checkpointed round, its config and that round.

    Raises ExportError when the directory has no checkpoint (CheckpointError when it is corrupt).
    """
    config = run_config(run_dir)
    if not (run_dir / "checkpoint" / "server.json").is_file():
        raise ExportError(f"{run_dir} has no {MODEL_DIR}/ and no checkpoint/ (no round finished): no model to load")
    checkpoint = load_checkpoint(run_dir)
    model = peft_classifier(config, checkpoint.global_state, run_labels(run_dir, config))
    return model, config, checkpoint.round_number


def load_run_model(run_dir: Path) -> RunModel:
    """The run's exported model when it has one, else its last checkpoint's; see `checkpoint_model` for errors."""
    if (run_dir / MODEL_DIR / "adapter_config.json").is_file():
        return load_adapter(run_dir / MODEL_DIR)
    return checkpoint_model(run_dir)[0]


def export_run(run_dir: Path, merged: Path | None = None) -> Path:
    """`fedpilot export`: `run_dir/model/` from the last checkpoint, or with `merged` a plain Transformers folder.

    Returns the folder written. Raises ExportError (see `checkpoint_model`).
    """
    if merged is not None:
        return save_merged(load_run_model(run_dir), merged)
    model, config, round_number = checkpoint_model(run_dir)
    return save_adapter(model, config, round_number, run_dir / MODEL_DIR)
