"""Units of a LoRA model: the transformer blocks in order, their adapter tensors, and the head.

A unit is what the assignment picks: one block's LoRA adapters (`granularity` "block"), or one
adapted Linear of a block, e.g. block 3's value projection "3.value" ("module"; `module_units`
splits the block map, bottom to top and in module order within a block). Training a set S makes exactly
those adapters and the head require grad. Everything else is frozen, so autograd records no graph
(and saves no activations) for any block below min(S): their inputs and weights need no grad.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

HEAD_NAMES = ("classifier", "score")
GRANULARITIES = ("block", "module")


@dataclass(frozen=True)
class Unit:
    """One unit: its index (0 = lowest), module prefix and LoRA parameter names; a module unit also
    names its block and its adapted Linear (leaf name, e.g. "value")."""

    index: int
    prefix: str
    lora_keys: tuple[str, ...]
    block: int | None = None
    module: str = ""

    @property
    def label(self) -> str:
        """How records and tables name the unit: "3" (a block) or "3.value" (a module of block 3)."""
        return f"{self.block}.{self.module}" if self.module else str(self.index)


@dataclass(frozen=True)
class UnitMap:
    """All units of a model, bottom to top, and the head's parameter names."""

    units: tuple[Unit, ...]
    head_keys: tuple[str, ...]

    def keys_of(self, unit_ids: list[int] | tuple[int, ...]) -> list[str]:
        """LoRA parameter names of the given units."""
        return [key for j in unit_ids for key in self.units[j].lora_keys]

    def unit_of_key(self) -> dict[str, int]:
        """Map each LoRA parameter name to its unit index."""
        return {key: unit.index for unit in self.units for key in unit.lora_keys}

    @property
    def labels(self) -> tuple[str, ...]:
        """Each unit's label ("3" or "3.value"), bottom to top."""
        return tuple(unit.label for unit in self.units)

    @property
    def granularity(self) -> str:
        """"module" when units are single adapted Linears, else "block"."""
        return "module" if any(unit.module for unit in self.units) else "block"


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the transformer blocks: the one with the most parameters."""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    lists = [(name, module) for name, module in lists if len(module) > 0]
    if not lists:
        raise ValueError("no nn.ModuleList of blocks found in the model")
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def discover_units(model: nn.Module) -> UnitMap:
    """Units from module names: works for BERT (`layer.N`), ViT (`layer.N`, `layers.N` in Transformers 5) and Llama
    (`layers.N`)."""
    list_name, blocks = find_block_list(model)
    params = dict(model.named_parameters())
    units = []
    for index in range(len(blocks)):
        prefix = f"{list_name}.{index}."
        keys = tuple(name for name in params if name.startswith(prefix) and ".lora_" in name)
        units.append(Unit(index, prefix, keys))
    head = tuple(name for name in params if any(f".{h}." in f".{name}" for h in HEAD_NAMES))
    if not head:
        raise ValueError(f"no classification head found (looked for modules named {HEAD_NAMES})")
    if not any(unit.lora_keys for unit in units):
        raise ValueError("no LoRA parameters inside the transformer blocks; check lora.targets")
    return UnitMap(tuple(units), head)


def module_units(blocks: UnitMap) -> UnitMap:
    """The module-granularity map of a block map: each adapted Linear of each block is a unit, ordered by
    block, then as the Linears appear in the block (e.g. 0.query, 0.value, 1.query, ...). A module is
    named by its leaf name, or by its path inside the block where two share a leaf name."""
    units: list[Unit] = []
    for block in blocks.units:
        prefixes = list(dict.fromkeys(key.split(".lora_", 1)[0] + "." for key in block.lora_keys))
        paths = [prefix[len(block.prefix):-1] for prefix in prefixes]
        leaves = [path.rsplit(".", 1)[-1] for path in paths]
        for prefix, path, leaf in zip(prefixes, paths, leaves):
            keys = tuple(key for key in block.lora_keys if key.startswith(prefix))
            units.append(Unit(len(units), prefix, keys, block.index, leaf if leaves.count(leaf) == 1 else path))
    return UnitMap(tuple(units), blocks.head_keys)


def units_at(model: nn.Module, granularity: str) -> UnitMap:
    """The model's units at `granularity` ("block" or "module"); ValueError for another value."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
    blocks = discover_units(model)
    return module_units(blocks) if granularity == "module" else blocks


def set_trainable(model: nn.Module, unit_map: UnitMap, unit_ids: list[int] | tuple[int, ...]) -> list[str]:
    """Make exactly the LoRA tensors of `unit_ids` and the head require grad; return their names."""
    trainable = set(unit_map.keys_of(unit_ids)) | set(unit_map.head_keys)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return [name for name, _ in model.named_parameters() if name in trainable]


def adapter_state(model: nn.Module, unit_map: UnitMap, unit_ids: list[int] | tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of the LoRA tensors (of `unit_ids`, default all units) and the head."""
    ids = range(len(unit_map.units)) if unit_ids is None else unit_ids
    wanted = set(unit_map.keys_of(list(ids))) | set(unit_map.head_keys)
    return {name: p.detach().clone() for name, p in model.named_parameters() if name in wanted}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter/head tensors into the model in place; unknown names are an error."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"adapter state has names the model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
