"""IG-Score: how much each LoRA unit is worth training, locally, globally and combined.

Local (client i, unit j), `strategy.score`:
- product: the gradient with respect to each adapted layer's low-rank update dW = s B A
  (A: r x in, B: out x r, s = lora_alpha / r), G = dL/dW, projected onto the directions a LoRA
  step can move B A in at first order (the tangent space of rank-r matrices at B A):

      P(G) = P_B G + G P_A - P_B G P_A,    P_B = B (B^T B)^+ B^T,   P_A = A^T (A A^T)^+ A

  Gamma_ij = sum over the unit's adapted layers of ||P(G)||^2: the first-order loss decrease of a
  unit step on j. It depends on B A only through its column and row spaces, so B -> cB, A -> A/c
  leaves it unchanged, and at initialisation (B = 0) it is ||G P_A||^2 > 0. It needs no G: with the
  LoRA gradients dA = s B^T G and dB = s G A^T that the scoring backward computes anyway,

      <P(G1), P(G2)> = ( <dA1, M_B dA2> + <dB1 M_A, dB2> - <C1, M_B C2 M_A> ) / s^2,
      M_B = (B^T B)^+,  M_A = (A A^T)^+,  C_k = dA_k A^T          (r x r matrices only)

  so it costs no activation memory beyond the LoRA backward's.
- factors (the design's literal form): ||dL/dA||^2 + ||dL/dB||^2, which scales with ||B|| and is
  0 in A at initialisation.
Estimate, `strategy.score_estimate`: unbiased splits the client's IG set in two halves
with gradients G1, G2 and scores <P(G1), P(G2)>, whose mean is ||P(E G)||^2 (the squared norm of
one mean gradient, ||P(G)||^2, is inflated by the gradient noise's variance / examples); plain
scores the whole set's mean gradient with itself. An unbiased score can be negative; values clip
it at 0.
Ranks: with rank options r_1 < ... < r_m = r, Gamma_ij(r_c) scores the unit trained at its first
r_c components (A[:r_c], B[:, :r_c]; `models/rank.py`), so each option is valued by what it can move.

Global: G_j = rho * G_j + (1 - rho) * sum_i n_i Gamma~_ij / sum_i n_i over the clients that scored j
this round (the first report initialises G_j), with each client's report normalised so that no
client's loss scale dominates (`strategy.global_norm`):
- report: Gamma~_ij = max(Gamma_ij, 0) / sum_{k in A_i} max(Gamma_ik, 0), the report sums to 1. This
  also favours units that many clients can afford: a weak client reporting 2 units gives each about
  1/2, a strong one reporting 6 about 1/6, so equal true scores come out unequal;
- mean: the same divided by |A_i| (the report averages 1 over its units), which treats equal true
  scores equally whatever a client can afford;
- none: the raw scores (the design's form).
Non-finite scores count as missing. The global score covers units weak clients cannot score.

Combined: v_ij = lam * Gamma_ij / sum_{k in A_i} Gamma_ik + (1 - lam) * G_j / sum_{k in A_i} G_k
               + beta * sqrt(ln(t + 1) / (1 + n_j)),
over the client's affordable units A_i, with n_j the rounds in which any client trained unit j (an
exploration bonus; it is 0 in round 0 and grows with ln(t + 1)). At rank option c the value
is v_ij * Gamma_ij(r_c) / Gamma_ij(r) (clipped to [0, 1] and non-decreasing in c), or r_c / r when
the client has no positive score for j.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedpilot.models.rank import lora_factor, partner_key
from fedpilot.models.units import UnitMap, set_trainable

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
Batches = Sequence[dict[str, torch.Tensor]]
Grads = dict[str, torch.Tensor]
Scores = dict[int, tuple[float, ...]]
"""unit -> its score at each rank option (ascending; the last is the largest option, the full rank by default)."""
SCORE_KINDS = ("product", "factors")


def set_gradients(model: nn.Module, unit_map: UnitMap, units: Sequence[int], batches: Batches,
                  loss_fn: LossFn) -> Grads:
    """Gradients of the mean loss over `batches` (micro-batches of one set) w.r.t. the units' LoRA tensors."""
    model.zero_grad(set_to_none=True)
    total = sum(len(next(iter(b.values()))) for b in batches)
    for batch in batches:
        size = len(next(iter(batch.values())))
        (loss_fn(model, batch) * (size / total)).backward()
    params = dict(model.named_parameters())
    grads = {key: params[key].grad.detach().double().clone() if params[key].grad is not None
             else torch.zeros_like(params[key], dtype=torch.float64) for key in unit_map.keys_of(list(units))}
    model.zero_grad(set_to_none=True)
    return grads


def tangent_inner(a: torch.Tensor, b: torch.Tensor, first: tuple[torch.Tensor, torch.Tensor],
                  second: tuple[torch.Tensor, torch.Tensor], scale: float) -> float:
    """<P(G1), P(G2)> of one adapted layer from its factors A (r x in), B (out x r) and two LoRA
    gradients (dA_k, dB_k); see the module docstring. float64 throughout."""
    a, b = a.double(), b.double()
    m_b = torch.linalg.pinv(b.T @ b, hermitian=True)
    m_a = torch.linalg.pinv(a @ a.T, hermitian=True)
    (da1, db1), (da2, db2) = first, second
    c1, c2 = da1 @ a.T, da2 @ a.T
    total = (da1 * (m_b @ da2)).sum() + ((db1 @ m_a) * db2).sum() - (c1 * (m_b @ c2 @ m_a)).sum()
    return float(total) / scale**2


