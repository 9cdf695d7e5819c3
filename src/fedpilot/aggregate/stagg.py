"""STAgg with DWA: Fed-piLot's spatial-temporal aggregation of LoRA units on the server.

A unit j is one group of LoRA tensors (one transformer block's lora_A / lora_B).
In round t the clients Q_t are sampled; C_j are the clients that returned unit j
(coverage c_j = |C_j|) and client i has data-size weight n_i. Per tensor of unit j:

    spatial   D_j     = sum_{i in C_j} n_i (W_ij - W_j) / sum_{i in C_j} n_i
    temporal  H_j    <- mu * H_j + (1 - mu) * D_j             (H_j starts at 0)
              m_j    <- mu * m_j + (1 - mu)                   (m_j starts at 0: the weight H_j carries)
              Hhat_j  = H_j / m_j
    coverage  alpha_j = c_j / e_j                             (e_j: sampled clients that could afford j)
    DWA       r_j     = N_j^t / N_j^{t-1}                     (1 if no previous norm or it is 0)
              N_j     = sum_{i in C_j} n_i ||W_ij - W_j|| / sum_{i in C_j} n_i
              eta_j   = K exp(r_j / T) / sum_{k trained} exp(r_k / T),   K = number of trained units
    update    W_j    <- W_j + eta_j * (alpha_j * D_j + (1 - alpha_j) * Hhat_j)

A unit nobody trained keeps W_j, decays H_j <- mu * H_j and m_j <- mu * m_j (so Hhat_j, the
weighted mean of the unit's past updates with weight mu^age, is unchanged by idle rounds), keeps
its last norm and ages by one (a_j = rounds since last trained).

The temporal term is an exactly bias-corrected average of the unit's past updates
(momentum="ema", bias="exact"), so it has the scale of one update whatever the pattern of idle
rounds. Switches keep the earlier and the design's literal forms for ablations:
- bias="rounds": Hhat_j = H_j / (1 - mu^k_j) with k_j the rounds unit j was trained, which ignores
  the decay in idle rounds (after 5 idle rounds a fresh D = 1 at alpha = 0.2 moves the unit ~0.85);
- momentum="sum": the literal H_j <- mu * H_j + D_j, Hhat_j = H_j, which grows towards
  D_j / (1 - mu) (10x at mu = 0.9) for updates that keep one direction;
- coverage over |Q_t| (pass one int for every unit): units only strong clients can reach always
  lean on their history;
- dwa_ratio="mean": N_j = ||D_j||, the norm of the averaged update, which grows when fewer clients
  were averaged (the mean of c noisy updates has norm ~ 1/sqrt(c)), so a noisy one-client round is
  boosted and, as the rates have mean 1, every other unit shrunk. N_j above, the clients' own mean
  update norm, does not depend on how many were averaged.

||.|| is the Frobenius norm over all tensors of the unit, and the mean of eta over
the trained units is 1 (Liu et al., CVPR 2019). Only C_j enters D_j: averaging over
every client would shrink a rarely trained unit's update towards zero, and a low
coverage leans the update on the unit's history H_j instead.
dwa=False sets eta_j = 1. temporal=False is the spatial-only ablation
W_j <- W_j + D_j, leaving momentum untouched (metrics report alpha = eta = 1).
The classifier head is plain FedAvg over every client that returned it:
`fedpilot.aggregate.fedavg.weighted_average`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fedpilot.aggregate.fedavg import validate_weights, weighted_average

Unit = dict[str, Tensor]
ClientUpdate = tuple[Mapping[int, Mapping[str, Tensor]], float]
MOMENTUM_KINDS = ("ema", "sum")
BIAS_KINDS = ("exact", "rounds")
DWA_RATIOS = ("client", "mean")


@dataclass(frozen=True)
class UnitHistory:
    """Server-side temporal state of one unit, carried from round to round."""

    momentum: Unit
    age: int = 0
    last_norm: float | None = None
    updates: int = 0
    mass: float = 0.0


@dataclass(frozen=True)
class Mix:
    """How one trained unit's step is formed: coverage weight, DWA rate, momentum decay and kind.

    momentum None is the spatial-only ablation (the step is D_j).
    """

    alpha: float
    eta: float
    mu: float
    momentum: str | None
    bias: str = "exact"


@dataclass(frozen=True)
class UnitMetrics:
    """What STAgg did to one unit this round, for logging and ablations."""

    coverage: int
    alpha: float
    eta: float
    delta_norm: float
    age: int
    dwa_norm: float = 0.0


def spatial_delta(
    global_unit: Mapping[str, Tensor], client_units: Sequence[Mapping[str, Tensor]], weights: Sequence[float]
) -> tuple[Unit, float]:
    """Weighted mean offset of the covering clients from the global unit (tensors no client sent get
    zero), and the weighted mean of the clients' own offset norms (N_j of the module docstring)."""
    if not client_units:
        raise ValueError("spatial_delta needs at least one client unit")
    offsets = [_offset(unit, global_unit) for unit in client_units]
    mean = weighted_average(offsets, weights)
    client_norm = sum(w * unit_norm(o) for o, w in zip(offsets, weights)) / sum(weights)
    return {key: mean[key] if key in mean else torch.zeros_like(value) for key, value in global_unit.items()}, client_norm


