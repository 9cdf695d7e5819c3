"""IG-Score against closed-form gradients and projections, the unbiased estimate's mean, the global EMA
and the combined value by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_bert
from fedpilot.assign.ig_score import (combined_values, exploration_bonus, local_scores, normalised_report,
                                      rank_shares, tangent_inner, update_global)
from fedpilot.client import ig_indices
from fedpilot.models.loading import add_lora
from fedpilot.models.units import Unit, UnitMap, discover_units


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
    scores = local_scores(Toy(), UNITS, [0, 1], [[{"x": x, "t": t}]], mse, kind="factors")
    assert scores[0][-1] == pytest.approx(expected0, rel=1e-6)
    assert scores[1][-1] == pytest.approx(4 * expected0, rel=1e-6)


def test_micro_batches_score_the_same_mean_loss():
    x, t = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.arange(6.0)
    whole = local_scores(Toy(), UNITS, [0, 1], [[{"x": x, "t": t}]], mse, kind="factors")
    split = local_scores(Toy(), UNITS, [0, 1], [[{"x": x[:4], "t": t[:4]}, {"x": x[4:], "t": t[4:]}]], mse,
                         kind="factors")
    assert split[0] == pytest.approx(whole[0], rel=1e-6) and split[1] == pytest.approx(whole[1], rel=1e-6)


def test_only_requested_units_are_scored_and_no_grads_are_left_behind():
    model = Toy()
    scores = local_scores(model, UNITS, [1], [[{"x": torch.ones(2, 2), "t": torch.zeros(2)}]], mse, kind="factors")
    assert list(scores) == [1]
    assert all(p.grad is None for p in model.parameters())
    assert local_scores(model, UNITS, [], [[]], mse) == {}
    with pytest.raises(ValueError, match="score kind"):
        local_scores(model, UNITS, [1], [[]], mse, kind="norm")
    with pytest.raises(ValueError, match="two halves"):
        local_scores(model, UNITS, [1], [[], [], []], mse)


# --- the product-space (tangent) score ---------------------------------------------------------------


def projection(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """P_B G + G P_A - P_B G P_A with explicit projection matrices (out x out and in x in)."""
    p_b = b @ torch.linalg.pinv(b.T @ b) @ b.T
    p_a = a.T @ torch.linalg.pinv(a @ a.T) @ a
    return p_b @ g + g @ p_a - p_b @ g @ p_a


@pytest.mark.parametrize("b_zero", [False, True])
def test_tangent_inner_equals_the_explicit_projection_of_the_product_gradient(b_zero):
    rng = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 7, generator=rng, dtype=torch.float64), torch.randn(5, 3, generator=rng, dtype=torch.float64)
    b = torch.zeros_like(b) if b_zero else b
    g1, g2 = torch.randn(5, 7, generator=rng, dtype=torch.float64), torch.randn(5, 7, generator=rng, dtype=torch.float64)
    scale = 2.0
    grads = [(scale * b.T @ g, scale * g @ a.T) for g in (g1, g2)]  # dL/dA, dL/dB of dW = scale * B A
    expected = float((projection(a, b, g1) * projection(a, b, g2)).sum())
    assert tangent_inner(a, b, grads[0], grads[1], scale) == pytest.approx(expected, rel=1e-9)
    if b_zero:  # only G P_A is left, and it is not zero
        assert expected == pytest.approx(float(((g1 @ a.T @ torch.linalg.pinv(a @ a.T) @ a) * g2).sum()))


def lora_bert() -> tuple[nn.Module, UnitMap, list[dict[str, torch.Tensor]]]:
    model = add_lora(tiny_bert(), rank=4, alpha=8, dropout=0.0, targets=["query", "value"])
    torch.manual_seed(3)
    batch = {"input_ids": torch.randint(1, 100, (8, 12)), "labels": torch.randint(0, 3, (8,))}
    return model.eval(), discover_units(model), [batch]


def classify(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def test_product_scores_are_non_zero_for_every_unit_at_initialisation_unlike_the_factor_scores_a_part():
    model, unit_map, batches = lora_bert()
    units = range(len(unit_map.units))
    product = local_scores(model, unit_map, units, [batches], classify, kind="product", scale=2.0)
    assert all(product[j][-1] > 0 for j in units)
    # B = 0: dL/dA = s B^T G = 0, so the factor score is the B part alone and grows once B does
    params = dict(model.named_parameters())
    a_only = UnitMap(tuple(Unit(u.index, u.prefix, tuple(k for k in u.lora_keys if "lora_A" in k))
                           for u in unit_map.units), unit_map.head_keys)
    assert local_scores(model, a_only, units, [batches], classify, kind="factors")[0][-1] == 0.0
    assert all(params[k].abs().sum() == 0 for u in unit_map.units for k in u.lora_keys if "lora_B" in k)


def test_product_scores_do_not_depend_on_how_the_update_is_split_between_a_and_b():
    model, unit_map, batches = lora_bert()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in unit_map.keys_of(range(len(unit_map.units))):
            if "lora_B" in key:
                params[key].normal_(0, 0.1)
    units = range(len(unit_map.units))
    before = local_scores(model, unit_map, units, [batches], classify, ranks=(2, 4), kind="product", scale=2.0)
    factors_before = local_scores(model, unit_map, units, [batches], classify, kind="factors")
    with torch.no_grad():
        for key in unit_map.keys_of(range(len(unit_map.units))):
            params[key].mul_(4.0 if "lora_B" in key else 0.25)  # B -> 4B, A -> A/4: same B A
    after = local_scores(model, unit_map, units, [batches], classify, ranks=(2, 4), kind="product", scale=2.0)
    factors_after = local_scores(model, unit_map, units, [batches], classify, kind="factors")
    for j in units:
        assert after[j] == pytest.approx(before[j], rel=1e-6)
        assert before[j][0] < before[j][1]  # rank 2 can move less than rank 4
        assert factors_after[j][-1] != pytest.approx(factors_before[j][-1], rel=0.1)


def test_the_half_split_estimate_is_unbiased_where_one_mean_gradient_is_not():
    # loss = mean_i x_i . w: per-example gradient x_i ~ N(mu, I_d), ||mu||^2 = 1, d = 20, halves of h = 4.
    # E <g1, g2> = ||mu||^2 = 1; E ||g||^2 over all 2h examples = ||mu||^2 + d / (2h) = 3.5
    d, h, draws = 20, 4, 400
    mu = torch.zeros(d)
    mu[0] = 1.0
    model = nn.Module()
    model.layers = nn.ModuleList([Block([0.0] * d)])
    units = UnitMap((Unit(0, "layers.0.", ("layers.0.lora_A",)),), ())

    def linear(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (batch["x"] @ net.layers[0].lora_A).mean()

    rng = torch.Generator().manual_seed(0)
    unbiased, plain = [], []
    for _ in range(draws):
        x = mu + torch.randn(2 * h, d, generator=rng)
        unbiased.append(local_scores(model, units, [0], [[{"x": x[:h]}], [{"x": x[h:]}]], linear, kind="factors")[0][0])
        plain.append(local_scores(model, units, [0], [[{"x": x}]], linear, kind="factors")[0][0])
    assert np.mean(unbiased) == pytest.approx(1.0, abs=0.25)
    assert np.mean(plain) == pytest.approx(3.5, abs=0.4)


def test_the_ig_set_avoids_the_rounds_training_examples():
    training = torch.tensor([0, 2, 4, 6, 8])
    chosen = ig_indices(10, training, 4, seed=5)
    assert len(chosen) == 4 and set(chosen.tolist()) <= {1, 3, 5, 7, 9}
    assert torch.equal(chosen, ig_indices(10, training, 4, seed=5))
    everything = ig_indices(4, torch.tensor([0, 1, 2, 3, 0]), 3, seed=5)  # all trained on: draw from all
    assert len(everything) == 3 and len(set(everything.tolist())) == 3


def test_report_normalisation_and_rank_shares():
    assert normalised_report({0: 1.0, 1: 3.0, 2: -2.0}) == {0: 0.25, 1: 0.75, 2: 0.0}
    assert normalised_report({0: -1.0}) == {0: 0.0}
    assert rank_shares((0.5, 0.4, 1.0), (2, 4, 8)).tolist() == [0.5, 0.5, 1.0]  # non-decreasing
    assert rank_shares((2.0, -1.0, 1.0), (2, 4, 8)).tolist() == [1.0, 1.0, 1.0]  # clipped to [0, 1]
    assert rank_shares(None, (2, 4, 8)).tolist() == [0.25, 0.5, 1.0]
    assert rank_shares((1.0,), (2, 4, 8)).tolist() == [0.25, 0.5, 1.0]  # a report for other options
    assert rank_shares((0.3, 0.2, -0.1), (2, 4, 8)).tolist() == [0.25, 0.5, 1.0]  # no positive full score


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


def test_client_scores_are_taken_in_eval_mode_so_dropout_does_not_change_them():
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from fedpilot.client import ScoreSettings, TrainSettings, score_client

    data = Dataset.from_dict({"input_ids": torch.randint(1, 100, (40, 10), generator=torch.Generator().manual_seed(0)).tolist(),
                              "label": [i % 3 for i in range(40)]}).with_format("torch")
    settings = TrainSettings(4, 1e-3, 0.0, "fp32", "cpu")
    scoring = ScoreSettings(examples=8, ranks=(2, 4), kind="product", unbiased=True, scale=2.0, local_steps=2)
    scores = []
    for dropout in (0.0, 0.5):  # the same weights (dropout has none); in train mode the scores would differ
        torch.manual_seed(0)
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, num_labels=3,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        model = add_lora(BertForSequenceClassification(config), rank=4, alpha=8, dropout=0.0, targets=["query"])
        unit_map = discover_units(model)
        state = {k: p.detach().clone() for k, p in model.named_parameters() if k in unit_map.keys_of([0, 1])}
        scores.append(score_client(model, unit_map, state, (0, 1), data, settings, scoring, 4, seed=7))
        assert not model.training
    assert set(scores[0]) == {0, 1} and len(scores[0][0]) == 2
    for j in (0, 1):
        assert scores[1][j] == pytest.approx(scores[0][j], rel=1e-6)
