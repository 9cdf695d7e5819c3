"""The measured memory model: meta equals CPU, estimates equal measurements, batch scaling, budgets."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import BertConfig, LlamaConfig, PretrainedConfig, ViTConfig

from fedpilot.memory.build import build_model, default_targets_of, is_image_model, load_model_config, make_batch
from fedpilot.memory.cost import BudgetError, CostProfile, GiB, MiB, cache_dir, load_profile, mem_of
from fedpilot.memory.depth import PER_UNIT, depth_of, extend, truncated
from fedpilot.memory.cost import parse_budget
from fedpilot.memory.gpus import GPUS, usable_gpu_bytes
from fedpilot.memory.meta import meta_like_cpu
from fedpilot.memory.plot import profile_table, run_profile_command, write_profile_report
from fedpilot.memory.meters import AllocatorPeak, running_peak
from fedpilot.memory.profiler import AllocationMeter, ProfileError, SavedBytesMeter, measure_plans, measure_step
from fedpilot.memory.profiler import measure_blocks, measure_profile, profile
from fedpilot.models.units import adapter_state, discover_units, set_trainable

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: conftest.one_thread

CONFIGS = {
    "bert": lambda: BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64),
    "vit": lambda: ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                             intermediate_size=64),
    "llama": lambda: LlamaConfig(vocab_size=100, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                                 pad_token_id=0),
}
SEQ = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """Model folders holding only the config.json of each tiny random-init architecture (profiles get cached)."""
    root = tmp_path_factory.mktemp("models")
    for name, make in CONFIGS.items():
        config: PretrainedConfig = make()
        config.save_pretrained(root / name)
    return {name: str(root / name) for name in CONFIGS}


def length_of(config: PretrainedConfig) -> int:
    """Image size of an image model, else the test sequence length."""
    return config.image_size if is_image_model(config) else SEQ


@pytest.mark.parametrize(("name", "dtype"), [("bert", "fp32"), ("vit", "fp32"), ("llama", "fp32"), ("bert", "bf16"),
                                             ("llama", "bf16")])
def test_meta_measures_exactly_what_cpu_measures(name, dtype, folders):
    config = load_model_config(folders[name])
    steps = {}
    for device in ("cpu", "meta"):
        model, unit_map = build_model(config, dtype, rank=4, device=device)
        steps[device] = measure_plans(model, unit_map, config, 3, length_of(config), dtype, device)
    assert steps["meta"] == steps["cpu"]
    assert all(step.saved > 0 for step in steps["cpu"])


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_attention_allocates_output_and_logsumexp_only(device):
    """CPU's flash kernel allocates out (3x2x17x16 fp32 = 6528 B) and logsumexp (3x2x17 fp32 = 408 B); on meta
    the kernel choice is asked with CPU stand-ins, which the meter must not see."""
    query = torch.zeros(3, 2, 17, 16, device=device)
    with AllocationMeter() as meter, meta_like_cpu() if device == "meta" else contextlib.nullcontext():
        torch.nn.functional.scaled_dot_product_attention(query, query, query)
    assert meter.peak == 6528 + 408


@pytest.mark.parametrize("name", list(CONFIGS))
def test_estimate_equals_measurement_on_held_out_subsets(name, folders):
    cost = profile(folders[name], 4, seq=SEQ, rank=4, device="meta")
    config = load_model_config(folders[name])
    model, unit_map = build_model(config, rank=4, device="cpu")
    batch = make_batch(config, 4, cost.length)
    n = cost.num_units
    held_out = [s for r in range(2, n) for s in itertools.combinations(range(n), r)]
    for units in held_out:
        step = measure_step(model, unit_map, units, batch)
        assert mem_of(cost, units) - cost.peak == step.measured, units
        assert mem_of(cost, units) >= step.peak_total, units


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lower_units_cost_more(name, folders):
    cost = profile(folders[name], 2, seq=SEQ, rank=4, device="meta")
    single = [mem_of(cost, [k]) for k in range(cost.num_units)]
    assert all(low > high for low, high in zip(single, single[1:]))
    assert all(low > high for low, high in zip(cost.path_mem, cost.path_mem[1:]))
    assert mem_of(cost, []) == cost.fixed_mem < single[-1] <= mem_of(cost, range(cost.num_units))


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_activations_scale_linearly_with_batch(name, folders):
    path = folders[name]
    small, large = profile(path, 2, seq=SEQ, rank=4), profile(path, 4, seq=SEQ, rank=4)
    scaled = small.at_batch(4)
    for field in ("frozen", "head", "state", "head_path", "path", "lora", "peak"):
        assert getattr(scaled, field) == getattr(large, field), field
    config = load_model_config(path)
    model, unit_map = build_model(config, rank=4)
    batch = make_batch(config, 4, SEQ)
    for units in [(0, 2), (1,), (0, 1, 2)]:
        assert mem_of(scaled, units) - scaled.peak == measure_step(model, unit_map, units, batch).measured


@pytest.mark.parametrize(("name", "depth", "dtype", "device"), [
    ("bert", 6, "fp32", "meta"), ("bert", 8, "bf16", "meta"), ("vit", 7, "fp32", "meta"), ("vit", 8, "fp32", "meta"),
    ("llama", 6, "bf16", "meta"), ("llama", 8, "fp32", "meta"), ("llama", 13, "fp32", "meta"),
    ("bert", 7, "amp-bf16", "cpu"),
])
def test_deep_profile_extended_from_shallow_copies_equals_every_block_measured(name, depth, dtype, device):
    config = CONFIGS[name]()
    config.num_hidden_layers, config.num_labels = depth, 2
    config.pad_token_id = getattr(config, "pad_token_id", None) or 0
    args = (config, 3, length_of(config), dtype, 4, tuple(default_targets_of(config)), device, name)
    extended, measured = measure_profile(*args), measure_blocks(*args)
    assert extended == measured
    assert extended.num_units == depth and len(set(extended.path)) == depth


def layered_profile(n: int) -> CostProfile:
    """The synthetic profile of n blocks with 1 MiB of frozen weights per block; the lowest unit's LoRA saves 2 MiB."""
    cost = synthetic_profile(n)
    return replace(cost, frozen=cost.frozen + n * MiB, lora=(2 * MiB,) + cost.lora[1:])


