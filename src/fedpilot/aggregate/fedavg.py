"""Plain FedAvg: a data-size weighted mean of state dicts, taken key by key.

    avg[k] = sum_{i : k in S_i} w_i * S_i[k] / sum_{i : k in S_i} w_i

A key only counts the states that contain it, so a tensor some clients did not
return is averaged over the clients that did (not shrunk towards zero).
Floating tensors keep their dtype; the sum is accumulated in at least float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def validate_weights(weights: Sequence[float], count: int) -> None:
    """Reject weights that do not pair one-to-one with the states or are not positive and finite."""
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} states; need one weight per state")
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ValueError(f"weights must be positive and finite, got {bad}")


def weighted_average(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Average each key over the states holding it, weighted by data size, as FedAvg does."""
    validate_weights(weights, len(states))
    keys = dict.fromkeys(key for state in states for key in state)
    return {key: _average_key(key, states, weights) for key in keys}


def _average_key(key: str, states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> Tensor:
    """Weighted mean of one key over the states that contain it, in a precision that does not lose small updates."""
    pairs = [(state[key], weight) for state, weight in zip(states, weights) if key in state]
    first = pairs[0][0]
    shapes = {tuple(tensor.shape) for tensor, _ in pairs}
    if len(shapes) > 1:
        raise ValueError(f"tensor {key!r} has mismatched shapes across states: {sorted(shapes)}")
    total = sum(weight for _, weight in pairs)
    accumulate = torch.promote_types(first.dtype, torch.float32)
    mean = torch.stack([tensor.to(accumulate) * (weight / total) for tensor, weight in pairs]).sum(dim=0)
    return mean.to(first.dtype) if first.is_floating_point() else mean
