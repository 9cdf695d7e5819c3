"""Shared fixtures: tiny random-init Hugging Face models (BERT, ViT, Llama) built in the test."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification
from transformers import ViTConfig, ViTForImageClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tokenized-data and profile caches of tests out of the user's home."""
    monkeypatch.setenv("FEDPILOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


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
