"""Measure what a LoRA training step keeps in memory, and build the cost profile Mem(S) from it.

One real step (forward, loss, backward, AdamW step) per measured set of units, under the meters
of `fedpilot.memory.meters`: saved activations (each storage once, weights excluded), gradients,
AdamW moments and the allocation peak, split into the terms of `fedpilot.memory.cost`. On the
`meta` device, where `fedpilot.memory.meta` makes a step save exactly what it saves on CPU, a 7B
model is profiled with no memory and no compute. A deep model is measured as shallow copies of
itself and extended to its depth (`fedpilot.memory.depth`), where that is exact.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import PretrainedConfig

from fedpilot.memory.build import (AUTOCAST, DTYPES, build_model, check_targets_of, default_targets_of, is_image_model,
                                   load_model_config)
from fedpilot.memory.build import make_batch
from fedpilot.memory.cost import CostProfile, cache_path, load_profile, save_profile
from fedpilot.memory.depth import depth_of, extend, truncated
from fedpilot.memory.meta import meta_like_cpu
from fedpilot.memory.meters import AllocationMeter, AllocatorPeak, SavedBytesMeter, SavedStorage
from fedpilot.models.loading import ModelError
from fedpilot.models.units import GRANULARITIES, UnitMap, set_trainable

DEVICES = ("cpu", "meta")

SHALLOW = 3
"""Blocks of the shallowest copy `measure_profile` measures of a deep model."""

UNSEEN = 4 * 1024
"""Bytes added to each transient peak for what the CPU allocator holds at a step's peak but no op returns
(wrapped Python scalars, kernels' small workspaces), which `AllocationMeter` cannot see: at most 256 bytes
in `benchmarks/memory_allocator.py`, and this is 16 times that."""


class ProfileError(ModelError):
    """A profiling request the user must fix (dtype, device, sizes)."""


@dataclass(frozen=True)
class StepCost:
    """Bytes one AdamW training step of the units S kept in memory, by component."""

    units: tuple[int, ...]
    weights: int
    head_weights: int
    saved: int
    lora_saved: tuple[int, ...]
    state: tuple[int, ...]
    head_state: int
    grads: int
    peak: int
    """Allocation peak of the step (activations, gradients, temporaries) plus the input batch."""

    @property
    def resident(self) -> int:
        """Weights, gradients and AdamW moments."""
        return self.weights + sum(self.state) + self.head_state

    @property
    def measured(self) -> int:
        """Resident bytes plus saved activations: what Mem(S) without M_peak must equal."""
        return self.resident + self.saved

    @property
    def transient(self) -> int:
        """M_peak of this step: its allocation peak beyond saved activations and gradients."""
        return self.peak - self.saved - self.grads

    @property
    def peak_total(self) -> int:
        """Peak bytes of the step: weights, moments (allocated before it) and its own allocation peak."""
        return self.resident - self.grads + self.peak


def measure_step(model: nn.Module, unit_map: UnitMap, units: Iterable[int], batch: dict[str, torch.Tensor],
                 autocast: torch.dtype | None = None, lr: float = 1e-4) -> StepCost:
    """Run one steady-state AdamW step training `units` and the head on `batch`, and measure it.

    With `autocast` the forward runs under `torch.autocast` of that dtype, as fedpilot's client does.
    """
    units = tuple(sorted(set(units)))
    names = set(set_trainable(model, unit_map, units))
    params = {name: p for name, p in model.named_parameters() if name in names}
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr)
    create_state(optimizer)
    model.train()
    with AllocationMeter() as allocation, SavedBytesMeter(model, attribute=True) as meter:
        with _forward_context(batch, autocast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
    grads = {name: storage_bytes([p.grad]) for name, p in params.items()}
    state = {name: grads[name] + storage_bytes(s for s in optimizer.state[p].values() if s.dim())
             for name, p in params.items()}
    optimizer.zero_grad(set_to_none=True)
    head = set(unit_map.head_keys)
    return StepCost(units, storage_bytes(itertools.chain(model.parameters(), model.buffers())),
                    storage_bytes(p for name, p in model.named_parameters() if name in head),
                    meter.peak_saved, _lora_only(meter.last_step, unit_map), _per_unit(state, unit_map),
                    sum(state[name] for name in head), sum(grads.values()),
                    allocation.peak + storage_bytes(batch.values()))


def allocator_step(model: nn.Module, unit_map: UnitMap, units: Iterable[int], batch: dict[str, torch.Tensor],
                   lr: float = 1e-4) -> int:
    """Peak bytes of one steady-state AdamW step training `units` and the head on `batch` (CPU), as the CPU
    allocator counts them: the storages held before the step (weights, buffers, AdamW state, the batch)
    plus the largest growth in the profiler's memory events during it (`AllocatorPeak`). No meter that
    builds Mem(S) takes part: this is the outside check of Mem(S) (`benchmarks/memory_allocator.py`)."""
    names = set(set_trainable(model, unit_map, tuple(units)))
    optimizer = torch.optim.AdamW([p for name, p in model.named_parameters() if name in names], lr=lr)
    create_state(optimizer)
    model.train()
    gc.collect()
    moments = [t for state in optimizer.state.values() for t in state.values()]
    before = storage_bytes([*model.parameters(), *model.buffers(), *moments, *batch.values()])
    with AllocatorPeak() as allocator:
        loss = model(**batch).loss
        loss.backward()
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return before + allocator.peak


def _per_unit(sizes: dict[str, int], unit_map: UnitMap) -> tuple[int, ...]:
    """Sum per unit of sizes given per parameter name (names outside units are left out)."""
    unit_of = unit_map.unit_of_key()
    totals = [0] * len(unit_map.units)
    for name, size in sizes.items():
        if name in unit_of:
            totals[unit_of[name]] += size
    return tuple(totals)


def _forward_context(batch: dict[str, torch.Tensor], autocast: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `autocast` on the batch's device, or nothing."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(next(iter(batch.values())).device.type, autocast)


def create_state(optimizer: torch.optim.Optimizer) -> None:
    """Give AdamW its moments before the measured step, as any step after the first finds them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind the tensors."""
    storages = {id(s): s.nbytes() for s in (t.untyped_storage() for t in tensors if t is not None)}
    return sum(storages.values())


def _lora_only(records: list[SavedStorage], unit_map: UnitMap) -> tuple[int, ...]:
    """Per unit: bytes of the storages that only that unit's LoRA branches saved (a_j)."""
    sizes = [0] * len(unit_map.units)
    for record in records:
        owners = {_lora_unit(name, unit_map) for name in record.owners}
        if len(owners) == 1 and None not in owners:
            sizes[owners.pop()] += record.nbytes
    return tuple(sizes)


def _lora_unit(module_name: str, unit_map: UnitMap) -> int | None:
    """The unit whose LoRA branch a module belongs to, or None."""
    for unit in unit_map.units:
        if module_name.startswith(unit.prefix) and ".lora_" in module_name[len(unit.prefix) - 1:]:
            return unit.index
    return None


def measure_saved(model: nn.Module, unit_map: UnitMap, units: Iterable[int], batch: dict[str, torch.Tensor],
                  autocast: torch.dtype | None = None) -> tuple[int, tuple[int, ...]]:
    """Saved bytes of a forward that trains `units`, and each unit's LoRA-only share; no backward needed."""
    set_trainable(model, unit_map, tuple(units))
    model.train()
    with SavedBytesMeter(model, attribute=True) as meter:
        with _forward_context(batch, autocast):
            loss = model(**batch).loss
        del loss
    return meter.peak_saved, _lora_only(meter.last_step, unit_map)


def plans(num_units: int) -> list[tuple[int, ...]]:
    """The sets a profile measures with full steps: each single unit k = 0..n-1, the head alone, every unit."""
    return [(k,) for k in range(num_units)] + [(), tuple(range(num_units))]


def pairs(num_units: int) -> list[tuple[int, ...]]:
    """The sets a profile measures with forwards only: unit 0 with each unit j = 1..n-1 (for a_j)."""
    return [(0, j) for j in range(1, num_units)]


def measure_plans(model: nn.Module, unit_map: UnitMap, config: PretrainedConfig, batch: int, length: int,
                  dtype: str, device: str) -> list[StepCost]:
    """A full training step for each of `plans`."""
    inputs = make_batch(config, batch, length, dtype, device)
    with meta_like_cpu() if device == "meta" else contextlib.nullcontext():
        return [measure_step(model, unit_map, units, inputs, AUTOCAST.get(dtype))
                for units in plans(len(unit_map.units))]


def profile(model: str, batch: int, seq: int = 128, image_size: int | None = None, dtype: str = "fp32",
            rank: int = 8, targets: Iterable[str] | None = None, device: str = "meta", num_labels: int = 2,
            use_cache: bool = True, granularity: str = "block") -> CostProfile:
    """Measured cost profile of a model folder / config.json at a batch size and sequence length or image size.

    Full steps of every plan at `batch`; at `batch + 1` forwards only (saved bytes) plus one full step
    of the plan with the largest transient, which give each activation term's bytes per example.
    With `granularity` "module" each adapted Linear is a unit (`fedpilot.memory.modules`).
    Raises ModelError for a LoRA target the model lacks (its Linear layers are listed).
    """
    _check(batch, seq, image_size, dtype, device, rank, granularity)
    config = load_model_config(model, num_labels)
    if is_image_model(config) and image_size:
        config.image_size = image_size
    length = config.image_size if is_image_model(config) else seq
    if targets:
        check_targets_of(config, targets)
    targets = tuple(sorted(targets or default_targets_of(config)))
    key = {"model": str(Path(model).resolve()) if Path(model).exists() else model, "config": config.to_json_string(),
           "batch": batch, "length": length, "dtype": dtype, "rank": rank, "targets": targets,
           "torch": torch.__version__, "transformers": transformers.__version__, "format": 3,
           **({"granularity": granularity} if granularity != "block" else {})}
    path = cache_path(key)
    if use_cache and path.is_file():
        return load_profile(path)
    result = measure_profile(config, batch, length, dtype, rank, targets, device, model)
    if granularity == "module":
        from fedpilot.memory.modules import module_profile  # it builds on this module's steps

        result = module_profile(result, config, dtype, device)
    if use_cache:
        save_profile(result, path)
    return result


def measure_profile(config: PretrainedConfig, batch: int, length: int, dtype: str, rank: int,
                    targets: tuple[str, ...], device: str, model: str) -> CostProfile:
    """The profile of `profile`; `model` names it in the result.

    A model of more than SHALLOW + 2 identical blocks is measured as copies of SHALLOW, SHALLOW + 1 and
    SHALLOW + 2 blocks and extended to its depth (`fedpilot.memory.depth`), provided the first two
    predict the third exactly; otherwise, and for shallower models, every block is measured.
    """
    depth = depth_of(config)
    if depth is None or depth <= SHALLOW + 2:
        return measure_blocks(config, batch, length, dtype, rank, targets, device, model)
    depths = range(SHALLOW, SHALLOW + 3)
    low, mid, high = (measure_blocks(truncated(config, d), batch, length, dtype, rank, targets, device, model)
                      for d in depths)
    if [p.num_units for p in (low, mid, high)] != list(depths) or extend(low, mid, SHALLOW + 2) != high:
        return measure_blocks(config, batch, length, dtype, rank, targets, device, model)
    return extend(mid, high, depth)


def measure_blocks(config: PretrainedConfig, batch: int, length: int, dtype: str, rank: int,
                   targets: tuple[str, ...], device: str, model: str) -> CostProfile:
    """Build the whole model and run the steps of a profile (see `profile`) through every block."""
    net, unit_map = build_model(config, dtype, rank, targets, device)
    n, autocast = len(unit_map.units), AUTOCAST.get(dtype)
    steps = measure_plans(net, unit_map, config, batch, length, dtype, device)
    worst = plans(n)[max(range(len(steps)), key=lambda i: steps[i].transient if steps[i].units else -1)]
    inputs, more = make_batch(config, batch, length, dtype, device), make_batch(config, batch + 1, length, dtype, device)
    with meta_like_cpu() if device == "meta" else contextlib.nullcontext():
        paired = [measure_saved(net, unit_map, units, inputs, autocast)[0] for units in pairs(n)]
        forwards = [measure_saved(net, unit_map, units, more, autocast) for units in plans(n)]
        paired_more = [measure_saved(net, unit_map, units, more, autocast)[0] for units in pairs(n)]
        transients = tuple(measure_step(net, unit_map, units, more, autocast).transient for units in ((), worst))
    return assemble(steps, paired, forwards, paired_more, transients, batch + 1,
                    dict(model=model, batch=batch, length=length, dtype=dtype, rank=rank, targets=targets,
                         device=device))


def assemble(steps: list[StepCost], paired: list[int], forwards: list[tuple[int, tuple[int, ...]]],
             paired_more: list[int], transients: tuple[int, int], other_batch: int, meta: dict) -> CostProfile:
    """The cost profile from full steps of `plans` and forwards of `pairs` (saved bytes) at the profile's
    batch size and, at `other_batch`, forwards of both and the transients of the head-only step and of the
    step with the largest transient among those that train units (for bytes per example)."""
    head_transient = next(s.transient for s in steps if not s.units)
    unit_transient = max(s.transient for s in steps if s.units)
    here = _activation_terms([(s.saved, s.lora_saved) for s in steps], paired, (head_transient, unit_transient))
    there = _activation_terms(forwards, paired_more, transients)
    step = meta["batch"] - other_batch
    slopes = {f"{name}_per_example": _slope(here[name], there[name], step) for name in here}
    n, head_only = len(steps) - 2, steps[-2]
    return CostProfile(**meta, **here, **slopes, frozen=head_only.weights - head_only.head_weights,
                       head=head_only.head_weights + head_only.head_state,
                       state=tuple(steps[j].state[j] for j in range(n)))


def _activation_terms(saved: list[tuple[int, tuple[int, ...]]], paired: list[int],
                      transients: tuple[int, int]) -> dict:
    """A_head, A_path(k), a_j, M_peak,head and M_peak from (saved bytes, LoRA-only bytes per unit) of each
    of `plans`, the saved bytes of each of `pairs` and the (head-only, largest unit-training) transients.

    M_peak is the largest transient of a step that trains units, raised where needed to
    M_peak,head - min_k A_path(k), so that no such step is estimated below the head-only one.

    a_j (j > 0) is what training unit j adds to the saved bytes when a lower unit is trained anyway:
    the plan {0, j} against the plan {0}. Mostly unit j's LoRA branches' own tensors, but not only:
    in DeBERTa a trained query projection also makes its relative-position branch save the keys.
    a_0 is unit 0's LoRA branches' own share of the unit-0 plan. A_path(k) is the rest of the unit-k
    plan beyond the head-only plan.
    """
    n, (head_only, _) = len(saved) - 2, saved[-2]
    lowest, lowest_lora = saved[0]
    lora = (lowest_lora[0],) + tuple(paired[j - 1] - lowest for j in range(1, n))
    path = tuple(saved[k][0] - head_only - lora[k] for k in range(n))
    head_peak = max(0, transients[0]) + UNSEEN
    return {"head_path": head_only, "lora": lora, "path": path, "head_peak": head_peak,
            "peak": max(max(0, transients[1]) + UNSEEN, head_peak - min(path))}


def _slope(here: int | tuple[int, ...], there: int | tuple[int, ...], step: int) -> float | tuple[float, ...]:
    """Bytes per example between two batch sizes, of a term or of each entry of a per-unit term."""
    if isinstance(here, tuple):
        return tuple((a - b) / step for a, b in zip(here, there))
    return (here - there) / step


def _check(batch: int, seq: int, image_size: int | None, dtype: str, device: str, rank: int,
           granularity: str = "block") -> None:
    """Reject sizes, dtypes and devices the profiler cannot use."""
    if dtype not in DTYPES:
        raise ProfileError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if device not in DEVICES:
        raise ProfileError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if dtype in AUTOCAST and device == "meta":
        raise ProfileError(f"dtype {dtype!r} runs under autocast, which torch lacks on meta: use device cpu")
    if granularity not in GRANULARITIES:
        raise ProfileError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
    if min(batch, seq, rank, image_size or 1) <= 0:
        raise ProfileError(f"batch, seq, rank and image size must be positive, "
                           f"got {batch}, {seq}, {rank}, {image_size}")
