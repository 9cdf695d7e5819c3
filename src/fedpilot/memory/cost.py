"""The memory cost model Mem(S) of one model configuration, its JSON cache, and memory budgets.

    Mem(S)  = fixed_mem + path_mem[min S] + sum_{j in S} unit_mem[j]     (S non-empty)
            = M_frozen + M_head + A_head + M_peak + A_path(min S) + sum_{j in S} unit_mem[j]
    Mem({}) = fixed_mem                                                 (head only)

    fixed_mem   = M_frozen + M_head + A_head + M_peak,head
    path_mem[k] = A_path(k) + M_peak - M_peak,head: saved activations from block k to the top,
                  beyond A_head, and the step's transient peak in place of the head-only one
    unit_mem[j] = M_state(j) + a_j

M_frozen holds every parameter and buffer outside the head, all units' LoRA weights included: a
client's model holds every adapter whatever it trains. M_state(j) is unit j's LoRA gradients and
AdamW moments; M_head the head's weights, gradients and moments; A_head the activations that
training the head alone saves; a_j what training unit j adds to the saved activations when a lower
unit is trained anyway (mostly its own LoRA branches' tensors; a_0 is unit 0's LoRA share); M_peak the
transient peak of a step that trains units (the input batch, temporaries, gradients in flight, on top
of the saved activations) and M_peak,head that of a step that trains the head alone. They differ:
with nothing saved below the head, the head-only step peaks at a forward temporary (an FFN's
intermediate), which a step that trains units has long freed when it peaks at the start of
backward; one M_peak for both over-counts every set by their difference (docs/method.md). The
profiler makes M_peak >= M_peak,head - min_k A_path(k), so path_mem stays non-negative and no set
costs less than the head-only step's peak. All are measured by `fedpilot.memory.profiler`.
Activation terms are affine in the batch size (`at_batch`).

At module granularity (each adapted Linear a unit, `blocks[j]` its block) the Linears of one block
share inputs and attention, so their costs do not add up unit by unit. Write S_b for the units of S
in block b (a bit mask over the block's units, in unit order) and b0 for the lowest block of S:

    Mem(S)  = fixed_mem + lowest_mem[b0][S_b0] + sum_{b > b0, S_b non-empty} above[b][S_b]
    lowest_mem[b][T] = lowest[b][T] + M_peak - M_peak,head

lowest[b][T] is what training exactly the set T of block b (and nothing below or above) costs beyond
fixed_mem: activations from block b to the top, T's state and LoRA-saved tensors; above[b][T] is what
T adds when a lower block is trained (its state, LoRA-saved tensors and the inputs its Linears share).
Both are measured for every non-empty T (`fedpilot.memory.modules`); block 0 is never above another,
so its `above` repeats its `lowest`. Tables are indexed [block][mask - 1].
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from fedpilot.memory.gpus import UnknownGpu, usable_gpu_bytes

KiB, MiB, GiB = 2**10, 2**20, 2**30

UNITS = {"b": 1, "k": KiB, "m": MiB, "g": GiB, "t": 2**40, "ki": KiB, "mi": MiB, "gi": GiB, "ti": 2**40,
         "kib": KiB, "mib": MiB, "gib": GiB, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}

class BudgetError(ValueError):
    """A memory budget that cannot be parsed or cannot train anything."""


@dataclass(frozen=True)
class CostProfile:
    """Measured Mem(S) terms of one (model, batch, length, dtype, rank, targets), in bytes.

    frozen = M_frozen, head = M_head, head_path = A_head, peak = M_peak, state[j] = M_state(j),
    path[k] = A_path(k), lora[j] = a_j, all at `batch`; each `*_per_example` is the measured growth
    of an activation term per example, which `at_batch` applies. `length` is the sequence length
    (text) or image size (image models); `device` is where the steps ran (cpu or meta).
    """

    model: str
    batch: int
    length: int
    dtype: str
    rank: int
    targets: tuple[str, ...]
    frozen: int
    head: int
    head_path: int
    peak: int
    state: tuple[int, ...]
    path: tuple[int, ...]
    lora: tuple[int, ...]
    head_path_per_example: float
    peak_per_example: float
    path_per_example: tuple[float, ...]
    lora_per_example: tuple[float, ...]
    device: str = "cpu"
    blocks: tuple[int, ...] = ()
    """Module granularity: the block of each unit (empty at block granularity)."""
    lowest: tuple[tuple[int, ...], ...] = ()
    above: tuple[tuple[int, ...], ...] = ()
    lowest_per_example: tuple[tuple[float, ...], ...] = ()
    above_per_example: tuple[tuple[float, ...], ...] = ()
    head_peak: int | None = None
    """M_peak,head at `batch`; None (a hand-built profile): the same as `peak`."""
    head_peak_per_example: float = 0.0

    @property
    def num_units(self) -> int:
        """Number of units (transformer blocks, or adapted Linears at module granularity)."""
        return len(self.state)

    @property
    def granularity(self) -> str:
        """"module" when the profile has per-block tables of module units, else "block"."""
        return "module" if self.blocks else "block"

    @property
    def head_only_peak(self) -> int:
        """M_peak,head: the transient peak of a step that trains the head alone."""
        return self.peak if self.head_peak is None else self.head_peak

    def peak_of(self, units: Iterable[int]) -> int:
        """The transient peak of a step that trains `units` (M_peak,head when there are none, else M_peak)."""
        return self.peak if any(True for _ in units) else self.head_only_peak

    @property
    def fixed_mem(self) -> int:
        """M_frozen + M_head + A_head + M_peak,head: the cost of training the head alone."""
        return self.frozen + self.head + self.head_path + self.head_only_peak

    @property
    def path_mem(self) -> tuple[int, ...]:
        """A_path(k) + M_peak - M_peak,head for k = 0..n-1: what a lowest trained unit k adds to the head-only cost
        besides its own unit_mem (its saved activations, and the switch from the head-only transient peak)."""
        return tuple(p + self.peak - self.head_only_peak for p in self.path)

    @property
    def lowest_mem(self) -> tuple[tuple[int, ...], ...]:
        """Module granularity: lowest[b][T] + M_peak - M_peak,head, what training exactly T of a lowest trained
        block b adds to the head-only cost (its activations, state, and the switch of transient peak)."""
        shift = self.peak - self.head_only_peak
        return tuple(tuple(v + shift for v in row) for row in self.lowest)

    @property
    def unit_mem(self) -> tuple[int, ...]:
        """M_state(j) + a_j: what training unit j adds when a lower unit is trained anyway."""
        return tuple(s + a for s, a in zip(self.state, self.lora))

    def at_batch(self, batch: int) -> CostProfile:
        """The same profile at another batch size: activation terms move along their measured slopes."""
        if batch <= 0:
            raise ValueError(f"batch size must be positive, got {batch}")
        step = batch - self.batch
        head_peak = None if self.head_peak is None else round(self.head_peak + self.head_peak_per_example * step)
        return replace(self, batch=batch, head_path=round(self.head_path + self.head_path_per_example * step),
                       peak=round(self.peak + self.peak_per_example * step), head_peak=head_peak,
                       path=tuple(round(v + s * step) for v, s in zip(self.path, self.path_per_example)),
                       lora=tuple(round(v + s * step) for v, s in zip(self.lora, self.lora_per_example)),
                       lowest=_table_at(self.lowest, self.lowest_per_example, step),
                       above=_table_at(self.above, self.above_per_example, step))

    def to_json(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CostProfile:
        """Inverse of `to_json` (lists become tuples)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: _tuples(v) for k, v in data.items() if k in names})


