"""Who in a fleet can train what: per client kind and per unit, from a cost profile alone.

Per kind: whether its memory holds the frozen model and the head (Mem({}) = fixed_mem), the deepest
unit it can train, the knapsack's assignment (`assign.options.solve_options` over the LoRA rank options,
on the costs and grids the fedpilot strategy uses; over blocks of module units for a module-granularity
profile) under given unit values, its Mem and traffic per round, and the largest batch at which it could train every
unit. A unit's value at rank option r is its value times r / R, as fedpilot values a unit without
scores, and 0 for a kind that cannot train it alone (as the strategy values units outside a client's
affordable ones). Reach (deepest unit, `can_train`) counts a unit at the lowest rank option, as the strategy's
affordable units do. Per unit: how many clients of the fleet can train it alone
(`can_train`) and how many the assignments give it (`assigned`). All sizes are bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fedpilot.assign.budgets import parse_upload
from fedpilot.assign.ig_score import rank_shares
from fedpilot.assign.options import rank_options, solve_options
from fedpilot.assign.reach import lora_bytes, lowest_fitting, upload_units
from fedpilot.fleet.spec import ClientKind, Fleet
from fedpilot.memory.cost import CostProfile, budget_bytes, mem_of
from fedpilot.models.rank import mem_at_ranks

MAX_BATCH = 2**16
"""Largest batch size `largest_batch` tries."""


@dataclass(frozen=True)
class KindPlan:
    """The plan of one client kind (bytes; `upload_budget` None = unlimited); `ranks[i]` is the LoRA rank of
    `units[i]`.

    A kind that cannot take part has `units == ()`, `mem_bytes` and traffic 0, and its `reason`.
    """

    name: str
    count: int
    memory_budget: int
    upload_budget: int | None
    takes_part: bool
    deepest_unit: int | None
    upload_units: int
    units: tuple[int, ...]
    value: float
    mem_bytes: int
    upload_bytes: int
    download_bytes: int
    largest_batch_all_units: int
    ranks: tuple[int, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class FleetPlan:
    """The plan of a fleet: the profile's key facts, each kind, and per unit its coverage (clients); `blocks[j]`
    is module unit j's block at module granularity (empty at block granularity, where unit j is block j)."""

    model: str
    batch: int
    length: int
    dtype: str
    rank: int
    rank_options: tuple[int, ...]
    frozen_bytes: int
    head_only_bytes: int
    all_units_bytes: int
    unit_upload_bytes: tuple[int, ...]
    values: tuple[float, ...]
    kinds: tuple[KindPlan, ...]
    can_train: tuple[int, ...]
    assigned: tuple[int, ...]
    blocks: tuple[int, ...] = ()

    @property
    def granularity(self) -> str:
        """"module" when units are adapted Linears (`blocks` set), else "block"."""
        return "module" if self.blocks else "block"

    def to_json(self) -> dict:
        """A JSON-ready dict of every field, and the granularity."""
        return {**asdict(self), "granularity": self.granularity}


def plan_fleet(profile: CostProfile, fleet: Fleet, values: Sequence[float] | None = None,
               ranks: Sequence[int] | None = None) -> FleetPlan:
    """Plan every kind of the fleet under the unit values (uniform when None) and LoRA rank options (the
    profiled rank alone when None). Raises ValueError for a value count other than the unit count or rank
    options that are not ascending, distinct and within 1..R ending at R (the profiled rank)."""
    n = profile.num_units
    values = tuple(float(v) for v in values) if values is not None else (1.0,) * n
    if len(values) != n:
        raise ValueError(f"{len(values)} unit values for a model with {n} units")
    options = checked_ranks(ranks, profile.rank)
    reach = lowest_option_reach(profile, options)
    kinds = tuple(plan_kind(profile, kind, values, reach, options) for kind in fleet.kinds)
    alone = [fits_alone(reach, k.memory_budget, k.upload_budget) for k in kinds]
    can_train = tuple(sum(k.count for k, fits in zip(kinds, alone) if k.takes_part and fits[j]) for j in range(n))
    assigned = tuple(sum(k.count for k in kinds if j in k.units) for j in range(n))
    return FleetPlan(profile.model, profile.batch, profile.length, profile.dtype, profile.rank, options,
                     profile.frozen, profile.fixed_mem, mem_of(profile, range(n)), lora_bytes(profile), values, kinds,
                     can_train, assigned, profile.blocks)


