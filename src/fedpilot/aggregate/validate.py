"""What a client's reply must be before the server merges it, and a check of the merged state.

A reply to a plan for units S (each unit j at LoRA rank r_j, or the model's rank R) must hold
exactly the LoRA tensors of S and the head, each floating point, finite and shaped like the global
tensor at its plan's rank (A: r_j x in, B: out x r_j; `models/rank.py`). Its `num_examples` (its
aggregation weight) must equal the data size the server knows for the client and stay within
`clients.max_examples`. Its update norm,

    ||u - g|| = sqrt(sum_k ||u_k - g_k||_F^2)   (g_k: the global tensor at the plan's rank),

may be at most `clients.max_update_norm_ratio` times the median norm of the round's replies that
passed the other checks. `screen_updates` returns the reason of each reply that fails; the
engines leave those out of the round.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedpilot.client import ClientUpdate, Plan
from fedpilot.models.rank import slice_rank
from fedpilot.models.units import UnitMap

State = dict[str, Tensor]
SHOWN = 3
"""Names listed in a reason before it says how many more there are."""


@dataclass(frozen=True)
class UpdateLimits:
    """What the server holds against a reply: each client's known data size, the bound on any claimed size
    (None: no bound beyond the known size) and the norm ratio to the round's median (None: off)."""

    client_sizes: Mapping[int, int] = field(default_factory=dict)
    max_examples: int | None = None
    max_norm_ratio: float | None = None


def names(keys: Sequence[str]) -> str:
    """The first few of `keys`, sorted, and how many more."""
    shown = sorted(keys)
    more = f" and {len(shown) - SHOWN} more" if len(shown) > SHOWN else ""
    return f"{shown[:SHOWN]}{more}"


def plan_reference(unit_map: UnitMap, global_state: State, plan: Plan) -> State:
    """The global tensors a plan's client starts from: its units' LoRA tensors at the plan's ranks, and the head.

    Raises KeyError when the global state lacks one of them.
    """
    ranks = dict(zip(plan.units, plan.ranks)) if plan.ranks is not None else {}
    reference = {}
    for j in plan.units:
        for key in unit_map.units[j].lora_keys:
            tensor = global_state[key]
            reference[key] = slice_rank(key, tensor, ranks[j]) if j in ranks else tensor
    reference.update({key: global_state[key] for key in unit_map.head_keys})
    return reference


def tensor_problem(tensors: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> str | None:
    """Why `tensors` are not a well-formed reply to a plan whose starting tensors are `reference`, or None.

    Checked in order: no name of `reference` missing, no name outside it, then per tensor (sorted by
    name): a torch floating-point tensor, the reference's shape, no NaN, no infinite value.
    """
    missing = [key for key in reference if key not in tensors]
    if missing:
        return f"missing tensors of its plan: {names(missing)}"
    extra = [key for key in tensors if key not in reference]
    if extra:
        return f"tensors outside its plan: {names(extra)}"
    for key in sorted(tensors):
        tensor, expected = tensors[key], tuple(reference[key].shape)
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return f"{key}: dtype {getattr(tensor, 'dtype', type(tensor).__name__)} is not floating point"
        if tuple(tensor.shape) != expected:
            return f"{key}: shape {tuple(tensor.shape)}, expected {expected} at its plan's rank"
        if (nan := int(torch.isnan(tensor).sum())) > 0:
            return f"{key}: {nan} NaN values"
        if (inf := int(torch.isinf(tensor).sum())) > 0:
            return f"{key}: {inf} infinite values"
    return None


def size_problem(claimed: int, known: int | None, bound: int | None) -> str | None:
    """Why a reply's `num_examples` cannot weight it, or None: it must be a positive int, at most `bound`
    (when set) and equal to the size the server knows for the client (`known`; None: unknown, refused)."""
    if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed < 1:
        return f"num_examples {claimed!r} is not a positive integer"
    if bound is not None and claimed > bound:
        return f"num_examples {claimed} exceeds clients.max_examples={bound}"
    if known is None:
        return f"num_examples {claimed}: the server knows no data size for this client"
    if claimed != known:
        return f"num_examples {claimed} differs from the {known} examples the server knows for this client"
    return None


def update_norm(tensors: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """sqrt(sum_k ||tensors[k] - reference[k]||_F^2) over the reference's names, summed in float64."""
    total = sum(float((tensors[key].double() - ref.double()).pow(2).sum()) for key, ref in reference.items())
    return math.sqrt(total)


def norm_outliers(norms: Mapping[int, float], ratio: float) -> dict[int, str]:
    """Client id -> reason, for each norm above `ratio` times the median of `norms` (none when empty)."""
    if not norms:
        return {}
    median = statistics.median(norms.values())
    return {client: f"update norm {norm:.4g} exceeds clients.max_update_norm_ratio={ratio:g} times the round's "
                    f"median {median:.4g}"
            for client, norm in norms.items() if norm > ratio * median}


def screen_updates(updates: Sequence[ClientUpdate], plans: Mapping[int, Plan], unit_map: UnitMap,
                   global_state: State, limits: UpdateLimits) -> dict[int, str]:
    """Client id -> why its reply is refused, for every reply in `updates` that fails a check (module doc).

    The norm check runs last, over the replies that passed the others; a reply without a plan is refused.
    """
    problems: dict[int, str] = {}
    norms: dict[int, float] = {}
    for update in updates:
        plan = plans.get(update.client_id)
        if plan is None:
            problems[update.client_id] = "a reply from a client that had no plan this round"
            continue
        reference = plan_reference(unit_map, global_state, plan)
        problem = (tensor_problem(update.tensors, reference)
                   or size_problem(update.num_examples, limits.client_sizes.get(update.client_id),
                                   limits.max_examples))
        if problem is None:
            norms[update.client_id] = update_norm(update.tensors, reference)
        else:
            problems[update.client_id] = problem
    if limits.max_norm_ratio is not None:
        problems.update(norm_outliers(norms, limits.max_norm_ratio))
    return problems


def nonfinite_keys(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the tensors of `state` holding a NaN or an infinite value, sorted."""
    return sorted(key for key, tensor in state.items() if not bool(torch.isfinite(tensor).all()))