def _tuples(value: object) -> object:
    """Lists, nested ones too, as tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _table_at(table: tuple[tuple[int, ...], ...], slopes: tuple[tuple[float, ...], ...],
              step: int) -> tuple[tuple[int, ...], ...]:
    """A [block][mask - 1] table moved `step` examples along its per-example slopes."""
    return tuple(tuple(round(v + s * step) for v, s in zip(row, row_slopes)) for row, row_slopes in zip(table, slopes))


def mem_of(profile: CostProfile, units: Iterable[int]) -> int:
    """Mem(S) in bytes: fixed_mem + path_mem[min S] + sum_{j in S} unit_mem[j], or fixed_mem for S = {};
    at module granularity the per-block tables of the module docstring."""
    chosen = sorted(set(units))
    if any(not 0 <= j < profile.num_units for j in chosen):
        raise ValueError(f"units {chosen} out of range 0..{profile.num_units - 1}")
    if not chosen:
        return profile.fixed_mem
    if profile.blocks:
        masks = block_masks(profile.blocks, chosen)
        low = min(masks)
        return (profile.fixed_mem + profile.lowest_mem[low][masks[low] - 1]
                + sum(profile.above[b][mask - 1] for b, mask in masks.items() if b != low))
    unit = profile.unit_mem
    return profile.fixed_mem + profile.path_mem[chosen[0]] + sum(unit[j] for j in chosen)


def block_masks(blocks: tuple[int, ...], units: Iterable[int]) -> dict[int, int]:
    """{block: bit mask of its units in `units`} for module units whose blocks are `blocks` (bit i = the
    block's i-th unit in unit order); blocks with none of the units are left out."""
    masks: dict[int, int] = {}
    for j in units:
        masks[blocks[j]] = masks.get(blocks[j], 0) | 1 << place_in_block(blocks, j)
    return masks


def place_in_block(blocks: tuple[int, ...], unit: int) -> int:
    """Module granularity: i such that `unit` is its block's i-th unit (unit order; `blocks[j]` = unit j's
    block, a block's units consecutive)."""
    return unit - blocks.index(blocks[unit])


def module_name(blocks: tuple[int, ...], unit: int) -> str:
    """A module unit's short name, block.i: "3.1" for block 3's second adapted Linear."""
    return f"{blocks[unit]}.{place_in_block(blocks, unit)}"


def save_profile(profile: CostProfile, path: Path) -> Path:
    """Write the profile as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    return path


def load_profile(path: Path) -> CostProfile:
    """Read a profile written by `save_profile`."""
    return CostProfile.from_json(json.loads(Path(path).read_text()))


def cache_dir() -> Path:
    """Where profiles are cached ($FEDPILOT_CACHE/profiles, else ~/.cache/fedpilot/profiles)."""
    return Path(os.environ.get("FEDPILOT_CACHE", Path.home() / ".cache" / "fedpilot")) / "profiles"


def cache_path(key: dict) -> Path:
    """Cache file of a profile key (model, batch, length, dtype, rank, targets and versions)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    model = Path(str(key["model"]))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.parent.name if model.name == "config.json" else model.name)[-40:]
    return cache_dir() / f"{name}-b{key['batch']}-l{key['length']}-{key['dtype']}-{digest}.json"