def unit_norm(unit: Mapping[str, Tensor]) -> float:
    """Frobenius norm over all tensors of a unit, the quantity DWA compares across rounds."""
    return math.sqrt(sum(float(tensor.double().square().sum()) for tensor in unit.values()))


def dwa_weights(
    norms: Mapping[int, float], last_norms: Mapping[int, float | None], temperature: float
) -> dict[int, float]:
    """DWA step sizes: a softmax of each unit's norm ratio, scaled so their mean is 1."""
    _check_temperature(temperature)
    ratios = {unit: _norm_ratio(norm, last_norms.get(unit)) for unit, norm in norms.items()}
    if not ratios:
        return {}
    top = max(ratios.values())
    exps = {unit: math.exp((ratio - top) / temperature) for unit, ratio in ratios.items()}
    total = sum(exps.values())
    return {unit: len(exps) * value / total for unit, value in exps.items()}


def stagg_round(
    global_units: Mapping[int, Mapping[str, Tensor]],
    client_updates: Sequence[ClientUpdate],
    eligible: int | Mapping[int, int],
    history: Mapping[int, UnitHistory],
    mu: float = 0.9,
    temperature: float = 2.0,
    dwa: bool = True,
    temporal: bool = True,
    momentum: str = "ema",
    bias: str = "exact",
    dwa_ratio: str = "client",
) -> tuple[dict[int, Unit], dict[int, UnitHistory], dict[int, UnitMetrics]]:
    """One STAgg round: new global units, new history and per-unit metrics; the inputs are left untouched.

    `eligible` is e_j, the sampled clients that could afford unit j (one int: the same for every
    unit, e.g. |Q_t|). Raises ValueError for bad hyper-parameters, a unit trained by more clients
    than are eligible for it, or updates that do not match the global units.
    """
    _check_round(global_units, client_updates, mu, temperature, (momentum, bias, dwa_ratio))
    covering = _group_by_unit(client_updates)
    counts = _eligible_counts(eligible, covering)
    past = {j: history[j] if j in history else _fresh_history(unit) for j, unit in global_units.items()}
    spatial = {j: spatial_delta(global_units[j], units, weights) for j, (units, weights) in covering.items()}
    deltas = {j: delta for j, (delta, _) in spatial.items()}
    norms = {j: unit_norm(delta) if dwa_ratio == "mean" else client_norm for j, (delta, client_norm) in spatial.items()}
    etas = dwa_weights(norms, {j: past[j].last_norm for j in deltas}, temperature) if dwa and temporal else {}
    new_units: dict[int, Unit] = {}
    new_history: dict[int, UnitHistory] = {}
    metrics: dict[int, UnitMetrics] = {}
    for j, unit in global_units.items():
        if j not in deltas:
            new_units[j], new_history[j] = _idle_step(unit, past[j], mu if temporal else 1.0)
            metrics[j] = UnitMetrics(coverage=0, alpha=0.0, eta=0.0, delta_norm=0.0, age=new_history[j].age)
            continue
        coverage = len(covering[j][0])
        alpha = coverage / counts[j] if temporal else 1.0
        eta = etas.get(j, 1.0)
        mix = Mix(alpha, eta, mu, momentum if temporal else None, bias)
        new_units[j], new_history[j] = _trained_step(unit, deltas[j], past[j], norms[j], mix)
        metrics[j] = UnitMetrics(coverage=coverage, alpha=alpha, eta=eta, delta_norm=unit_norm(deltas[j]), age=0,
                                 dwa_norm=norms[j])
    return new_units, new_history, metrics


