"""Measure what a LoRA training step keeps in memory, and build the cost profile Mem(S) from it.

Saved activations are counted by `SavedBytesMeter` under `torch.autograd.graph.saved_tensors_hooks`,
each storage once however many views of it autograd saves. Parameters and buffers that autograd
saves (a frozen weight kept for the input gradient) are not activations: they are resident
weights, counted once in M_frozen / M_head, so the meter skips them. Peaks of all allocations
come from `AllocationMeter`, a dispatch mode that follows every storage an op creates until it
dies. Both work on the `meta` device, where `fedpilot.memory.meta` makes a step save exactly what
it saves on CPU, so a 7B model is profiled with no memory and no compute.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import PretrainedConfig

from fedpilot.memory.build import AUTOCAST, DTYPES, build_model, default_targets_of, is_image_model, load_model_config, make_batch
from fedpilot.memory.cost import CostProfile, cache_path, load_profile, save_profile
from fedpilot.memory.meta import meta_like_cpu
from fedpilot.models.loading import ModelError
from fedpilot.models.units import UnitMap, set_trainable

DEVICES = ("cpu", "meta")


class ProfileError(ModelError):
    """A profiling request the user must fix (dtype, device, sizes)."""


@dataclass(frozen=True)
class SavedStorage:
    """One storage autograd saved in a step: its bytes and the modules whose ops saved it."""

    nbytes: int
    owners: frozenset[str]


class _Packed:
    """A saved tensor as autograd holds it; tells the meter when autograd lets it go."""

    __slots__ = ("tensor", "release")

    def __init__(self, tensor: torch.Tensor, release: Callable[[], None]) -> None:
        self.tensor, self.release = tensor, release

    def __del__(self) -> None:
        self.release()


class SavedBytesMeter:
    """Context manager counting the bytes autograd saves for backward, each storage once.

    `live_saved` rises when a new storage is saved and falls when autograd drops its last saved
    reference (after backward). A step runs from the first save to the moment nothing saved is
    left; `step_peaks` lists each step's peak, `peak_saved` is the largest. With `attribute=True`
    it also records which module saved each storage (`last_step`), at some cost in speed.
    """

    def __init__(self, model: nn.Module | None = None, attribute: bool = False) -> None:
        tensors = itertools.chain(model.parameters(), model.buffers()) if model is not None else ()
        self._weights = {id(t.untyped_storage()) for t in tensors}
        self._names = {id(m): name for name, m in model.named_modules()} if attribute and model is not None else {}
        self._scope: list[str] = []
        self._live: dict[int, list] = {}
        self._step: list[SavedStorage] = []
        self._step_peak = 0
        self._stack = contextlib.ExitStack()
        self.live_saved = 0
        self.peak_saved = 0
        self.step_peaks: list[int] = []
        self.last_step: list[SavedStorage] = []

    def __enter__(self) -> SavedBytesMeter:
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack))
        if self._names:
            pre = nn.modules.module.register_module_forward_pre_hook(self._enter_module)
            post = nn.modules.module.register_module_forward_hook(self._leave_module)
            self._stack.callback(pre.remove)
            self._stack.callback(post.remove)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _enter_module(self, module: nn.Module, args: object) -> None:
        self._scope.append(self._names.get(id(module), ""))

    def _leave_module(self, module: nn.Module, args: object, output: object) -> None:
        self._scope.pop()

    def _pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._weights:
            return tensor
        if not self._live:
            self._step, self._step_peak = [], 0
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [storage.nbytes(), 0, set()]
            self.live_saved += entry[0]
            self._step_peak = max(self._step_peak, self.live_saved)
            self.peak_saved = max(self.peak_saved, self.live_saved)
        entry[1] += 1
        entry[2].add(self._scope[-1] if self._scope else "")
        return _Packed(tensor, lambda: self._release(key))

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1]:
            return
        del self._live[key]
        self.live_saved -= entry[0]
        self._step.append(SavedStorage(entry[0], frozenset(entry[2])))
        if not self._live:
            self.step_peaks.append(self._step_peak)
            self.last_step = self._step


def _unpack(packed: object) -> torch.Tensor:
    """The tensor behind what `_pack` returned."""
    return packed.tensor if isinstance(packed, _Packed) else packed


class AllocationMeter(TorchDispatchMode):
    """Live and peak bytes of the storages that ops run inside it create (any device, meta included)."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for tensor in _tensors((args, kwargs)):
            self._note(tensor, created=False)
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            self._note(tensor, created=True)
        return out

    def _note(self, tensor: torch.Tensor, created: bool) -> None:
        """Start following a storage the first time it is seen; one seen first as an input is not ours."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._sizes:
            return
        self._sizes[key] = size = storage.nbytes() if created else 0
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key)


def _tensors(tree: object) -> list[torch.Tensor]:
    """Tensors among the leaves of a pytree."""
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


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
    _create_state(optimizer)
    model.train()
    with AllocationMeter() as allocation, SavedBytesMeter(model, attribute=True) as meter:
        with _forward_context(batch, autocast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
    grads = {name: _storage_bytes([p.grad]) for name, p in params.items()}
    moments = {name: _storage_bytes(s for s in optimizer.state[p].values() if s.dim()) for name, p in params.items()}
    optimizer.zero_grad(set_to_none=True)
    per_unit = unit_map.unit_of_key()
    state = [0] * len(unit_map.units)
    for name in params:
        if name in per_unit:
            state[per_unit[name]] += grads[name] + moments[name]
    head = set(unit_map.head_keys)
    weights = _storage_bytes(itertools.chain(model.parameters(), model.buffers()))
    return StepCost(units, weights, _storage_bytes(p for n, p in model.named_parameters() if n in head),
                    meter.peak_saved, _lora_only(meter.last_step, unit_map), tuple(state),
                    sum(grads[n] + moments[n] for n in head), sum(grads.values()),
                    allocation.peak + _storage_bytes(batch.values()))


def _forward_context(batch: dict[str, torch.Tensor], autocast: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `autocast` on the batch's device, or nothing."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(next(iter(batch.values())).device.type, autocast)


def _create_state(optimizer: torch.optim.Optimizer) -> None:
    """Give AdamW its moments before the measured step, as any step after the first finds them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
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


