"""Dynamic padding: a batch keeps only the columns its longest example needs, and outputs do not change."""

from __future__ import annotations

import torch

from conftest import tiny_bert
from fedpilot.client import to_inputs
from fedpilot.data.tokenize import trim_padding


def padded_batch() -> dict[str, torch.Tensor]:
    """Three right-padded examples of 5, 3 and 2 tokens stored at max_length 8."""
    mask = torch.tensor([[1] * 5 + [0] * 3, [1] * 3 + [0] * 5, [1] * 2 + [0] * 6])
    ids = torch.randint(1, 100, (3, 8), generator=torch.Generator().manual_seed(0)) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(3, 8, dtype=torch.long),
            "label": torch.tensor([0, 1, 2])}


def test_trailing_padding_columns_are_cut_to_the_longest_example():
    batch = padded_batch()
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].shape == (3, 5)
    assert torch.equal(trimmed["input_ids"], batch["input_ids"][:, :5])
    assert trimmed["token_type_ids"].shape == (3, 5)
    assert torch.equal(trimmed["label"], batch["label"])


def test_left_padded_and_full_batches_are_left_alone():
    batch = padded_batch()
    left = {key: value.flip(-1) if value.dim() == 2 else value for key, value in batch.items()}
    assert trim_padding(left)["input_ids"].shape == (3, 8)
    full = {**batch, "attention_mask": torch.ones(3, 8, dtype=torch.long)}
    assert trim_padding(full) is full


def test_the_model_gives_the_same_logits_on_the_trimmed_batch():
    model = tiny_bert().eval()
    batch = padded_batch()
    untrimmed = {key: value for key, value in batch.items() if key != "label"}
    with torch.no_grad():
        expected = model(**untrimmed).logits
        got = model(**{k: v for k, v in to_inputs(batch, "cpu").items() if k != "labels"}).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
