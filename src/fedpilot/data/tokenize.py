"""Tokenize a text Dataset once and cache the result on disk, keyed by what changes it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path

import torch
from datasets import Dataset, disable_progress_bars, load_from_disk
from transformers import PreTrainedTokenizerBase


def cache_root() -> Path:
    """Where tokenized datasets are kept (FEDPILOT_CACHE, else ~/.cache/fedpilot)."""
    return Path(os.environ.get("FEDPILOT_CACHE", Path.home() / ".cache" / "fedpilot")) / "tokens"


def fingerprint(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    """Hash of the data contents (its fingerprint), tokenizer and length."""
    key = {"data": dataset._fingerprint, "tokenizer": tokenizer.name_or_path,
           "vocab": len(tokenizer), "max_length": max_length}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The tokenizer outputs a model may take."""


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
             inputs: Collection[str] = TOKENIZER_OUTPUTS) -> Dataset:
    """input_ids / attention_mask / token_type_ids (those of them in `inputs`, the names the model's
    forward takes, `fedpilot.models.inputs.forward_inputs`) and label as torch tensors, padded to
    max_length; the tokenized data is cached whole."""
    disable_progress_bars()
    folder = cache_root() / fingerprint(dataset, tokenizer, max_length)
    if folder.is_dir():
        encoded = load_from_disk(str(folder))
    else:
        encoded = dataset.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length, padding="max_length"),
            batched=True, batch_size=1000, remove_columns=["text"],
        )
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        encoded.save_to_disk(str(tmp))
        try:
            tmp.rename(folder)
        except OSError:  # another process (a parallel study job) cached the same data first
            if not folder.is_dir():
                raise
            shutil.rmtree(tmp)
        encoded = load_from_disk(str(folder))
    keep = [c for c in TOKENIZER_OUTPUTS if c in encoded.column_names and c in inputs] + ["label"]
    return encoded.with_format("torch", columns=keep)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without its trailing columns that are padding in every row (dynamic padding).

    Examples are stored padded to `model.max_length`; a batch of shorter texts needs only as many
    columns as its longest example. Only trailing columns are cut (where `attention_mask` is 0 in
    every row), so right-padded batches lose work they did not need and left-padded ones are
    unchanged; masked positions never affect the unmasked ones, so the model's outputs are the same.
    Tensors of shape (batch, max_length) are cut; others (e.g. `label`, shape (batch,)) are kept.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    used = mask.any(0).nonzero()
    length = int(used[-1]) + 1 if len(used) else 1
    if length == mask.shape[1]:
        return batch
    return {key: value[:, :length] if value.dim() == 2 and value.shape == mask.shape else value
            for key, value in batch.items()}