def measure_plans(model: nn.Module, unit_map: UnitMap, config: PretrainedConfig, batch: int, length: int,
                  dtype: str, device: str) -> list[StepCost]:
    """Steps training each single unit k = 0..n-1, then the head alone, then every unit."""
    inputs = make_batch(config, batch, length, dtype, device)
    n = len(unit_map.units)
    plans = [(k,) for k in range(n)] + [(), tuple(range(n))]
    with meta_like_cpu() if device == "meta" else contextlib.nullcontext():
        return [measure_step(model, unit_map, units, inputs, AUTOCAST.get(dtype)) for units in plans]


def profile(model: str, batch: int, seq: int = 128, image_size: int | None = None, dtype: str = "fp32",
            rank: int = 8, targets: Iterable[str] | None = None, device: str = "meta", num_labels: int = 2,
            use_cache: bool = True) -> CostProfile:
    """Measured cost profile of a model folder / config.json at a batch size and sequence length or image size."""
    _check(batch, seq, image_size, dtype, device, rank)
    config = load_model_config(model, num_labels)
    if is_image_model(config) and image_size:
        config.image_size = image_size
    length = config.image_size if is_image_model(config) else seq
    targets = tuple(sorted(targets or default_targets_of(config)))
    key = {"model": str(Path(model).resolve()) if Path(model).exists() else model, "config": config.to_json_string(),
           "batch": batch, "length": length, "dtype": dtype, "rank": rank, "targets": targets,
           "torch": torch.__version__, "transformers": transformers.__version__, "format": 1}
    path = cache_path(key)
    if use_cache and path.is_file():
        return load_profile(path)
    net, unit_map = build_model(config, dtype, rank, targets, device)
    other = batch // 2 if batch > 1 else 2
    steps = {b: measure_plans(net, unit_map, config, b, length, dtype, device) for b in (batch, other)}
    result = assemble(steps[batch], steps[other], batch, other,
                      dict(model=model, batch=batch, length=length, dtype=dtype, rank=rank, targets=targets,
                           device=device))
    if use_cache:
        save_profile(result, path)
    return result


def assemble(steps: list[StepCost], other: list[StepCost], batch: int, other_batch: int, meta: dict) -> CostProfile:
    """The cost profile from `measure_plans` steps at the profile's batch size and at a second one (slopes)."""
    here, there = _activation_terms(steps), _activation_terms(other)
    slopes = {f"{name}_per_example": _slope(here[name], there[name], batch - other_batch) for name in here}
    n, head_only = len(steps) - 2, steps[-2]
    return CostProfile(**meta, **here, **slopes, frozen=head_only.weights - head_only.head_weights,
                       head=head_only.head_weights + head_only.head_state,
                       state=tuple(steps[j].state[j] for j in range(n)))


def _activation_terms(steps: list[StepCost]) -> dict:
    """A_head, A_path(k), a_j and M_peak from `measure_plans` steps.

    a_j (j > 0) is what unit j's LoRA branches alone save when j is trained above a lower trained
    unit, less what they save when j is frozen above it (under autocast a frozen LoRA weight's cast
    is saved too): the all-units step against the unit-0 step. a_0 is unit 0's own share of the
    unit-0 step. A_path(k) is the rest of the unit-k step beyond the head-only step.
    """
    n, head_only, every = len(steps) - 2, steps[-2], steps[-1]
    lowest = steps[0].lora_saved
    lora = (lowest[0],) + tuple(every.lora_saved[j] - lowest[j] for j in range(1, n))
    return {"head_path": head_only.saved, "lora": lora, "peak": max(0, max(s.transient for s in steps)),
            "path": tuple(steps[k].saved - head_only.saved - lora[k] for k in range(n))}


def _slope(here: int | tuple[int, ...], there: int | tuple[int, ...], step: int) -> float | tuple[float, ...]:
    """Bytes per example between two batch sizes, of a term or of each entry of a per-unit term."""
    if isinstance(here, tuple):
        return tuple((a - b) / step for a, b in zip(here, there))
    return (here - there) / step


def _check(batch: int, seq: int, image_size: int | None, dtype: str, device: str, rank: int) -> None:
    """Reject sizes, dtypes and devices the profiler cannot use."""
    if dtype not in DTYPES:
        raise ProfileError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if device not in DEVICES:
        raise ProfileError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if dtype in AUTOCAST and device == "meta":
        raise ProfileError(f"dtype {dtype!r} runs under autocast, which torch lacks on meta: use device cpu")
    if min(batch, seq, rank, image_size or 1) <= 0:
        raise ProfileError(f"batch, seq, rank and image size must be positive, got {batch}, {seq}, {rank}, {image_size}")
