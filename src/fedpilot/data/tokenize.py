"""Tokenize a text Dataset once and cache the result on disk, keyed by what changes it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path

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
