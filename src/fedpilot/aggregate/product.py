"""Merging LoRA units in product space: STAgg on each adapted layer's B A, re-factored by truncated SVD.

A unit's adapted layer holds A (r x in) and B (out x r). Averaging A and B separately averages
factors that different clients may have rotated or rescaled differently (B R, R^-1 A is the same
update), and mean(B_i) mean(A_i) != mean(B_i A_i). In product space the server works on
P = B A (out x in) instead:

    client product   P_i = P + (B_i A_i - B[:, :r_i] A[:r_i])     (r_i: the rank the client trained at)
    merged           P'  = STAgg over the P_i (see `aggregate/stagg.py`)
    re-factored      B' = U_r S_r^(1/2),  A' = S_r^(1/2) V_r^T     (truncated SVD of P' at the unit's rank r)

A client at rank r_i < r changed only the first r_i components of the global factors, so its update
is taken against those (the trailing components it never saw are not counted as removed). Since
the SVD orders components by singular value, a later client's first r_i components are the best
rank-r_i approximation of the global product. Components with a zero singular value would have
A and B both zero, whose gradients are zero forever; they keep the previous A's rows with B = 0
(as PEFT initialises LoRA), which leaves P' unchanged and lets them learn again.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedpilot.models.rank import lora_factor, partner_key, tensor_rank

Unit = dict[str, Tensor]


def layer_keys(unit: Mapping[str, Tensor]) -> list[str]:
    """The A keys of a unit's adapted layers (each with its B partner in the unit)."""
    return [key for key in unit if lora_factor(key) == "A" and partner_key(key) in unit]


def products(unit: Mapping[str, Tensor]) -> Unit:
    """A key -> B A (out x in, at least float32) for each adapted layer of a unit."""
    return {key: _wide(unit[partner_key(key)]) @ _wide(unit[key]) for key in layer_keys(unit)}


def client_products(client: Mapping[str, Tensor], global_unit: Mapping[str, Tensor]) -> Unit:
    """A client's unit in product space: the global P plus its change of the components it trained.

    Raises ValueError when the client's unit is not the global unit's layers at some rank <= r.
    """
    if set(client) != set(global_unit):
        raise ValueError(f"client unit tensors {sorted(client)} differ from the global unit's {sorted(global_unit)}")
    result = {}
    for key in layer_keys(global_unit):
        a, b = client[key], client[partner_key(key)]
        rank = tensor_rank(key, a)
        if rank > tensor_rank(key, global_unit[key]) or tensor_rank(partner_key(key), b) != rank:
            raise ValueError(f"{key!r}: client factors of shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit "
                             f"the global ones {tuple(global_unit[key].shape)}")
        a_global, b_global = _wide(global_unit[key]), _wide(global_unit[partner_key(key)])
        result[key] = b_global @ a_global + _wide(b) @ _wide(a) - b_global[:, :rank] @ a_global[:rank]
    return result


def svd_factors(product: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(A, B) of rank `rank` with B A the best rank-`rank` approximation of `product` (out x in).

    B = U[:, :r] S^(1/2), A = S^(1/2) V^T[:r]; zero components where `product` has fewer than r
    singular values above round-off (s_max * max(out, in) * machine epsilon, as `torch.linalg.matrix_rank`).
    """
    u, s, vh = torch.linalg.svd(product, full_matrices=False)
    tolerance = (s.max() if s.numel() else 0.0) * max(product.shape) * torch.finfo(s.dtype).eps
    kept = min(rank, int((s > tolerance).sum()))
    root = s[:kept].sqrt()
    a = product.new_zeros(rank, product.shape[1])
    b = product.new_zeros(product.shape[0], rank)
    a[:kept] = root[:, None] * vh[:kept]
    b[:, :kept] = u[:, :kept] * root
    return a, b


def factors(merged: Mapping[str, Tensor], previous: Mapping[str, Tensor]) -> Unit:
    """The unit's A and B from its merged products, at the previous factors' rank and dtypes.

    Components whose A row came out zero keep the previous A row, with a zero B column.
    """
    unit = {}
    for key, product in merged.items():
        a_old, b_old = previous[key], previous[partner_key(key)]
        a, b = svd_factors(product, tensor_rank(key, a_old))
        dead = a.abs().sum(dim=1) == 0
        a[dead] = _wide(a_old)[dead]
        b[:, dead] = 0
        unit[key], unit[partner_key(key)] = a.to(a_old.dtype), b.to(b_old.dtype)
    return unit


def fill_rank(client: Mapping[str, Tensor], global_unit: Mapping[str, Tensor]) -> Unit:
    """A client's factors at a rank r_i < r completed with the global factors' trailing components
    (A rows / B columns r_i..r-1), so a factor-space average sees no change where the client trained none."""
    filled = {}
    for key, tensor in client.items():
        target = global_unit[key]
        have, full = tensor_rank(key, tensor), tensor_rank(key, target)
        if have is None or have == full:
            filled[key] = tensor
        elif lora_factor(key) == "A":
            filled[key] = torch.cat([tensor, target[have:].to(tensor.dtype)], dim=0)
        else:
            filled[key] = torch.cat([tensor, target[:, have:].to(tensor.dtype)], dim=1)
    return filled


def _wide(tensor: Tensor) -> Tensor:
    """The tensor in at least float32, for products and SVDs that do not lose small updates."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
