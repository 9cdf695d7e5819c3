"""A deep model's cost profile from shallow copies of its config: its blocks repeat, so its terms do.

The blocks of one model are identical, and what a unit holds and saves depends only on the blocks
from it to the top. So, from the profiles of copies with L and L + 1 blocks (`truncated`), the
profile of the same model with n blocks is (`extend`, all in bytes):

    scalar v (frozen, head, head_path, peak, head_peak, per-example slopes): v(n) = v(L+1) + (n-L-1) (v(L+1) - v(L))
    per-unit t, top L-1 units k = n-L+1..n-1: t_n[k] = t_{L+1}[k - n + L + 1]   (same blocks above)
    unit 0:                                  t_n[0] = t_{L+1}[0] + (n-L-1) (t_{L+1}[0] - t_L[0])
    units k = 1..n-L:                        t_n[k] = t_{L+1}[1] + (n-L-k) (t_{L+1}[1] - t_L[1])

(for path[k], t_{L+1}[1] - t_L[1] is one more block between k and the top). The profiler uses this
only where it predicts a third, measured depth exactly (`fedpilot.memory.profiler.measure_profile`).
"""

from __future__ import annotations

import copy
from dataclasses import replace

from transformers import PretrainedConfig

from fedpilot.memory.cost import CostProfile

SCALARS = ("frozen", "head", "head_path", "peak", "head_peak", "head_path_per_example", "peak_per_example",
           "head_peak_per_example")
PER_UNIT = ("state", "path", "lora", "path_per_example", "lora_per_example")


def depth_of(config: PretrainedConfig) -> int | None:
    """The number of transformer blocks, or None where it is unknown or blocks differ by configuration
    (a per-layer list such as `layer_types` whose entries are not all equal)."""
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        return None
    if any(len(set(map(repr, values))) > 1 for values in _per_layer(config, depth).values()):
        return None
    return depth


def truncated(config: PretrainedConfig, depth: int) -> PretrainedConfig:
    """A copy of a config of identical blocks (`depth_of` is not None) with `depth` of them."""
    short = copy.deepcopy(config)
    for name, values in _per_layer(config, config.num_hidden_layers).items():
        setattr(short, name, values[:depth])
    short.num_hidden_layers = depth
    return short


def _per_layer(config: PretrainedConfig, depth: int) -> dict[str, list | tuple]:
    """The config's list attributes with one entry per block."""
    return {name: value for name, value in vars(config).items()
            if isinstance(value, (list, tuple)) and len(value) == depth}


def extend(low: CostProfile, high: CostProfile, depth: int) -> CostProfile:
    """The profile at `depth` blocks from profiles of the same model at L and L + 1 blocks (module formulas)."""
    if high.num_units != low.num_units + 1 or low.num_units < 2 or depth < high.num_units:
        raise ValueError(f"cannot extend profiles of {low.num_units} and {high.num_units} blocks to {depth}")
    more = depth - high.num_units
    scalars = {name: _extend_scalar(getattr(low, name), getattr(high, name), more) for name in SCALARS}
    units = {name: _extend_units(getattr(low, name), getattr(high, name), depth) for name in PER_UNIT}
    return replace(high, **scalars, **units)


def _extend_scalar(low: float | None, high: float | None, more: int) -> float | None:
    """A scalar term `more` blocks deeper than at `high` (module formula); None (no separate head peak) stays None."""
    return None if high is None or low is None else high + more * (high - low)


def _extend_units(low: tuple, high: tuple, depth: int) -> tuple:
    """One per-unit term at `depth` blocks from its values at L and L + 1 blocks (module formulas)."""
    more, middle = depth - len(high), depth - len(low)
    bottom = high[0] + more * (high[0] - low[0])
    return (bottom, *(high[1] + (middle - k) * (high[1] - low[1]) for k in range(1, middle + 1)), *high[2:])
