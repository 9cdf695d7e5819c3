"""Per-round metrics for TensorBoard (`output.tensorboard: true`), through PyTorch's `SummaryWriter`.

Tags, each with the round number as step: `accuracy/test`, `accuracy/val`, `loss/test`,
`loss/val` (rounds that were evaluated), `loss/clients_mean` and `loss/client_<id>` (clients
that trained), `coverage/unit_<j>` (clients that trained unit j), `bytes/up` and `bytes/down`
(the round's summed client upload and download).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

EVALUATED = {"test_accuracy": "accuracy/test", "val_accuracy": "accuracy/val", "test_loss": "loss/test",
             "val_loss": "loss/val"}


def round_scalars(record: Mapping[str, Any], units: int) -> dict[str, float]:
    """The scalars of one round record, by tag (see the module docstring)."""
    scalars = {tag: float(record[key]) for key, tag in EVALUATED.items() if record.get(key) is not None}
    trained = [c for c in record["clients"] if "loss" in c]
    scalars.update({f"loss/client_{c['id']}": float(c["loss"]) for c in trained})
    if trained:
        scalars["loss/clients_mean"] = sum(c["loss"] for c in trained) / len(trained)
    scalars.update({f"coverage/unit_{j}": float(sum(j in c["units"] for c in trained)) for j in range(units)})
    scalars["bytes/up"] = float(sum(c.get("sent_bytes", 0) for c in record["clients"]))
    scalars["bytes/down"] = float(sum(c.get("download_bytes", 0) for c in record["clients"]))
    return scalars


class RoundBoard:
    """A TensorBoard event log in `folder`, one step per round."""

    def __init__(self, folder: Path, units: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))
        self.units = units

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Write one round's scalars and flush them to disk."""
        for tag, value in round_scalars(record, self.units).items():
            self.writer.add_scalar(tag, value, record["round"])
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
