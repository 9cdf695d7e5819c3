"""IG-Score against closed-form gradients, the global EMA and the combined value by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedpilot.assign.ig_score import combined_values, exploration_bonus, local_scores, update_global
from fedpilot.models.units import Unit, UnitMap


class Block(nn.Module):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.tensor(values))


class Toy(nn.Module):
    """y = x . w0 + 2 x . w1, with w_k the 'LoRA' tensor of block k, and an unused head."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block([0.5, -1.0]), Block([0.25, 0.0])])
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.layers[0].lora_A + 2 * (x @ self.layers[1].lora_A)


UNITS = UnitMap((Unit(0, "layers.0.", ("layers.0.lora_A",)), Unit(1, "layers.1.", ("layers.1.lora_A",))),
                ("head.weight", "head.bias"))


def mse(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return 0.5 * ((model(batch["x"]) - batch["t"]) ** 2).mean()


def test_local_score_is_the_closed_form_squared_gradient_norm():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]])
    t = torch.tensor([1.0, 0.0, 2.0])
    w0, w1 = np.array([0.5, -1.0]), np.array([0.25, 0.0])
    residual = x.numpy() @ w0 + 2 * (x.numpy() @ w1) - t.numpy()
    grad_w0 = x.numpy().T @ residual / 3
    expected0 = float(grad_w0 @ grad_w0)
    scores = local_scores(Toy(), UNITS, [0, 1], [{"x": x, "t": t}], mse)
    assert scores[0] == pytest.approx(expected0, rel=1e-6)
    assert scores[1] == pytest.approx(4 * expected0, rel=1e-6)


def test_micro_batches_score_the_same_mean_loss():
    x, t = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.arange(6.0)
    whole = local_scores(Toy(), UNITS, [0, 1], [{"x": x, "t": t}], mse)
    split = local_scores(Toy(), UNITS, [0, 1], [{"x": x[:4], "t": t[:4]}, {"x": x[4:], "t": t[4:]}], mse)
    assert split == pytest.approx(whole, rel=1e-6)


def test_only_requested_units_are_scored_and_no_grads_are_left_behind():
    model = Toy()
    scores = local_scores(model, UNITS, [1], [{"x": torch.ones(2, 2), "t": torch.zeros(2)}], mse)
    assert list(scores) == [1]
    assert all(p.grad is None for p in model.parameters())
    assert local_scores(model, UNITS, [], [], mse) == {}


def test_global_score_is_a_data_weighted_ema():
    first = update_global({}, [({0: 1.0, 1: 4.0}, 1.0), ({0: 3.0}, 3.0)], rho=0.5)
    assert first == {0: pytest.approx((1 * 1 + 3 * 3) / 4), 1: 4.0}
    second = update_global(first, [({1: 2.0}, 2.0)], rho=0.5)
    assert second == {0: pytest.approx(2.5), 1: pytest.approx(0.5 * 4.0 + 0.5 * 2.0)}
    with pytest.raises(ValueError, match="rho"):
        update_global({}, [], rho=1.0)


def test_combined_value_by_hand():
    local = {1: 3.0, 2: 1.0}
    global_scores = {0: 10.0, 1: 2.0, 2: 2.0}
    values = combined_values([1, 2], local, global_scores, trained_rounds=[0, 3, 0], round_number=2,
                             lam=0.5, beta=0.1)
    bonus = [math.sqrt(math.log(3) / 4), math.sqrt(math.log(3) / 1)]
    expected = [0.5 * 0.75 + 0.5 * 0.5 + 0.1 * bonus[0], 0.5 * 0.25 + 0.5 * 0.5 + 0.1 * bonus[1]]
    assert values == pytest.approx(expected)


def test_round_zero_has_no_bonus_and_unknown_scores_count_zero():
    assert exploration_bonus(0, [0, 5]).tolist() == [0.0, 0.0]
    assert combined_values([0, 1], {}, {}, [0, 0], 0, lam=0.5, beta=1.0).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="lam"):
        combined_values([0], {}, {}, [0], 1, lam=1.5, beta=0.0)
