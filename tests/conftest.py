"""Shared fixtures: tiny random-init Hugging Face models (BERT, ViT, Llama) built in the test."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel, LlamaConfig
from transformers import LlamaForSequenceClassification
from transformers import ViTConfig, ViTForImageClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tokenized-data and profile caches of tests out of the user's home."""
    monkeypatch.setenv("FEDPILOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def task_identity(monkeypatch):
    """Let Flower messages be built outside a running Flower app (flwr 1.42 requires a task identity)."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value)


def tiny_bert(layers: int = 4, labels: int = 3) -> torch.nn.Module:
    """A 4-block BERT classifier, hidden 32."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=labels)
    return BertForSequenceClassification(config)


def tiny_vit(layers: int = 3, labels: int = 3) -> torch.nn.Module:
    """A 3-block ViT classifier on 16x16 images with 4x4 patches."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, intermediate_size=64, num_labels=labels)
    return ViTForImageClassification(config)


def tiny_llama(layers: int = 3, labels: int = 3) -> torch.nn.Module:
    """A 3-block Llama-architecture sequence classifier, hidden 32."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         num_labels=labels, pad_token_id=0)
    return LlamaForSequenceClassification(config)


def headless_bert(folder) -> None:
    """A 2-block BERT encoder without a classification head (like the packaged MiniLM), MiniLM's tokenizer."""
    from fedpilot.models.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def csv_with_empty_rows(path) -> None:
    """A CSV of 40 rows, labels a/b: rows 3 and 5 have an empty (or blank) text, row 7 an empty label, row 9 both
    (4 rows to drop: 3 with an empty text, 2 with an empty label)."""
    import pandas as pd

    texts, labels = [f"text {i}" for i in range(40)], ["a", "b"] * 20
    texts[3], texts[5], labels[7], texts[9], labels[9] = "", "  ", "", "", ""
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)


def tiny_run_config(base, out, name: str, *extra: str):
    """Two rounds of 2 steps on 300 20 Newsgroups examples with the tiny encoder, 64 test examples per round
    (the whole test split after the last), TensorBoard on."""
    from fedpilot.config import load_config

    return load_config(None, [
        f"model.path={base}", "model.max_length=32", "data.max_train_examples=300", "clients.num_clients=3",
        "clients.per_round=3", "train.rounds=2", "train.local_steps=2", "eval.max_examples=64", "output.tensorboard=true",
        f"output.dir={out}", f"output.name={name}", *extra])


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """(config, run directory) of one finished tiny run, shared by the tests that read a run's model."""
    from rich.console import Console

    from fedpilot.engines.local import run_local

    base = tmp_path_factory.mktemp("base")
    headless_bert(base)
    config = tiny_run_config(base, tmp_path_factory.mktemp("runs"), "tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDPILOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        run_dir, _ = run_local(config, Console(quiet=True))
    return config, run_dir


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny models gain nothing from threads, and on a busy machine
    waiting threads make steps 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ceil_div(nbytes, grid: int):
    """Bytes rounded up to grid cells (the knapsack module docstring's rounding up)."""
    import numpy as np

    return -(-np.asarray(nbytes, dtype=np.int64) // grid)


def option_cells(nbytes, grid: int, values, down: bool):
    """Option costs in cells as the knapsack's passes round them: up, or (`down`) down where the option's value
    is positive and up where it is 0."""
    import numpy as np

    up = ceil_div(nbytes, grid)
    if not down:
        return up
    return np.where(np.asarray(values) > 0, np.asarray(nbytes, dtype=np.int64) // grid, up)