@pytest.mark.parametrize("depth", [4, 5, 9])
def test_extend_keeps_top_units_and_moves_the_rest_by_one_block_each(depth):
    assert extend(layered_profile(3), layered_profile(4), depth) == layered_profile(depth)
    with pytest.raises(ValueError, match="cannot extend"):
        extend(layered_profile(4), layered_profile(3), depth)


def test_deep_profile_is_measured_whole_when_shallow_copies_do_not_predict_it(monkeypatch):
    config = CONFIGS["llama"]()
    config.num_hidden_layers, config.num_labels = 6, 2

    def odd_at_five(full: PretrainedConfig, depth: int) -> PretrainedConfig:
        short = truncated(full, depth)
        short.intermediate_size += 8 * (depth == 5)
        return short

    monkeypatch.setattr("fedpilot.memory.profiler.truncated", odd_at_five)
    args = (config, 2, SEQ, "fp32", 4, ("q_proj", "v_proj"), "meta", "llama")
    assert measure_profile(*args) == measure_blocks(*args)


def test_depth_and_truncated_copies():
    config = CONFIGS["llama"]()
    assert depth_of(config) == 3 and truncated(config, 2).num_hidden_layers == 2 == depth_of(truncated(config, 2))
    assert config.num_hidden_layers == 3
    config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    assert depth_of(config) is None
    config.layer_types = ["full_attention"] * 3
    assert truncated(config, 2).layer_types == ["full_attention"] * 2


def test_bf16_autocast_profile_matches_measurement_on_cpu(folders):
    path = folders["bert"]
    cost = profile(path, 2, seq=SEQ, dtype="amp-bf16", rank=4, device="cpu")
    config = load_model_config(path)
    model, unit_map = build_model(config, "amp-bf16", rank=4)
    batch = make_batch(config, 2, SEQ, "amp-bf16")
    for units in [(0, 2), (1, 2, 3)]:
        step = measure_step(model, unit_map, units, batch, autocast=torch.bfloat16)
        assert mem_of(cost, units) - cost.peak == step.measured
    with pytest.raises(ProfileError, match="autocast"):
        profile(path, 2, seq=SEQ, dtype="amp-bf16", device="meta")
    with pytest.raises(ProfileError, match="dtype"):
        profile(path, 2, seq=SEQ, dtype="fp8")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_saved_bytes_are_all_that_a_forward_keeps_besides_its_outputs(name, folders):
    config = load_model_config(folders[name])
    model, unit_map = build_model(config, rank=4)
    batch = make_batch(config, 2, length_of(config))
    set_trainable(model, unit_map, (0,))
    with AllocationMeter() as allocation, SavedBytesMeter(model) as meter:
        loss = model(**batch).loss
    # live = new storages (the saved ones, except the labels made before, and the loss)
    labels, loss_bytes = batch["labels"].untyped_storage().nbytes(), loss.untyped_storage().nbytes()
    assert meter.live_saved > 0 and allocation.live + labels == meter.live_saved + loss_bytes