def checked_ranks(ranks: Sequence[int] | None, full: int) -> tuple[int, ...]:
    """The rank options as a tuple, (full,) when None; ValueError unless ascending, distinct, in 1..full and
    ending at full (the profiled rank, the costs' reference)."""
    if ranks is None:
        return (full,)
    options = tuple(int(r) for r in ranks)
    if not options or list(options) != sorted(set(options)) or options[0] < 1 or options[-1] != full:
        raise ValueError(f"rank options must be ascending, distinct, within 1..{full} and end at {full} "
                         f"(the LoRA rank), got {list(options)}")
    return options


def plan_kind(profile: CostProfile, kind: ClientKind, values: tuple[float, ...],
              reach: tuple[np.ndarray, np.ndarray], ranks: tuple[int, ...]) -> KindPlan:
    """One kind's plan: takes part or why not, deepest unit, assignment (units and their ranks), Mem,
    traffic, largest batch; `reach` from `lowest_option_reach`, `ranks` as `checked_ranks` returns them."""
    memory, upload = budget_bytes(kind.memory, profile), parse_upload(kind.upload)
    uploads, head_weights = lora_bytes(profile), head_bytes(profile)
    common = dict(name=kind.name, count=kind.count, memory_budget=memory, upload_budget=upload,
                  upload_units=upload_units(uploads, upload),
                  largest_batch_all_units=largest_batch(profile, range(profile.num_units), memory))
    if memory < profile.fixed_mem:
        return KindPlan(**common, takes_part=False, deepest_unit=None, units=(), value=0.0, mem_bytes=0,
                        upload_bytes=0, download_bytes=0,
                        reason="memory below the frozen model + head training (head-only cost)")
    alone = fits_alone(reach, memory, upload)
    option_values = (np.array(values) * alone)[:, None] * rank_shares(None, ranks)
    chosen = solve_options(option_values, profile, rank_options(profile, uploads, ranks), memory, upload)
    return KindPlan(**common, takes_part=True, deepest_unit=lowest_fitting(*reach, memory, upload),
                    units=chosen.units, ranks=tuple(ranks[o] for o in chosen.options), value=chosen.value,
                    mem_bytes=chosen.mem_bytes, upload_bytes=chosen.upload_bytes + head_weights,
                    download_bytes=sum(uploads) + head_weights,
                    reason="" if chosen.units else "no unit fits: trains the head only")


def lowest_option_reach(profile: CostProfile, ranks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit j, Mem({j}) and its upload in bytes at the lowest rank option (`mem_at_ranks`, as the strategy's
    affordable units; at rank R: `mem_of(profile, [j])` and `lora_bytes`)."""
    weights = lora_bytes(profile)
    memory = [mem_at_ranks(profile, {j: ranks[0]}, weights) for j in range(profile.num_units)]
    return np.array(memory), rank_options(profile, weights, ranks[:1]).uploads[:, 0]


def head_bytes(profile: CostProfile) -> int:
    """Bytes of the head's weights, sent both ways every round: M_head / 4 (weights, gradients, two moments)."""
    return profile.head // 4


def largest_batch(profile: CostProfile, units: Sequence[int] | range, memory: int) -> int:
    """The largest batch size (at most `MAX_BATCH`) at which Mem(units) fits `memory`; 0 if even 1 does not."""
    def fits(batch: int) -> bool:
        return mem_of(profile.at_batch(batch), units) <= memory

    low, high = 0, MAX_BATCH
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def fits_alone(reach: tuple[np.ndarray, np.ndarray], memory: int, upload: int | None) -> np.ndarray:
    """Per unit, whether a client with these budgets (bytes; upload None = unlimited) could train it on its own
    (`reach` from `lowest_option_reach`)."""
    return (reach[0] <= memory) & (upload is None or reach[1] <= upload)
