"""Product-space merging of LoRA units: hand-checked products, mixed ranks, SVD re-factoring, dead components."""

from __future__ import annotations

import pytest
import torch

from fedpilot.aggregate.product import client_products, factors, fill_rank, products
from fedpilot.aggregate.stagg import stagg_round

A, B = "l.lora_A.w", "l.lora_B.w"


def unit(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {A: a, B: b}


def test_a_lower_rank_client_changes_only_the_components_it_trained():
    torch.manual_seed(0)
    a, b = torch.randn(4, 6), torch.randn(5, 4)
    global_unit = unit(a, b)
    # the client trained the first 2 components: its own A_2, B_2 replace them, the rest stay
    a2, b2 = a[:2] + 0.1, b[:, :2] - 0.2
    got = client_products(unit(a2, b2), global_unit)[A]
    expected = b2 @ a2 + b[:, 2:] @ a[2:]
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(client_products(global_unit, global_unit)[A], b @ a, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        client_products(unit(torch.randn(5, 6), torch.randn(5, 5)), global_unit)


def test_product_merge_averages_b_a_and_refactors_it_exactly_at_full_rank():
    torch.manual_seed(1)
    global_unit = unit(torch.randn(2, 6), torch.zeros(5, 2))
    clients = [unit(torch.randn(2, 6), torch.randn(5, 2)) for _ in range(2)]
    space = {0: products(global_unit)}
    updates = [({0: client_products(c, global_unit)}, w) for c, w in zip(clients, (1.0, 3.0))]
    merged, _, _ = stagg_round(space, updates, 2, {}, temporal=False)
    new = factors(merged[0], global_unit)
    mean = (clients[0][B] @ clients[0][A] + 3 * clients[1][B] @ clients[1][A]) / 4  # rank <= 4, kept at rank 2
    u, s, vh = torch.linalg.svd(mean)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    assert torch.allclose(new[B] @ new[A], best, atol=1e-4)
    assert new[A].shape == (2, 6) and new[B].shape == (5, 2)


def test_components_with_no_singular_value_keep_the_previous_a_so_they_can_still_learn():
    a_old = torch.randn(4, 6)
    rank_one = torch.outer(torch.randn(5), torch.randn(6))
    new = factors({A: rank_one}, unit(a_old, torch.zeros(5, 4)))
    assert torch.allclose(new[B] @ new[A], rank_one, atol=1e-5)
    assert torch.equal(new[A][1:], a_old[1:]) and torch.equal(new[B][:, 1:], torch.zeros(5, 3))


def test_fill_rank_completes_a_lower_rank_client_with_the_global_trailing_components():
    a, b = torch.randn(4, 6), torch.randn(5, 4)
    filled = fill_rank({A: a[:2] + 1, B: b[:, :2] + 1, "head": torch.ones(3)}, unit(a, b) | {"head": torch.zeros(3)})
    assert torch.equal(filled[A][2:], a[2:]) and torch.equal(filled[A][:2], a[:2] + 1)
    assert torch.equal(filled[B][:, 2:], b[:, 2:]) and torch.equal(filled["head"], torch.ones(3))