def test_meter_counts_each_step_and_skips_weights(folders):
    config = load_model_config(folders["bert"])
    model, unit_map = build_model(config, rank=4)
    batch = make_batch(config, 2, SEQ)
    step = measure_step(model, unit_map, (1,), batch)
    with SavedBytesMeter(model) as meter:
        for _ in range(3):
            model(**batch).loss.backward()
    with SavedBytesMeter() as counting_weights:
        model(**batch).loss.backward()
    assert meter.step_peaks == [step.saved] * 3 == [meter.peak_saved] * 3
    assert meter.live_saved == 0 == counting_weights.live_saved
    assert counting_weights.peak_saved > meter.peak_saved


def test_meter_leaves_gradients_unchanged(folders):
    config = load_model_config(folders["llama"])
    model, unit_map = build_model(config, rank=4)
    trainable = [p for name, p in model.named_parameters() if name in set(set_trainable(model, unit_map, (0, 2)))]
    batch = make_batch(config, 2, SEQ)
    grads = []
    for meter in (contextlib.nullcontext(), SavedBytesMeter(model, attribute=True)):
        model.zero_grad(set_to_none=True)
        with meter:
            model(**batch).loss.backward()
        grads.append([p.grad.clone() for p in trainable])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_profiles_are_cached_and_round_trip_json(folders):
    path = folders["vit"]
    first = profile(path, 2, rank=4)
    files = list(cache_dir().glob("vit-b2-l16-fp32-*.json"))
    assert len(files) == 1 and load_profile(files[0]) == first
    assert profile(path, 2, rank=4) == first
    assert profile(path, 2, rank=4, use_cache=False) == first
    assert profile(path, 2, image_size=32, rank=4).length == 32


def test_report_writes_json_and_png_and_table(folders, tmp_path):
    cost = profile(folders["llama"], 2, seq=SEQ, rank=4)
    json_path, png_path = write_profile_report(cost, tmp_path / "out")
    assert load_profile(json_path) == cost and png_path.stat().st_size > 10_000
    assert profile_table(cost).row_count == cost.num_units + 2
    console = Console(record=True, width=120)
    run_profile_command(folders["llama"], 2, SEQ, None, "fp32", "meta", 4, [], tmp_path / "cmd", console)
    assert "all units" in console.export_text() and len(list((tmp_path / "cmd").iterdir())) == 2


def synthetic_profile(n: int = 6) -> CostProfile:
    """A profile with a 100 MiB fixed cost, 10 MiB of path per block and 2 MiB per unit."""
    return CostProfile(model="synthetic", batch=8, length=64, dtype="fp32", rank=8, targets=("query", "value"),
                       frozen=90 * MiB, head=1 * MiB, head_path=1 * MiB, peak=8 * MiB, state=(1 * MiB,) * n,
                       path=tuple((n - k) * 10 * MiB for k in range(n)), lora=(1 * MiB,) * n,
                       head_path_per_example=0.0, peak_per_example=0.0, path_per_example=(0.0,) * n,
                       lora_per_example=(0.0,) * n)


def test_llama_7b_shape_config_builds_on_meta():
    config = load_model_config(str(Path(__file__).parents[1] / "configs/models/llama-7b-shape/config.json"))
    model, unit_map = build_model(config, "bf16", rank=8, device="meta")
    backbone = sum(p.numel() for name, p in model.named_parameters() if ".lora_" not in name)
    assert len(unit_map.units) == 32 and 6.5e9 < backbone < 6.8e9
    assert model.base_model.model.model.layers[0].mlp.up_proj.weight.shape == (11008, 4096)


@pytest.fixture
def cost() -> CostProfile:
    """The synthetic profile for budget tests."""
    return synthetic_profile()


@pytest.mark.parametrize(("text", "expected"), [
    ("6GiB", 6 * GiB), ("750MiB", 750 * MiB), ("8GB", 8 * 10**9), ("123456789", 123456789), (2 * GiB, 2 * GiB),
    ("1.5 GiB", int(1.5 * GiB)), ("512m", 512 * MiB), ("A100-80G", usable_gpu_bytes("a100-80g")),
])
def test_budget_parses_sizes_and_gpus(text, expected, cost):
    assert parse_budget(text, cost) == expected


