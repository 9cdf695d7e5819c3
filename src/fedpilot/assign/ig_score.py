"""IG-Score: how much each LoRA unit is worth training, locally, globally and combined.

Local (client i, unit j): Gamma_ij = ||g_ij||^2, the squared norm of the gradient of the mean loss
on a small IG set with respect to unit j's LoRA tensors: the loss decrease that a unit-size
gradient step on j would bring to first order (the information gain of training j).

Global: G_j = rho * G_j + (1 - rho) * sum_i n_i Gamma_ij / sum_i n_i over the clients that scored j
this round (the first report initialises G_j). It covers units that weak clients cannot score.

Combined: v_ij = lam * Gamma_ij / sum_{k in A_i} Gamma_ik + (1 - lam) * G_j / sum_{k in A_i} G_k
               + beta * sqrt(ln(t + 1) / (1 + n_j)),
over the client's affordable units A_i, with n_j the rounds in which any client trained unit j (an
exploration bonus; round 0 has no scores, so the bonus alone decides).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedpilot.models.units import UnitMap, set_trainable

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def squared_grad_norms(model: nn.Module, unit_map: UnitMap, units: Sequence[int]) -> dict[int, float]:
    """||grad||^2 summed over each unit's LoRA tensors (0 where a tensor got no gradient)."""
    params = dict(model.named_parameters())
    norms = {}
    for j in units:
        grads = [params[key].grad for key in unit_map.units[j].lora_keys]
        norms[j] = float(sum((g.float() ** 2).sum() for g in grads if g is not None))
    return norms


def local_scores(model: nn.Module, unit_map: UnitMap, units: Sequence[int], batches: Sequence[dict[str, torch.Tensor]],
                 loss_fn: LossFn) -> dict[int, float]:
    """Gamma_ij for `units`: gradients accumulated over micro-batches so the mean loss is scored."""
    if not units:
        return {}
    set_trainable(model, unit_map, units)
    model.zero_grad(set_to_none=True)
    total = sum(len(next(iter(b.values()))) for b in batches)
    for batch in batches:
        size = len(next(iter(batch.values())))
        (loss_fn(model, batch) * (size / total)).backward()
    scores = squared_grad_norms(model, unit_map, units)
    model.zero_grad(set_to_none=True)
    return scores


def update_global(global_scores: Mapping[int, float], reports: Sequence[tuple[Mapping[int, float], float]],
                  rho: float) -> dict[int, float]:
    """EMA of the data-weighted mean of this round's local scores, per unit."""
    if not 0 <= rho < 1:
        raise ValueError(f"rho must be in [0, 1), got {rho}")
    updated = dict(global_scores)
    units = sorted({j for scores, _ in reports for j in scores})
    for j in units:
        pairs = [(scores[j], weight) for scores, weight in reports if j in scores]
        mean = sum(s * w for s, w in pairs) / sum(w for _, w in pairs)
        updated[j] = mean if j not in global_scores else rho * global_scores[j] + (1 - rho) * mean
    return updated


def normalised(values: Mapping[int, float], units: Sequence[int]) -> np.ndarray:
    """values over `units` divided by their sum (zeros when nothing is known)."""
    array = np.array([values.get(j, 0.0) for j in units], dtype=float)
    total = array.sum()
    return array / total if total > 0 else np.zeros_like(array)


def exploration_bonus(round_number: int, trained_rounds: Sequence[int]) -> np.ndarray:
    """sqrt(ln(t + 1) / (1 + n_j)): larger for units trained in few rounds so far."""
    counts = np.asarray(trained_rounds, dtype=float)
    return np.sqrt(math.log(round_number + 1) / (1.0 + counts))


def combined_values(units: Sequence[int], local: Mapping[int, float], global_scores: Mapping[int, float],
                    trained_rounds: Sequence[int], round_number: int, lam: float, beta: float) -> np.ndarray:
    """v_ij over the client's affordable `units` (see the module docstring)."""
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    bonus = exploration_bonus(round_number, [trained_rounds[j] for j in units])
    return lam * normalised(local, units) + (1 - lam) * normalised(global_scores, units) + beta * bonus