def parse_budget(text: str | int, profile: CostProfile | None = None) -> int:
    """Bytes of a budget: "6GiB", "750MiB", "8GB", 123456789, a GPU name (its memory less the reserve,
    `fedpilot.memory.gpus`), or "40%" of the cost of training every unit; with a profile, at least the
    head-only cost. Raises `BudgetError` for text that is none of these, a negative budget, a percentage
    without a profile, or a budget below the head-only cost.
    """
    budget = budget_bytes(text, profile)
    if profile is not None and budget < profile.fixed_mem:
        raise BudgetError(f"budget {str(text).strip()!r} = {human(budget)} is below the minimum of "
                          f"{human(profile.fixed_mem)} (frozen model + head training) for {profile.model} "
                          f"at batch {profile.batch}")
    return budget


def budget_bytes(text: str | int, profile: CostProfile | None = None) -> int:
    """`parse_budget` without the minimum check: the bytes a budget names, however small."""
    raw = str(text).strip()
    lowered = raw.lower().replace(" ", "").replace("_", "")
    if lowered.endswith("%"):
        return _fraction_budget(raw, lowered[:-1], profile)
    if re.match(r"[a-z]", lowered):
        return _gpu_budget(raw)
    return _byte_budget(raw, lowered)


def check_budget(text: str | int) -> None:
    """Raise `BudgetError` unless the text parses as a budget; a percentage is checked for its form only."""
    raw = str(text).strip()
    lowered = raw.lower().replace(" ", "").replace("_", "")
    if lowered.endswith("%"):
        _percent(raw, lowered[:-1])
    else:
        parse_budget(raw)


def _gpu_budget(raw: str) -> int:
    """Usable bytes of the GPU a name means."""
    try:
        return usable_gpu_bytes(raw)
    except UnknownGpu as error:
        raise BudgetError(str(error)) from None


def _byte_budget(raw: str, lowered: str) -> int:
    """Bytes from a number with an optional unit suffix."""
    match = re.fullmatch(r"([+-]?\d+(?:\.\d*)?(?:e[+-]?\d+)?)([a-z]*)", lowered)
    if match is None or match.group(2) not in UNITS | {"": 1}:
        raise BudgetError(f"cannot parse budget {raw!r}; use bytes like '6GiB', '750MiB', '8GB', 123456789, "
                          f"a GPU name like 't4', 'rtx4090', 'a100-80g' or a percentage like '40%'")
    value = float(match.group(1)) * UNITS.get(match.group(2), 1)
    if value < 0:
        raise BudgetError(f"budget {raw!r} is negative")
    if not math.isfinite(value):
        raise BudgetError(f"budget {raw!r} is too large")
    return int(value)


def _fraction_budget(raw: str, number: str, profile: CostProfile | None) -> int:
    """A percentage of the cost of training every unit."""
    percent = _percent(raw, number)
    if profile is None:
        raise BudgetError(f"budget {raw!r} is a fraction of the all-units cost and needs a cost profile")
    return int(percent / 100 * mem_of(profile, range(profile.num_units)))


def _percent(raw: str, number: str) -> float:
    """The number of a percentage budget, finite and non-negative."""
    try:
        percent = float(number)
    except ValueError:
        percent = math.nan
    if not math.isfinite(percent):
        raise BudgetError(f"cannot parse budget {raw!r} as a percentage")
    if percent < 0:
        raise BudgetError(f"budget {raw!r} is negative")
    return percent


def human(size: float) -> str:
    """Bytes as KiB, MiB or GiB, whichever reads best."""
    if size >= GiB:
        return f"{size / GiB:.2f} GiB"
    return f"{size / MiB:.1f} MiB" if size >= MiB else f"{size / KiB:.1f} KiB"