def test_gpu_budgets_keep_a_reserve_and_percent_is_of_all_units(cost):
    assert parse_budget("t4-16g") == int(15360 * MiB - 768 * MiB - 0.05 * 15360 * MiB)
    assert all(usable_gpu_bytes(name) < total for name, total in GPUS.items())
    assert parse_budget("80%", cost) == int(0.8 * mem_of(cost, range(6)))
    assert parse_budget("100%", cost) == mem_of(cost, range(6))


@pytest.mark.parametrize(("text", "message"), [
    ("v100-64g", "unknown GPU name 'v100-64g'; did you mean v100-16g, v100-32g"), ("-1GiB", "negative"), ("-5%", "negative"),
    ("1.2.3GB", "cannot parse"), ("6 GiBs", "cannot parse"), ("", "cannot parse"), ("12%%", "percentage"),
    ("50MiB", "below the minimum of 100.0 MiB"), ("10%", "below the minimum"),
])
def test_budget_errors(text, message, cost):
    with pytest.raises(BudgetError, match=message.replace("(", r"\(")):
        parse_budget(text, cost)


def test_percent_budget_needs_a_profile():
    with pytest.raises(BudgetError, match="needs a cost profile"):
        parse_budget("40%")


def client_round(device: str) -> tuple[int, dict]:
    """One client round (2 steps of 4 examples) of a 2-block tiny BERT with LoRA on `device`, with a
    transient of 100 bytes: (resident bytes as MemoryWatch counts them, the update's metrics)."""
    from datasets import Dataset

    from conftest import tiny_bert
    from fedpilot.client import Plan, TrainSettings, tensor_bytes, train_client
    from fedpilot.models.loading import add_lora

    model = add_lora(tiny_bert(layers=2), rank=4, alpha=8, dropout=0.0, targets=["query", "value"]).to(device)
    unit_map = discover_units(model)
    ids = torch.randint(1, 100, (8, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "label": [i % 3 for i in range(8)]}).with_format("torch")
    update = train_client(model, unit_map, adapter_state(model, unit_map), Plan((0, 1), 2), data,
                          TrainSettings(4, 1e-3, 0.0, "fp32", device), client_id=0, seed=0, transient=100)
    trainable = [p for p in model.parameters() if p.requires_grad]
    resident = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers()) + 3 * tensor_bytes(trainable)
    return resident, update.metrics


def test_a_client_round_records_its_saved_tensor_count_and_no_allocator_peak_on_cpu():
    resident, metrics = client_round("cpu")
    assert "measured_bytes" not in metrics and "cuda_peak_bytes" not in metrics
    assert isinstance(metrics["saved_tensor_bytes"], int)
    assert metrics["saved_tensor_bytes"] > resident + 100  # the saved activations come on top


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_client_round_on_cuda_records_the_allocators_peak_beside_the_count():
    resident, metrics = client_round("cuda")
    # weights, grads and moments are allocated on the GPU, and the step's activations on top of them
    assert resident < metrics["cuda_peak_bytes"] < 20 * metrics["saved_tensor_bytes"]


def test_running_peak_and_the_allocators_own_count():
    assert running_peak([5, -3, 4, -10, 2]) == 6 and running_peak([-4, 1]) == 0 and running_peak([]) == 0
    kept = torch.empty(10, dtype=torch.uint8)
    with AllocatorPeak() as allocator:
        first = torch.empty(2**20, dtype=torch.uint8)
        del first
        second = torch.empty(2**19, dtype=torch.uint8)
        del kept  # allocated before: its free is not reported and lowers nothing
    assert 2**20 <= allocator.peak < 2**20 + 4096 and second.numel() == 2**19


def test_head_only_steps_have_their_own_transient_peak(folders):
    cost = profile(folders["bert"], 4, seq=SEQ, rank=4, device="meta")
    assert cost.head_peak is not None and cost.head_peak != cost.peak
    assert cost.fixed_mem == cost.frozen + cost.head + cost.head_path + cost.head_peak == mem_of(cost, [])
    assert all(p >= 0 for p in cost.path_mem)
    assert [mem_of(cost, [k]) for k in range(cost.num_units)] == [
        cost.frozen + cost.head + cost.head_path + cost.peak + cost.path[k] + cost.unit_mem[k]
        for k in range(cost.num_units)]
    assert (cost.peak_of([]), cost.peak_of([1])) == (cost.head_peak, cost.peak)
    hand_built = replace(cost, head_peak=None)
    assert hand_built.fixed_mem == mem_of(hand_built, []) == cost.fixed_mem - cost.head_peak + cost.peak
