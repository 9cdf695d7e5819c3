"""The cost profile at module granularity: each adapted Linear a unit, measured per block and subset.

The block profile (`fedpilot.memory.profiler.measure_profile`) gives the terms that do not depend on
which units train (M_frozen, M_head, A_head, M_peak). On top of it, for every block b and every
non-empty subset T of its adapted Linears (a bit mask, bit i = the block's i-th unit), one training
step each measures (bytes, `fedpilot.memory.cost` module docstring):

    lowest[b][T] = measured(T)            - measured({})        T alone: activations from block b up
    above[b][T]  = measured(B0 + T)       - measured(B0)        b >= 1, B0 = every unit of block 0

where measured(S) is a step's resident bytes plus saved activations (`StepCost.measured`). Blocks
above the lowest trained one are in the graph whatever they train, so what T adds there is the same
whichever lower block is trained. Forwards at batch + 1 give each entry's bytes per example. Every
block is measured (no shallow copies), 2 (2^m - 1) steps per block of m adapted Linears, so `lora.targets`
with many Linears per block make a slow profile: 4 targets give 30 steps per block.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from torch import nn
from transformers import PretrainedConfig

from fedpilot.memory.build import AUTOCAST, build_model, make_batch
from fedpilot.memory.cost import CostProfile, place_in_block
from fedpilot.memory.meta import meta_like_cpu
from fedpilot.memory.profiler import ProfileError, measure_saved, measure_step
from fedpilot.models.units import UnitMap, module_units

MAX_MODULES_PER_BLOCK = 6
"""More adapted Linears per block than this make 2^m subsets too many to measure and to choose from."""

Plan = tuple[int, ...]


def block_units(unit_map: UnitMap) -> list[list[int]]:
    """The unit indices of each block, bottom to top."""
    blocks: dict[int, list[int]] = {}
    for unit in unit_map.units:
        blocks.setdefault(unit.block, []).append(unit.index)
    return [blocks[b] for b in sorted(blocks)]


def subset(units: list[int], mask: int) -> Plan:
    """The units of a block whose bits are set in `mask`."""
    return tuple(j for i, j in enumerate(units) if mask >> i & 1)


def table_plans(unit_map: UnitMap) -> tuple[list[Plan], list[Plan]]:
    """(lowest plans: every non-empty subset of each block alone; above plans: block 0 plus each subset of
    each higher block), both ordered by block, then mask."""
    per_block = block_units(unit_map)
    base = tuple(per_block[0])
    lowest = [subset(units, mask) for units in per_block for mask in range(1, 2 ** len(units))]
    above = [tuple(sorted(set(base) | set(subset(units, mask))))
             for units in per_block[1:] for mask in range(1, 2 ** len(units))]
    return lowest, above


def rows(values: list[float], per_block: list[list[int]], skip_first: bool = False) -> tuple[tuple, ...]:
    """Flat per-(block, mask) values as a [block][mask - 1] table (from block 1 when `skip_first`)."""
    out, start = [], 0
    for units in per_block[1:] if skip_first else per_block:
        size = 2 ** len(units) - 1
        out.append(tuple(values[start:start + size]))
        start += size
    return tuple(out)


def module_profile(block_profile: CostProfile, config: PretrainedConfig, dtype: str, device: str) -> CostProfile:
    """`block_profile` with module units: per-unit state, the lowest/above tables and their slopes.

    M_peak is the larger of the block profile's and every measured step's transient that trains units
    (the head-only step keeps the block profile's M_peak,head). Per-unit `path`
    and `lora` are the single-unit split (Mem({j}) = fixed_mem + path[j] + unit_mem[j], unit_mem[j] =
    above[b][{j}]), for tables and reach. Raises ProfileError (a ModelError) when a block has more than
    MAX_MODULES_PER_BLOCK adapted Linears.
    """
    p = block_profile
    net, blocks = build_model(config, dtype, p.rank, p.targets, device)
    unit_map = module_units(blocks)
    per_block = block_units(unit_map)
    widest = max(len(units) for units in per_block)
    if widest > MAX_MODULES_PER_BLOCK:
        raise ProfileError(f"lora.granularity=module measures every subset of a block's adapted Linears; {widest} per "
                         f"block is more than {MAX_MODULES_PER_BLOCK}: name fewer lora.targets")
    lowest, above = table_plans(unit_map)
    plans = [(), *lowest, *above]
    steps = _measured(net, unit_map, config, p.batch, p.length, dtype, device, plans)
    forwards = _saved(net, unit_map, config, p.batch + 1, p.length, dtype, device, plans)
    base = plans.index(tuple(per_block[0]))
    low = range(1, 1 + len(lowest))
    high = range(1 + len(lowest), len(plans))
    low_table = rows([steps[i][0] - steps[0][0] for i in low], per_block)
    low_slopes = rows([_slope(steps, forwards, i, 0) for i in low], per_block)
    above_table = (low_table[0], *rows([steps[i][0] - steps[base][0] for i in high], per_block, skip_first=True))
    above_slopes = (low_slopes[0], *rows([_slope(steps, forwards, i, base) for i in high], per_block,
                                         skip_first=True))
    block_of = tuple(unit.block for unit in unit_map.units)
    state = tuple(steps[1 + lowest.index((j,))][3][j] for j in range(len(block_of)))
    alone = [_single(block_of, j) for j in range(len(block_of))]
    unit_cost = [above_table[b][i] for b, i in alone]
    return replace(p, state=state, blocks=block_of, lowest=low_table, above=above_table,
                   lowest_per_example=low_slopes, above_per_example=above_slopes,
                   path=tuple(low_table[b][i] - c for (b, i), c in zip(alone, unit_cost)),
                   lora=tuple(c - s for c, s in zip(unit_cost, state)),
                   path_per_example=tuple(low_slopes[b][i] - above_slopes[b][i] for b, i in alone),
                   lora_per_example=tuple(above_slopes[b][i] for b, i in alone),
                   peak=max(p.peak, *(step[2] for step, plan in zip(steps, plans) if plan)))


def _single(block_of: tuple[int, ...], unit: int) -> tuple[int, int]:
    """(block, table column) of the set holding `unit` alone."""
    return block_of[unit], (1 << place_in_block(block_of, unit)) - 1


def _measured(net: nn.Module, unit_map: UnitMap, config: PretrainedConfig, batch: int, length: int, dtype: str,
              device: str, plans: list[Plan]) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """(measured bytes, saved bytes, transient, per-unit state) of a full step of each plan."""
    inputs = make_batch(config, batch, length, dtype, device)
    with meta_like_cpu() if device == "meta" else contextlib.nullcontext():
        steps = [measure_step(net, unit_map, plan, inputs, AUTOCAST.get(dtype)) for plan in plans]
    return [(s.measured, s.saved, s.transient, s.state) for s in steps]


def _saved(net: nn.Module, unit_map: UnitMap, config: PretrainedConfig, batch: int, length: int, dtype: str,
           device: str, plans: list[Plan]) -> list[int]:
    """Saved bytes of a forward of each plan."""
    inputs = make_batch(config, batch, length, dtype, device)
    with meta_like_cpu() if device == "meta" else contextlib.nullcontext():
        return [measure_saved(net, unit_map, plan, inputs, AUTOCAST.get(dtype))[0] for plan in plans]


def _slope(steps: list[tuple[int, int, int, tuple[int, ...]]], forwards: list[int], plan: int, base: int) -> float:
    """Bytes per example of plan's saved bytes beyond the base plan's: batch + 1 (forwards) less batch (steps)."""
    return float((forwards[plan] - forwards[base]) - (steps[plan][1] - steps[base][1]))
