"""LoRA at a lower rank than the model's: slicing, padding, and what a lower rank costs.

A PEFT LoRA branch adds scale * B A x with A = lora_A.weight (r_max x in), B = lora_B.weight
(out x r_max) and scale = alpha / r_max. Rank r <= r_max keeps the first r components:

    A_r = A[:r, :],  B_r = B[:, :r],  B_r A_r = sum_{c < r} B[:, c] A[c, :]

so the rank-r model is exactly the rank-r_max model whose components r..r_max-1 are zero. The
scale stays alpha / r_max at every rank (PEFT's value for the model as built), so a component
means the same on every client and the server can add them up without rescaling.

`reduced_rank` makes the smaller tensors real for a client's training: the A and B Parameters
of the trained keys are swapped for new, smaller Parameters (copies of their leading rows or
columns), so gradients, AdamW moments and the returned tensors all have the small shapes; on
exit the full-size Parameters are put back untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from fedpilot.memory.cost import CostProfile, mem_of


def lora_factor(key: str) -> str | None:
    """"A" for a LoRA A weight (rank along dim 0), "B" for a LoRA B weight (rank along dim 1), else None."""
    parts = key.split(".")
    return "A" if "lora_A" in parts else "B" if "lora_B" in parts else None


def partner_key(key: str) -> str:
    """The B key of an A key (same module)."""
    return key.replace("lora_A", "lora_B", 1)


def tensor_rank(key: str, tensor: torch.Tensor) -> int | None:
    """The LoRA rank a tensor holds: rows of an A weight, columns of a B weight; None for other tensors."""
    factor = lora_factor(key)
    return None if factor is None else tensor.shape[0 if factor == "A" else 1]


def slice_rank(key: str, tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """The first `rank` components: A[:rank, :] or B[:, :rank]; other tensors unchanged (a view, not a copy)."""
    factor = lora_factor(key)
    if factor == "A":
        return tensor[:rank]
    return tensor[:, :rank] if factor == "B" else tensor


def pad_rank(key: str, tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """An A or B weight zero-padded to `rank` components (A: more rows, B: more columns)."""
    factor = lora_factor(key)
    have = tensor_rank(key, tensor)
    if factor is None or have == rank:
        return tensor
    if have > rank:
        raise ValueError(f"{key!r} has rank {have}, more than {rank}")
    if factor == "A":
        return torch.cat([tensor, tensor.new_zeros(rank - have, tensor.shape[1])], dim=0)
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], rank - have)], dim=1)


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    """The module holding parameter `key` and the parameter's attribute name."""
    path, _, name = key.rpartition(".")
    return model.get_submodule(path), name


@contextlib.contextmanager
def reduced_rank(model: nn.Module, ranks: Mapping[str, int]) -> Iterator[None]:
    """Inside the block, each LoRA A/B weight named in `ranks` is a new Parameter of its rank.

    Each is a copy of the leading components of the full-size weight; the full-size Parameter
    objects are put back on exit, unchanged, so the shared model is as before for the next client.
    Keys that are not LoRA factors, or whose rank is already at most the asked one, are left alone;
    an empty mapping changes nothing. Raises ValueError for a rank below 1.
    """
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for key, rank in ranks.items():
            if rank <= 0:
                raise ValueError(f"rank must be positive, got {rank} for {key!r}")
            module, name = _owner(model, key)
            full = getattr(module, name)
            if lora_factor(key) is None or tensor_rank(key, full) <= rank:
                continue
            small = nn.Parameter(slice_rank(key, full.detach(), rank).clone(), requires_grad=full.requires_grad)
            setattr(module, name, small)
            swapped.append((module, name, full))
        yield
    finally:
        for module, name, full in reversed(swapped):
            setattr(module, name, full)


def unit_saving(profile: CostProfile, unit: int, weight_bytes: Sequence[int], rank: int) -> float:
    """Bytes unit j saves by training at rank r instead of the profiled rank R: (1 - r / R) (M_state(j) + W_j).

    Raises ValueError unless 1 <= r <= R.
    """
    full = profile.rank
    if not 0 < rank <= full:
        raise ValueError(f"rank must be in 1..{full}, got {rank}")
    return (full - rank) * (profile.state[unit] + weight_bytes[unit]) / full


def mem_at_ranks(profile: CostProfile, ranks: Mapping[int, int], weight_bytes: Sequence[int]) -> int:
    """Mem(S) when each unit j of S = ranks.keys() trains at rank r_j instead of the profiled rank R:

        Mem_r(S) = Mem(S) - sum_{j in S} (1 - r_j / R) * (M_state(j) + W_j)

    M_state(j) (LoRA grads + AdamW moments) and W_j (unit j's LoRA weights, part of M_frozen,
    `weight_bytes[j]`) are linear in the rank. Activations are left at their rank-R values: a_j is
    mostly the LoRA branch's input, which does not depend on the rank, so this is an upper bound.
    Bytes; the saving is rounded down. Raises ValueError for a rank outside 1..R.
    """
    saving = sum(unit_saving(profile, j, weight_bytes, r) for j, r in ranks.items())
    return mem_of(profile, tuple(ranks)) - math.floor(saving)
