"""Unit discovery on BERT/ViT/Llama, freezing by plan, and no saved activations below min(S)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_bert, tiny_llama, tiny_vit
from fedpilot.memory.build import default_targets
from fedpilot.models.loading import ModelError, add_lora
from fedpilot.models.units import adapter_state, discover_units, load_adapter_state, set_trainable

CASES = [(tiny_bert, 4, "classifier"), (tiny_vit, 3, "classifier"), (tiny_llama, 3, "score")]


@pytest.mark.parametrize(("build", "blocks", "head"), CASES)
def test_units_are_blocks_in_order_with_their_lora(build, blocks, head):
    model = build()
    targets = default_targets(model)
    model = add_lora(model, rank=4, alpha=8, dropout=0.0, targets=targets)
    unit_map = discover_units(model)
    assert len(unit_map.units) == blocks
    for unit in unit_map.units:
        assert len(unit.lora_keys) == 2 * len(targets)
        assert all(unit.prefix in key and ".lora_" in key for key in unit.lora_keys)
        assert unit.prefix.endswith(f".{unit.index}.")
    assert unit_map.head_keys and all(head in key for key in unit_map.head_keys)


def test_set_trainable_selects_exactly_the_plan():
    model = add_lora(tiny_bert(), rank=4, alpha=8, dropout=0.0, targets=["query", "value"])
    unit_map = discover_units(model)
    names = set_trainable(model, unit_map, [1, 3])
    expected = set(unit_map.keys_of([1, 3])) | set(unit_map.head_keys)
    assert set(names) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def saved_bytes(model, unit_map, units, inputs) -> int:
    """Bytes of distinct storages autograd saves for backward in one forward pass."""
    set_trainable(model, unit_map, units)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**inputs).loss
    loss.backward()
    return sum(storages.values())


def test_training_only_the_top_unit_saves_fewer_bytes_than_all_units():
    model = add_lora(tiny_bert(), rank=4, alpha=8, dropout=0.0, targets=["query", "value"])
    unit_map = discover_units(model)
    inputs = {"input_ids": torch.randint(1, 100, (4, 16)), "labels": torch.tensor([0, 1, 2, 0])}
    top = saved_bytes(model, unit_map, [3], inputs)
    every = saved_bytes(model, unit_map, [0, 1, 2, 3], inputs)
    low = saved_bytes(model, unit_map, [0], inputs)
    assert top < low <= every
    assert top < every / 2


def test_blocks_below_the_lowest_unit_get_no_gradient():
    model = add_lora(tiny_bert(), rank=4, alpha=8, dropout=0.0, targets=["query", "value"])
    unit_map = discover_units(model)
    set_trainable(model, unit_map, [2])
    inputs = {"input_ids": torch.randint(1, 100, (2, 8)), "labels": torch.tensor([0, 1])}
    model(**inputs).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == set(unit_map.keys_of([2])) | set(unit_map.head_keys)


def test_adapter_state_round_trips_and_rejects_unknown_names():
    model = add_lora(tiny_bert(), rank=4, alpha=8, dropout=0.0, targets=["query", "value"])
    unit_map = discover_units(model)
    state = {k: torch.full_like(v, 0.5) for k, v in adapter_state(model, unit_map).items()}
    load_adapter_state(model, state)
    assert all(torch.equal(v, state[k]) for k, v in adapter_state(model, unit_map).items())
    assert set(adapter_state(model, unit_map, [0])) == set(unit_map.keys_of([0])) | set(unit_map.head_keys)
    with pytest.raises(KeyError, match="lacks"):
        load_adapter_state(model, {"nope": torch.zeros(1)})


def test_bad_lora_settings_are_model_errors():
    with pytest.raises(ModelError, match="rank"):
        add_lora(tiny_bert(), rank=0, alpha=8, dropout=0.0, targets=["query"])
    with pytest.raises(ModelError, match="targets"):
        add_lora(tiny_bert(), rank=4, alpha=8, dropout=0.0, targets=["no_such_layer"])


def test_missing_targets_list_the_linear_layers_the_model_has():
    # 4 blocks: query, key, value and 3 dense each, plus the pooler's dense; the head is not offered
    with pytest.raises(ModelError) as error:
        add_lora(tiny_bert(), rank=4, alpha=8, dropout=0.0, targets=["query", "q_lin"])
    message = str(error.value)
    assert "['q_lin'] not found" in message
    assert "query (4), key (4), value (4), dense (13)" in message and "classifier" not in message


def test_missing_targets_list_gpt2_conv1d_layers():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=3, pad_token_id=0)
    with pytest.raises(ModelError, match=r"c_attn \(2\), c_proj \(4\), c_fc \(2\)$"):
        add_lora(GPT2ForSequenceClassification(config), rank=4, alpha=8, dropout=0.0, targets=["query"])
