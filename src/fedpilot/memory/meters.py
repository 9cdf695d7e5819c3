"""Meters of what a training step holds: bytes autograd saves for backward, and all bytes ops allocate.

`SavedBytesMeter` counts saved activations under `torch.autograd.graph.saved_tensors_hooks`, each
storage once however many views of it autograd saves. Parameters and buffers that autograd saves
(a frozen weight kept for the input gradient) are not activations: they are resident weights,
counted once in M_frozen / M_head, so the meter skips them. `AllocationMeter` is a dispatch mode
that follows every storage an op creates until it dies, for the peak of a step. Both work on the
`meta` device (no data_ptr there): storages are told apart by their Python objects, which torch
keeps for exactly as long as the storage lives. `AllocatorPeak` is the outside check of both: the
CPU allocator's own accounting, from the profiler's memory events.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass(frozen=True)
class SavedStorage:
    """One storage autograd saved in a step: its bytes and the modules whose ops saved it."""

    nbytes: int
    owners: frozenset[str]


@dataclass
class _Live:
    """A storage autograd holds saved now: its bytes, how many saved references, who saved it."""

    nbytes: int
    refs: int = 0
    owners: set[str] = field(default_factory=set)


class _Packed:
    """A saved tensor as autograd holds it; tells the meter when autograd lets it go.

    It keeps a detached alias (same storage and version counter): keeping the tensor itself would
    tie an op's saved output to its own grad_fn in a cycle that outlives a graph never backpropagated.
    """

    __slots__ = ("tensor", "release")

    def __init__(self, tensor: torch.Tensor, release: Callable[[], None]) -> None:
        """Hold the alias and the callback to run when autograd drops this."""
        self.tensor, self.release = tensor, release

    def __del__(self) -> None:
        """Autograd let go of this saved tensor."""
        self.release()


class SavedBytesMeter:
    """Context manager counting the bytes autograd saves for backward, each storage once.

    Give it the model, so that saved parameters and buffers are not counted. `live_saved` rises
    when a new storage is saved and falls when autograd drops its last saved reference (after
    backward). A step runs from the first save to the moment nothing saved is left; `step_peaks`
    lists each step's peak, `peak_saved` is the largest. With `attribute=True` it also records
    which module saved each storage (`last_step`), at some cost in speed. Meters do not nest:
    inside two, only the inner one counts (autograd keeps one pair of hooks).
    """

    def __init__(self, model: nn.Module | None = None, attribute: bool = False) -> None:
        """Note the model's weight storages (never counted) and, with `attribute`, its module names."""
        tensors = itertools.chain(model.parameters(), model.buffers()) if model is not None else ()
        self._weights = {id(t.untyped_storage()) for t in tensors}
        self._names = {id(m): name for name, m in model.named_modules()} if attribute and model is not None else {}
        self._scope: list[str] = []
        self._live: dict[int, _Live] = {}
        self._step: list[SavedStorage] = []
        self._step_peak = 0
        self._stack = contextlib.ExitStack()
        self.live_saved = 0
        self.peak_saved = 0
        self.step_peaks: list[int] = []
        self.last_step: list[SavedStorage] = []

    def __enter__(self) -> SavedBytesMeter:
        """Install the saved-tensor hooks (and the module-scope hooks when attributing)."""
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack))
        if self._names:
            pre = nn.modules.module.register_module_forward_pre_hook(self._enter_module)
            post = nn.modules.module.register_module_forward_hook(self._leave_module, always_call=True)
            self._stack.callback(pre.remove)
            self._stack.callback(post.remove)
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove the hooks; tensors saved inside still report their release."""
        self._stack.close()

    def _enter_module(self, module: nn.Module, args: object) -> None:
        """Forward pre-hook: the module now running is the innermost scope."""
        self._scope.append(self._names.get(id(module), ""))

    def _leave_module(self, module: nn.Module, args: object, output: object) -> None:
        """Forward hook: back to the enclosing module."""
        self._scope.pop()

    def _pack(self, tensor: torch.Tensor) -> object:
        """Count a tensor autograd saves, unless its storage is a weight or already counted."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._weights:
            return tensor
        if not self._live:
            self._step, self._step_peak = [], 0
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = _Live(storage.nbytes())
            self.live_saved += entry.nbytes
            self._step_peak = max(self._step_peak, self.live_saved)
            self.peak_saved = max(self.peak_saved, self.live_saved)
        entry.refs += 1
        entry.owners.add(self._scope[-1] if self._scope else "")
        return _Packed(tensor.detach(), lambda: self._release(key))

    def _release(self, key: int) -> None:
        """Autograd dropped one saved reference; the storage stops counting with its last one."""
        entry = self._live[key]
        entry.refs -= 1
        if entry.refs:
            return
        del self._live[key]
        self.live_saved -= entry.nbytes
        self._step.append(SavedStorage(entry.nbytes, frozenset(entry.owners)))
        if not self._live:
            self.step_peaks.append(self._step_peak)
            self.last_step = self._step


