"""The rank-heterogeneous baselines (hetlora, flexlora) and the rank slicing they train with."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from rich.console import Console
from torch import nn

from fedpilot.assign.budgets import ClientBudget
from fedpilot.client import ClientUpdate, Plan, TrainSettings, train_client
from fedpilot.config import load_config
from fedpilot.engines.local import run_local
from fedpilot.federation import build_federation
from fedpilot.memory.cost import CostProfile, MiB, mem_of
from fedpilot.models.rank import mem_at_ranks, pad_rank, reduced_rank, slice_rank
from fedpilot.models.units import Unit, UnitMap
from fedpilot.report.records import read_rounds
from fedpilot.strategies import REGISTRY, StrategyContext, make_strategy
from fedpilot.aggregate.product import svd_factors
from fedpilot.strategies.flexlora import average_product
from fedpilot.strategies.hetlora import fit_rank

torch.set_num_threads(1)

N, R = 4, 8
UPLOAD = 1 * MiB
PROFILE = CostProfile(model="synthetic", batch=16, length=64, dtype="fp32", rank=R, targets=("query", "value"),
                      frozen=100 * MiB, head=1 * MiB, head_path=1 * MiB, peak=2 * MiB, state=(3 * MiB,) * N,
                      path=tuple((N - k) * 10 * MiB for k in range(N)), lora=(0,) * N,
                      head_path_per_example=0.0, peak_per_example=0.0, path_per_example=(0.0,) * N,
                      lora_per_example=(0.0,) * N)
ALL = tuple(range(N))


def context(budgets: list[ClientBudget], sizes: list[int] | None = None, units: int = N) -> StrategyContext:
    unit_map = UnitMap(tuple(Unit(j, f"layer.{j}.", (f"layer.{j}.lora_A", f"layer.{j}.lora_B")) for j in range(units)),
                       ("classifier.weight",))
    return StrategyContext(unit_map, sizes or [10] * len(budgets), load_config(None, []), PROFILE, budgets,
                           (UPLOAD,) * units)


# -- rank slicing ------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x)


def tiny_lora() -> tuple[nn.Module, str, str]:
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["query"]))
    keys = [k for k, _ in model.named_parameters() if ".lora_" in k]
    a_key, b_key = sorted(keys)
    with torch.no_grad():
        dict(model.named_parameters())[b_key].normal_()  # PEFT starts B at zero
    return model, a_key, b_key


def test_reduced_rank_equals_full_rank_with_zero_trailing_components():
    model, a_key, b_key = tiny_lora()
    params = dict(model.named_parameters())
    full_a, full_b = params[a_key], params[b_key]
    before_a, before_b = full_a.detach().clone(), full_b.detach().clone()
    x = torch.randn(3, 6)
    with torch.no_grad():
        full_a[2:] = 0
        full_b[:, 2:] = 0
        expected = model(x)
        full_a.copy_(before_a)
        full_b.copy_(before_b)
    with reduced_rank(model, {a_key: 2, b_key: 2}):
        small = dict(model.named_parameters())
        assert small[a_key].shape == (2, 6) and small[b_key].shape == (5, 2)
        assert torch.allclose(model(x), expected, atol=1e-6)
        assert not torch.allclose(model(x), model.base_model.model.query.base_layer(x), atol=1e-3)  # LoRA acts
        model(x).sum().backward()
        assert small[a_key].grad.shape == (2, 6)
    after = dict(model.named_parameters())
    assert after[a_key] is full_a and after[b_key] is full_b
    assert torch.equal(full_a, before_a) and torch.equal(full_b, before_b)
    with reduced_rank(model, {}):
        assert dict(model.named_parameters())[a_key] is full_a


def test_slice_and_pad_are_inverse_on_the_leading_components():
    a, b = torch.arange(12.0).reshape(4, 3), torch.arange(8.0).reshape(2, 4)
    assert torch.equal(slice_rank("m.lora_A.w", a, 2), a[:2]) and torch.equal(slice_rank("m.lora_B.w", b, 2), b[:, :2])
    padded = pad_rank("m.lora_A.w", a[:2], 4)
    assert torch.equal(padded[:2], a[:2]) and torch.equal(padded[2:], torch.zeros(2, 3))
    assert pad_rank("m.lora_B.w", b[:, :1], 4).shape == (2, 4)


def test_training_a_reduced_rank_client_returns_small_tensors():
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["query"]))
    keys = tuple(k for k, _ in model.named_parameters() if ".lora_" in k)

    class Wrapped(nn.Module):  # a classifier-shaped model: returns .loss
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x, labels):
            return type("Out", (), {"loss": nn.functional.cross_entropy(self.inner(x), labels)})

    wrapped = Wrapped()
    keys = tuple(f"inner.{k}" for k in keys)
    unit_map = UnitMap((Unit(0, "inner.", keys),), ())
    data = Dataset.from_dict({"x": torch.randn(8, 6).tolist(), "label": [0, 1, 2, 3, 4, 0, 1, 2]}).with_format("torch")
    state = {k: p.detach().clone() for k, p in wrapped.named_parameters() if k in keys}
    settings = TrainSettings(4, 1e-2, 0.0, "fp32", "cpu")
    update = train_client(wrapped, unit_map, state, Plan((0,), 2, ranks=(2,)), data, settings, 0, 0)
    shapes = {tuple(t.shape) for t in update.tensors.values()}
    assert shapes == {(2, 6), (5, 2)} and update.metrics["rank"] == 2
    assert {tuple(p.shape) for k, p in wrapped.named_parameters() if k in keys} == {(4, 6), (5, 4)}


# -- rank fitted to the budget -----------------------------------------------------------------------


def test_mem_at_rank_scales_state_and_lora_weights_linearly():
    full = mem_of(PROFILE, ALL)
    assert mem_at_ranks(PROFILE, dict.fromkeys(ALL, R), (UPLOAD,) * N) == full
    # r = 2: 6/8 of N * (3 MiB state + 1 MiB weights) saved
    assert mem_at_ranks(PROFILE, dict.fromkeys(ALL, 2), (UPLOAD,) * N) == full - 6 * N * 4 * MiB // 8
    assert mem_at_ranks(PROFILE, {3: 4}, (UPLOAD,) * N) == mem_of(PROFILE, (3,)) - 2 * MiB
    # mixed ranks: unit 3 at rank 4 saves 2 MiB, unit 1 at rank 2 saves 3 MiB
    assert mem_at_ranks(PROFILE, {3: 4, 1: 2}, (UPLOAD,) * N) == mem_of(PROFILE, (1, 3)) - 5 * MiB
    with pytest.raises(ValueError, match="rank must be in 1..8"):
        mem_at_ranks(PROFILE, {3: 9}, (UPLOAD,) * N)


def test_rank_grows_with_the_budget_and_never_exceeds_it():
    budgets = [ClientBudget(0, mem_of(PROFILE, ALL) - d * MiB, None) for d in range(0, 15)]
    budgets += [ClientBudget(1, 10**12, 4 * UPLOAD * 3 // 8), ClientBudget(1, PROFILE.fixed_mem, None)]
    ctx = context(budgets)
    ranks = [fit_rank(ctx, b) for b in budgets]
    assert ranks[0] == R and ranks[-2] == 3 and ranks[-1] is None
    memory_ranks = ranks[:-2]
    assert memory_ranks == sorted(memory_ranks, reverse=True) and len(set(memory_ranks)) > 4
    for name in ("hetlora", "flexlora"):
        plans = make_strategy(name, ctx).assign(1, list(range(len(budgets))))
        for client, plan in plans.items():
            rank = plan.ranks[0] if plan.ranks else None
            assert rank == ranks[client] and (plan.ranks is None or set(plan.ranks) == {rank})
            assert plan.estimated_bytes <= budgets[client].memory
            if rank is None:
                assert plan.units == () and plan.estimated_bytes == PROFILE.fixed_mem
                continue
            assert plan.units == ALL
            assert plan.upload_bytes == N * UPLOAD * rank // R
            assert budgets[client].upload is None or plan.upload_bytes <= budgets[client].upload
            if rank < R:  # one rank more would not fit memory or upload
                budget = budgets[client]
                assert (mem_at_ranks(PROFILE, dict.fromkeys(ALL, rank + 1), ctx.unit_upload) > budget.memory
                        or ctx.upload_at_ranks(dict.fromkeys(ALL, rank + 1)) > budget.upload)


# -- hetlora -----------------------------------------------------------------------------------------


def test_hetlora_zero_padded_weighted_aggregation_hand_computed():
    ctx = context([ClientBudget(0, 10**12, None)] * 2, sizes=[1, 3], units=1)
    strategy = make_strategy("hetlora", ctx)
    global_state = {"layer.0.lora_A": torch.full((3, 2), 7.0), "layer.0.lora_B": torch.full((2, 3), 7.0),
                    "classifier.weight": torch.zeros(2)}
    # client 0, rank 2: B A = diag(3, 4), norm 5, n = 1 -> 5; client 1, rank 1: B A = [[5, 0], [0, 0]], n = 3 -> 15
    first = ClientUpdate(0, {"layer.0.lora_A": torch.tensor([[3.0, 0], [0, 4]]), "layer.0.lora_B": torch.eye(2),
                             "classifier.weight": torch.zeros(2)}, 1)
    second = ClientUpdate(1, {"layer.0.lora_A": torch.tensor([[1.0, 0]]), "layer.0.lora_B": torch.tensor([[5.0], [0]]),
                              "classifier.weight": torch.full((2,), 4.0)}, 3)
    new, metrics = strategy.aggregate(1, global_state, [first, second])
    # weights 1/4, 3/4: A = 1/4 diag(3, 4) + 3/4 [[1, 0], [0, 0]]; B = 1/4 I + 3/4 [[5, 0], [0, 0]]
    assert torch.allclose(new["layer.0.lora_A"], torch.tensor([[1.5, 0], [0, 1], [7, 7]]))
    assert torch.allclose(new["layer.0.lora_B"], torch.tensor([[4.0, 0, 7], [0, 0.25, 7]]))
    assert torch.allclose(new["classifier.weight"], torch.full((2,), 3.0))
    assert metrics["pruned"] == []


def test_hetlora_self_pruning_lowers_the_rank_and_survives_a_checkpoint():
    ctx = context([ClientBudget(0, 10**12, None)] * 2, units=1)
    strategy = make_strategy("hetlora", ctx)
    torch.manual_seed(0)
    global_state = {"layer.0.lora_A": torch.randn(R, 6), "layer.0.lora_B": torch.randn(5, R),
                    "classifier.weight": torch.zeros(2)}
    weak_tail = dict(global_state)
    weak_tail["layer.0.lora_A"] = global_state["layer.0.lora_A"].clone()
    weak_tail["layer.0.lora_A"][6:] = 1e-4
    weak_tail["layer.0.lora_B"] = global_state["layer.0.lora_B"].clone()
    weak_tail["layer.0.lora_B"][:, 6:] = 1e-4
    assert {p.ranks for p in strategy.assign(1, [0, 1]).values()} == {(R,)}
    _, metrics = strategy.aggregate(1, global_state, [ClientUpdate(0, weak_tail, 10),
                                                      ClientUpdate(1, dict(global_state), 10)])
    assert metrics["pruned"] == [0] and metrics["pruned_ranks"] == {"0": 6}
    zero_b = {**global_state, "layer.0.lora_B": torch.zeros(5, R)}  # untrained B: nothing to judge
    assert strategy.aggregate(1, global_state, [ClientUpdate(1, zero_b, 10)])[1]["pruned"] == []
    plans = strategy.assign(2, [0, 1])
    assert plans[0].ranks == (6,) and plans[1].ranks == (R,)
    assert plans[0].upload_bytes == UPLOAD * 6 // R < plans[1].upload_bytes
    resumed = make_strategy("hetlora", ctx)
    resumed.restore(*strategy.state())
    assert resumed.assign(3, [0, 1])[0].ranks == (6,)


# -- flexlora ----------------------------------------------------------------------------------------


def test_flexlora_svd_reproduces_the_averaged_product():
    a0, b0 = torch.tensor([[1.0, 0, 0], [0, 1, 0]]), torch.tensor([[2.0, 0], [0, 0], [0, 1]])  # B0 A0: 3 x 3
    a1, b1 = torch.tensor([[0.0, 0, 4]]), torch.tensor([[0.0], [1], [0]])
    product = average_product([(a0, b0), (a1, b1)], [1, 3])
    assert torch.allclose(product, torch.tensor([[0.5, 0, 0], [0, 0, 3], [0, 0.25, 0]]))
    a, b = svd_factors(product, 3)
    assert a.shape == (3, 3) and b.shape == (3, 3) and torch.allclose(b @ a, product, atol=1e-6)
    # the first components are the top singular directions: rank 1 keeps the 3
    assert torch.allclose(b[:, :1] @ a[:1], torch.tensor([[0.0, 0, 0], [0, 0, 3], [0, 0, 0]]), atol=1e-6)
    wide_a, wide_b = svd_factors(torch.diag(torch.tensor([2.0, 1.0])), 4)  # fewer components than the rank
    assert wide_a.shape == (4, 2) and torch.allclose(wide_b @ wide_a, torch.diag(torch.tensor([2.0, 1.0])))


def test_flexlora_aggregate_keeps_global_rank_and_averages_products():
    ctx = context([ClientBudget(0, 10**12, None)] * 2, sizes=[1, 3], units=2)
    torch.manual_seed(1)
    global_state = {"layer.0.lora_A": torch.randn(R, 6), "layer.0.lora_B": torch.zeros(5, R),
                    "layer.1.lora_A": torch.randn(R, 6), "layer.1.lora_B": torch.zeros(5, R),
                    "classifier.weight": torch.zeros(2)}
    a_big, b_big, a_small, b_small = torch.randn(R, 6), torch.randn(5, R), torch.randn(2, 6), torch.randn(5, 2)
    big = {"layer.0.lora_A": a_big, "layer.0.lora_B": b_big, "classifier.weight": torch.ones(2)}
    small = {"layer.0.lora_A": a_small, "layer.0.lora_B": b_small, "classifier.weight": torch.ones(2)}
    updates = [ClientUpdate(0, big, 1), ClientUpdate(1, small, 3)]
    new, _ = make_strategy("flexlora", ctx).aggregate(1, global_state, updates)
    expected = (b_big @ a_big + 3 * b_small @ a_small) / 4
    assert new["layer.0.lora_A"].shape == (R, 6) and new["layer.0.lora_B"].shape == (5, R)
    assert torch.allclose(new["layer.0.lora_B"] @ new["layer.0.lora_A"], expected, atol=1e-5)
    assert torch.equal(new["layer.1.lora_A"], global_state["layer.1.lora_A"])  # nobody sent unit 1
    assert torch.equal(new["classifier.weight"], torch.ones(2))


# -- end to end --------------------------------------------------------------------------------------


def test_rank_baselines_are_registered():
    assert {"hetlora", "flexlora"} <= set(REGISTRY)


def base_overrides(tmp_path) -> list[str]:
    return ["data.max_train_examples=300", "clients.num_clients=3", "clients.per_round=3", "eval.max_examples=50",
            "eval.final_full=false", "model.max_length=32", "train.rounds=2", "train.local_steps=2",
            "train.batch_size=4", f"output.dir={tmp_path}"]


@pytest.fixture(scope="module")
def weak_memory(tmp_path_factory) -> int:
    """Bytes at which all units train at rank 4 but not 5 (profile cached for the runs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDPILOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        federation = build_federation(load_config(None, base_overrides(tmp_path_factory.mktemp("fit"))))
    units = tuple(range(len(federation.unit_map.units)))
    return mem_at_ranks(federation.profile, dict.fromkeys(units, 4), federation.unit_upload())


@pytest.mark.parametrize("name", ["hetlora", "flexlora"])
def test_tiny_run_logs_a_smaller_upload_for_the_weak_client(tmp_path, weak_memory, name):
    config = load_config(None, [*base_overrides(tmp_path), f"output.name={name}", f"strategy.name={name}",
                                f'clients.groups=[{{share: 0.3334, memory: "{weak_memory}"}}, '
                                '{share: 0.6666, memory: "100%"}]'])
    run_dir, summary = run_local(config, Console(quiet=True))
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2] and summary["final_accuracy"] is not None
    for record in rounds:
        weak, *strong = record["clients"]
        assert weak["rank"] == 4 and all(c["rank"] == 8 for c in strong)
        assert weak["upload_bytes"] * 2 == strong[0]["upload_bytes"]
        assert weak["sent_bytes"] < strong[0]["sent_bytes"]
        assert weak["saved_tensor_bytes"] <= weak["estimated_bytes"] <= weak["budget_bytes"]
        assert math.isfinite(weak["loss"])
