"""What a budget can reach under the cost model: the deepest unit, how many units it can upload.

"Deepest" is the lowest block k (0 = next to the embeddings) that a client can train at all:
Mem({k}) <= memory and Up({k}) <= upload. Training k lets it train any higher unit too, memory
and upload permitting, since a higher lowest unit saves fewer activations.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.memory.cost import CostProfile, mem_of


def deepest_unit(profile: CostProfile, memory: int, unit_upload: Sequence[int], upload: int | None) -> int | None:
    """The lowest unit k with Mem({k}) <= memory and its upload within `upload` (bytes; None = unlimited),
    or None when no unit fits (the client trains the head only)."""
    return lowest_fitting([mem_of(profile, [k]) for k in range(profile.num_units)], unit_upload, memory, upload)


def lowest_fitting(alone_mem: Sequence[float], unit_upload: Sequence[float], memory: float,
                   upload: float | None) -> int | None:
    """The lowest unit k whose Mem({k}) (`alone_mem[k]`) and upload fit `memory` and `upload` (bytes; None =
    unlimited), or None when none does."""
    for k, (needed, sent) in enumerate(zip(alone_mem, unit_upload)):
        if needed <= memory and (upload is None or sent <= upload):
            return k
    return None


def upload_units(unit_upload: Sequence[int], upload: int | None) -> int:
    """How many units an upload budget (bytes per round; None = unlimited) carries, cheapest first."""
    if upload is None:
        return len(unit_upload)
    count, total = 0, 0
    for size in sorted(unit_upload):
        total += size
        if total > upload:
            break
        count += 1
    return count


def top_unit_memory(profile: CostProfile) -> int:
    """Mem({top unit}) in bytes: the memory budget that reaches the top unit, the cheapest a block gets."""
    return mem_of(profile, [profile.num_units - 1])


def lora_bytes(profile: CostProfile) -> tuple[int, ...]:
    """Bytes of each unit's LoRA weights, as sent over the wire: M_state(j) / 3.

    M_state(j) holds the gradients and the two AdamW moments of unit j's LoRA weights, each with the
    weights' dtype and size (`fedpilot.memory.profiler`), so the weights are one third of it.
    """
    return tuple(state // 3 for state in profile.state)