def _unpack(packed: object) -> torch.Tensor:
    """The tensor behind what `_pack` returned."""
    return packed.tensor if isinstance(packed, _Packed) else packed


class AllocationMeter(TorchDispatchMode):
    """Live and peak bytes of the storages that ops run inside it create (any device, meta included).

    A storage is followed from the op that creates it until it dies; storages that first show up
    as inputs were made before and count zero. Counting stops on exit.
    """

    def __init__(self) -> None:
        """Start with nothing followed."""
        super().__init__()
        self._sizes: dict[int, int] = {}
        self._watches: list[weakref.finalize] = []
        self.live = 0
        self.peak = 0

    def __exit__(self, *exc: object) -> None:
        """Leave the mode and stop following storages."""
        super().__exit__(*exc)
        for watch in self._watches:
            watch.detach()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run the op; inputs seen for the first time are old storages, new outputs are allocations."""
        kwargs = kwargs or {}
        for tensor in _tensors(itertools.chain(args, kwargs.values())):
            self._note(tensor, created=False)
        out = func(*args, **kwargs)
        for tensor in _tensors(out if isinstance(out, (tuple, list)) else (out,)):
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
        self._watches.append(weakref.finalize(storage, self._free, key))

    def _free(self, key: int) -> None:
        """A followed storage died."""
        self.live -= self._sizes.pop(key)


def _tensors(items: Iterable[object]) -> Iterator[torch.Tensor]:
    """Tensors among op arguments or results, and inside their lists and tuples (all ATen ever nests)."""
    for item in items:
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (tuple, list)):
            yield from (x for x in item if isinstance(x, torch.Tensor))


class AllocatorPeak:
    """The CPU allocator's own count of what the code inside allocates, read from `torch.profiler`'s memory events.

    With `profile_memory=True` the profiler reports every allocation and free the CPU allocator makes
    (kernels' internal workspaces included), with its size in bytes; `peak` is the largest running total
    inside the block, counted from zero at its start. Frees of blocks allocated before it are not
    reported by the profiler, so they never lower the total: `peak` is an upper bound of the growth.
    Independent of the other meters (no hooks, no dispatch mode). CPU only.
    """

    def __init__(self) -> None:
        """Nothing measured yet."""
        self.peak = 0
        self._profile: torch.profiler.profile | None = None

    def __enter__(self) -> AllocatorPeak:
        """Start the profiler with memory events."""
        self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the profiler and read the peak off its memory events, in time order."""
        self._profile.__exit__(*exc)
        events = [e for e in self._profile.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
        self.peak = running_peak([e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())])


def running_peak(changes: Iterable[int]) -> int:
    """The largest running sum of byte changes (allocations positive, frees negative), starting from 0."""
    return max(itertools.accumulate(changes, initial=0))
