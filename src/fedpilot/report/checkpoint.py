"""Checkpoints of a run after each complete round, written so a crash never leaves a torn one.

`checkpoint/` in the run directory holds `adapters.safetensors` (global LoRA tensors and head),
`strategy.safetensors` (the strategy's tensors, e.g. STAgg momentum) and `server.json` (round,
the strategy's other state, RNG states of Python, NumPy and torch). Each file is written to a
temporary name and renamed; `server.json` goes last and names its round, and both tensor files
carry that round in their metadata, so a mismatch after a crash is detected, never loaded.
Tensors are read only through safetensors (no pickle).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

State = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or torn: resume cannot trust it."""


@dataclass
class Checkpoint:
    """Everything needed to continue a run after `round_number`."""

    round_number: int
    global_state: State
    strategy_tensors: State
    strategy_meta: dict[str, Any]
    rng: dict[str, Any]


def rng_states() -> tuple[dict[str, Any], torch.Tensor]:
    """Python and NumPy RNG states as JSON, torch's as a tensor."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    python_state = random.getstate()
    return {"python": [python_state[0], list(python_state[1]), python_state[2]], "numpy": numpy_state}, torch.get_rng_state()


def restore_rng(rng: dict[str, Any], torch_state: torch.Tensor) -> None:
    """Put back the RNG states saved by `rng_states`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    n = rng["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(torch_state)


def _save_tensors(path: Path, tensors: State, round_number: int) -> None:
    """safetensors file written atomically, tagged with its round."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"round": str(round_number)})
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, round_number: int, global_state: State, strategy_tensors: State,
                    strategy_meta: dict[str, Any]) -> None:
    """Write the checkpoint of a complete round (tensors first, server.json last)."""
    folder = run_dir / "checkpoint"
    folder.mkdir(exist_ok=True)
    rng, torch_rng = rng_states()
    _save_tensors(folder / "adapters.safetensors", global_state, round_number)
    _save_tensors(folder / "strategy.safetensors", {**strategy_tensors, "__torch_rng__": torch_rng}, round_number)
    server = {"round": round_number, "strategy": strategy_meta, "rng": rng}
    tmp = folder / "server.json.tmp"
    tmp.write_text(json.dumps(server))
    os.replace(tmp, folder / "server.json")


def _load_tensors(path: Path, round_number: int) -> State:
    """Tensors of one checkpoint file, checking it belongs to `round_number`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            tagged = (handle.metadata() or {}).get("round")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"checkpoint file {path} is unreadable: {error}") from None
    if tagged != str(round_number):
        raise CheckpointError(f"checkpoint file {path.name} is from round {tagged}, server.json from {round_number}")
    return tensors


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read and verify the last complete round's checkpoint of a run."""
    folder = run_dir / "checkpoint"
    try:
        server = json.loads((folder / "server.json").read_text())
        round_number = int(server["round"])
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from") from None
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {folder / 'server.json'} is corrupt: {error}") from None
    adapters = _load_tensors(folder / "adapters.safetensors", round_number)
    strategy = _load_tensors(folder / "strategy.safetensors", round_number)
    torch_rng = strategy.pop("__torch_rng__", None)
    if torch_rng is None:
        raise CheckpointError(f"checkpoint {folder} lacks the torch RNG state")
    return Checkpoint(round_number, adapters, strategy, server["strategy"], {**server["rng"], "torch": torch_rng})