def _trained_step(
    unit: Mapping[str, Tensor], delta: Unit, past: UnitHistory, norm: float, mix: Mix
) -> tuple[Unit, UnitHistory]:
    """Move a trained unit by D_j (spatial-only) or by the DWA-scaled mix of D_j and its refreshed momentum."""
    if mix.momentum is None:
        return _add(unit, delta), replace(past, age=0, last_norm=norm)
    mu, updates, mass = mix.mu, past.updates + 1, mix.mu * past.mass + (1 - mix.mu)
    if mix.momentum == "ema":
        momentum = {key: mu * past.momentum[key] + (1 - mu) * value for key, value in delta.items()}
        weight = mass if mix.bias == "exact" else 1 - mu**updates
        carried = {key: value / weight for key, value in momentum.items()}
    else:
        momentum = {key: mu * past.momentum[key] + value for key, value in delta.items()}
        carried = momentum
    step = {key: mix.eta * (mix.alpha * delta[key] + (1 - mix.alpha) * carried[key]) for key in delta}
    return _add(unit, step), UnitHistory(momentum, age=0, last_norm=norm, updates=updates, mass=mass)


def _idle_step(unit: Mapping[str, Tensor], past: UnitHistory, decay: float) -> tuple[Unit, UnitHistory]:
    """Keep an untrained unit's weights, decay its momentum and its weight mass, and age it by one round."""
    momentum = {key: decay * value for key, value in past.momentum.items()}
    kept = {key: value.clone() for key, value in unit.items()}
    return kept, replace(past, momentum=momentum, age=past.age + 1, mass=decay * past.mass)


def _eligible_counts(eligible: int | Mapping[int, int],
                     covering: Mapping[int, tuple[list[Mapping[str, Tensor]], list[float]]]) -> dict[int, int]:
    """e_j for every trained unit, checked to be at least its coverage."""
    counts = {j: eligible if isinstance(eligible, int) else eligible.get(j, 0) for j in covering}
    short = {j: (counts[j], len(units)) for j, (units, _) in covering.items() if counts[j] < len(units)}
    if short:
        raise ValueError(f"units trained by more clients than were eligible (eligible, trained): {short}")
    return counts


def _add(unit: Mapping[str, Tensor], step: Mapping[str, Tensor]) -> Unit:
    """Apply a per-tensor step to a unit, keeping each tensor's dtype."""
    return {key: (value + step[key]).to(value.dtype) for key, value in unit.items()}


def _offset(unit: Mapping[str, Tensor], global_unit: Mapping[str, Tensor]) -> Unit:
    """W_ij - W_j per tensor, refusing tensors the global unit lacks or whose shape differs."""
    unknown = sorted(set(unit) - set(global_unit))
    if unknown:
        raise ValueError(f"client unit has tensors the global unit lacks: {unknown}")
    for key, value in unit.items():
        expected = global_unit[key].shape
        if value.shape != expected:
            raise ValueError(f"tensor {key!r}: client shape {tuple(value.shape)} != global shape {tuple(expected)}")
    return {key: value - global_unit[key] for key, value in unit.items()}


def _norm_ratio(norm: float, last_norm: float | None) -> float:
    """r_j = ||D^t|| / ||D^{t-1}||, or 1 when there is no usable previous norm."""
    return norm / last_norm if last_norm else 1.0


def _fresh_history(unit: Mapping[str, Tensor]) -> UnitHistory:
    """History of a unit seen for the first time: zero momentum, age 0, no previous norm."""
    return UnitHistory({key: torch.zeros_like(value) for key, value in unit.items()})


def _group_by_unit(client_updates: Sequence[ClientUpdate]) -> dict[int, tuple[list[Mapping[str, Tensor]], list[float]]]:
    """Collect, per unit, the tensors and weights of the clients that trained it (C_j)."""
    covering: dict[int, tuple[list[Mapping[str, Tensor]], list[float]]] = {}
    for units, weight in client_updates:
        for j, unit in units.items():
            tensors, weights = covering.setdefault(j, ([], []))
            tensors.append(unit)
            weights.append(weight)
    return covering


def _check_temperature(temperature: float) -> None:
    """DWA divides by T, so it must be positive and finite."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_round(
    global_units: Mapping[int, Mapping[str, Tensor]],
    client_updates: Sequence[ClientUpdate],
    mu: float,
    temperature: float,
    kinds: tuple[str, str, str],
) -> None:
    """Reject hyper-parameters and client updates that would make the round's math meaningless."""
    if not 0 <= mu < 1:
        raise ValueError(f"mu must be in [0, 1), got {mu}")
    for name, kind, valid in zip(("momentum", "bias", "dwa_ratio"), kinds, (MOMENTUM_KINDS, BIAS_KINDS, DWA_RATIOS)):
        if kind not in valid:
            raise ValueError(f"{name} must be one of {valid}, got {kind!r}")
    _check_temperature(temperature)
    validate_weights([weight for _, weight in client_updates], len(client_updates))
    unknown = sorted({j for units, _ in client_updates for j in units} - set(global_units))
    if unknown:
        raise ValueError(f"client updates name units not in the global model: {unknown}")