def product_scores(params: Mapping[str, torch.Tensor], unit_map: UnitMap, units: Sequence[int],
                   grads: tuple[Grads, Grads], ranks: Sequence[int], scale: float) -> Scores:
    """Tangent-space scores per unit and rank option, summed over the unit's adapted layers."""
    scores = {}
    for j in units:
        a_keys = [k for k in unit_map.units[j].lora_keys if lora_factor(k) == "A"]
        per_rank = []
        for r in ranks:
            per_rank.append(sum(tangent_inner(params[k][:r], params[partner_key(k)][:, :r],
                                              *[(g[k][:r], g[partner_key(k)][:, :r]) for g in grads], scale)
                                for k in a_keys))
        scores[j] = tuple(per_rank)
    return scores


def factor_scores(unit_map: UnitMap, units: Sequence[int], grads: tuple[Grads, Grads],
                  ranks: Sequence[int]) -> Scores:
    """<g1, g2> over each unit's LoRA tensors (their leading r components per rank option); the design's form."""
    first, second = grads

    def inner(key: str, r: int) -> float:
        factor = lora_factor(key)
        pick = (lambda t: t[:r]) if factor == "A" else (lambda t: t[:, :r]) if factor == "B" else (lambda t: t)
        return float((pick(first[key]) * pick(second[key])).sum())

    return {j: tuple(sum(inner(k, r) for k in unit_map.units[j].lora_keys) for r in ranks) for j in units}


def local_scores(model: nn.Module, unit_map: UnitMap, units: Sequence[int], sets: Sequence[Batches],
                 loss_fn: LossFn, ranks: Sequence[int] = (), kind: str = "product", scale: float = 1.0) -> Scores:
    """Gamma_ij for `units` at each of `ranks` (ascending; empty = the tensors' own rank only).

    `sets` is one IG set (plain estimate: its mean gradient scored with itself) or two disjoint
    halves (unbiased estimate: the inner product of their mean gradients), each as micro-batches.
    `scale` is LoRA's s = alpha / r. Raises ValueError for an unknown `kind` or not 1 or 2 sets.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")
    if len(sets) not in (1, 2):
        raise ValueError(f"give one IG set or two halves, got {len(sets)}")
    if not units:
        return {}
    set_trainable(model, unit_map, units)
    grads = [set_gradients(model, unit_map, units, batches, loss_fn) for batches in sets]
    pair = (grads[0], grads[-1])
    params = {k: p.detach() for k, p in model.named_parameters() if k in pair[0]}
    full = [_rank_of(params, unit_map, units)]
    options = tuple(ranks) or tuple(full)
    if kind == "factors":
        return factor_scores(unit_map, units, pair, options)
    return product_scores(params, unit_map, units, pair, options, scale)


def _rank_of(params: Mapping[str, torch.Tensor], unit_map: UnitMap, units: Sequence[int]) -> int:
    """The LoRA rank of the units' A tensors (rows), or 1 for tensors that are not LoRA factors."""
    a_keys = [k for j in units for k in unit_map.units[j].lora_keys if lora_factor(k) == "A"]
    return params[a_keys[0]].shape[0] if a_keys else 1


def full_rank_scores(scores: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """Each unit's score at its largest rank option (the last); units with a non-finite score are left out."""
    return {j: float(values[-1]) for j, values in scores.items() if math.isfinite(values[-1])}


def normalised_report(scores: Mapping[int, float], per_unit: bool = False) -> dict[int, float]:
    """max(score, 0) / the sum of a report's positive scores (all zero when none is positive); with
    `per_unit`, times the number of units reported (the report then averages 1)."""
    positive = {j: max(v, 0.0) for j, v in scores.items()}
    total = sum(positive.values()) / (len(positive) if per_unit else 1)
    return {j: v / total if total > 0 else 0.0 for j, v in positive.items()}


def rank_shares(scores: Sequence[float] | None, ranks: Sequence[int]) -> np.ndarray:
    """Share of a unit's full-rank value each rank option keeps: Gamma(r_c) / Gamma(r) clipped to [0, 1]
    and made non-decreasing, or r_c / r without a positive, finite full-rank score (or one score per option)."""
    if scores is None or len(scores) != len(ranks) or not np.all(np.isfinite(scores)) or scores[-1] <= 0:
        return np.asarray(ranks, dtype=float) / ranks[-1]
    shares = np.clip(np.asarray(scores, dtype=float) / scores[-1], 0.0, 1.0)
    return np.maximum.accumulate(shares)


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
    """values over `units` (negative ones as 0) divided by their sum (zeros when nothing is known)."""
    array = np.maximum(np.array([values.get(j, 0.0) for j in units], dtype=float), 0.0)
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
