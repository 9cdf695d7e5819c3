"""GPU names a memory budget may give, and their memory in bytes.

A name is matched case- and separator-insensitively ("RTX 4090", "rtx-4090", "rtx4090" are one
name), with or without its memory size ("a100-80g", "A100 80GB", "a100-80gib"), and an optional
"nvidia" / "geforce" prefix. A name without the size must fit one card ("t4", "rtx3060"); "a100"
fits two and is an error that lists both.
"""

from __future__ import annotations

import difflib
import re

MiB = 2**20

GPU_MIB = {
    "t4-16g": 15360, "v100-16g": 16384, "v100-32g": 32768, "a10-24g": 23028, "l4-24g": 23034,
    "a100-40g": 40960, "a100-80g": 81920, "h100-80g": 81559, "h200-141g": 143771,
    "a6000-48g": 49140, "l40s-48g": 46068,
    "gtx1060-6g": 6144, "rtx2060-6g": 6144, "rtx3060-laptop-6g": 6144, "rtx3060-12g": 12288,
    "rtx3070-8g": 8192, "rtx3070-laptop-8g": 8192, "rtx3080-10g": 10240, "rtx3090-24g": 24576,
    "rtx4060-8g": 8188, "rtx4060-laptop-8g": 8188, "rtx4070-12g": 12282, "rtx4080-16g": 16376,
    "rtx4090-laptop-16g": 16376, "rtx4090-24g": 24564,
}
"""Total memory of each GPU in MiB, as nvidia-smi reports it (the card's nominal size where we had no
reading). Names are `<model>-<size>g`; the model part alone is accepted when it names one card."""

GPUS = {name: mib * MiB for name, mib in GPU_MIB.items()}
"""Total memory of each GPU in bytes."""

GPU_RESERVE_FIXED, GPU_RESERVE_FRACTION = 768 * MiB, 0.05
"""Kept back from a GPU's total for the CUDA context and allocator fragmentation: 0.75 GiB + 5 %."""


class UnknownGpu(ValueError):
    """A name that matches no GPU, or more than one (the message lists the candidates)."""


def squash(text: str) -> str:
    """Lower case without separators or vendor prefixes; a trailing size "80GB"/"80GiB" becomes "80g"."""
    key = re.sub(r"[\s_.\-/]+", "", str(text).lower())
    key = re.sub(r"^(nvidia)?(geforce)?", "", key)
    return re.sub(r"(\d+)g(i?b)?$", r"\1g", key)


def _model_part(name: str) -> str:
    """The name without its memory size: "rtx3060-laptop-6g" -> "rtx3060laptop"."""
    return squash(name.rsplit("-", 1)[0])


def gpu_matches(text: str) -> list[str]:
    """Canonical names the text may mean: an exact name, else every card whose model part it spells."""
    key = squash(text)
    exact = [name for name in GPUS if squash(name) == key]
    return exact or [name for name in GPUS if _model_part(name) == key]


def find_gpu(text: str) -> str:
    """The one canonical GPU name the text means; `UnknownGpu` names the candidates or the near misses."""
    matches = gpu_matches(text)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownGpu(f"GPU name {text!r} is ambiguous: {', '.join(matches)}; give the memory size too")
    near = difflib.get_close_matches(squash(text), {squash(n): n for n in GPUS}, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(_canonical(k) for k in near)}? " if near else ""
    raise UnknownGpu(f"unknown GPU name {text!r}; {hint}known: {', '.join(GPUS)}")


def _canonical(key: str) -> str:
    """The canonical name of a squashed one."""
    return next(name for name in GPUS if squash(name) == key)


def usable_gpu_bytes(name: str) -> int:
    """Bytes a training step may use on a GPU: its total memory minus the reserve.

    Raises `UnknownGpu` if the name means no single known GPU.
    """
    return usable_bytes(GPUS[find_gpu(name)])


def usable_bytes(total: int) -> int:
    """Bytes a training step may use on a GPU of `total` bytes: total - 0.75 GiB - 5 % of total."""
    return int(total - GPU_RESERVE_FIXED - GPU_RESERVE_FRACTION * total)
