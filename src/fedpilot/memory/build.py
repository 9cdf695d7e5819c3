"""The model and batch a cost profile measures: random-init Hugging Face classifiers with LoRA, on cpu or meta.

Weights are never loaded: what a step saves depends on shapes, dtypes and the graph, not on values.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers import PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from fedpilot.models.loading import ModelError, add_lora, check_targets, resolve_model_path
from fedpilot.models.targets import default_targets
from fedpilot.models.units import UnitMap, discover_units

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "amp-bf16": torch.float32}
"""Weight dtype of each profile dtype: fp32, pure bf16, or fp32 weights under bf16 autocast (as fedpilot's
client trains with `precision: bf16`)."""

AUTOCAST = {"amp-bf16": torch.bfloat16}
"""Profile dtypes whose forward runs under autocast, and its dtype."""


def load_model_config(model: str, num_labels: int = 2) -> PretrainedConfig:
    """Config of a packaged model name, a model folder or a config.json file; a missing pad id becomes 0."""
    path = Path(model)
    source = path if path.is_file() else resolve_model_path(model)
    try:
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read a model config from {model!r}: {error}") from None
    config.num_labels = num_labels
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    return config


def is_image_model(config: PretrainedConfig) -> bool:
    """Whether the config is an image classifier (gets pixel_values) rather than a text one."""
    return config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES


def build_model(config: PretrainedConfig, dtype: str = "fp32", rank: int = 8, targets: Iterable[str] | None = None,
                device: str = "cpu", seed: int = 0) -> tuple[nn.Module, UnitMap]:
    """A randomly initialised classifier with LoRA adapters (values do not change what a step keeps)."""
    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    with torch.device(device):
        model = _auto_class(config).from_config(config).to(DTYPES[dtype])
        model = add_lora(model, rank, 2.0 * rank, 0.0, list(targets) if targets else None)
    return model, discover_units(model)


def make_batch(config: PretrainedConfig, batch: int, length: int, dtype: str = "fp32",
               device: str = "cpu") -> dict[str, torch.Tensor]:
    """One step's inputs: pixel_values + labels, or input_ids + attention_mask + labels with one padded token."""
    labels = torch.arange(batch, device=device) % config.num_labels
    if is_image_model(config):
        shape = (batch, config.num_channels, length, length)
        return {"pixel_values": torch.randn(shape, dtype=DTYPES[dtype], device=device), "labels": labels}
    ids = torch.randint(1, config.vocab_size, (batch, length), device=device)
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    ids[0, -1], mask[0, -1] = config.pad_token_id, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def default_targets_of(config: PretrainedConfig) -> list[str]:
    """Default LoRA targets, read from the module names of the model built on meta."""
    hf_logging.set_verbosity_error()
    with torch.device("meta"):
        return default_targets(_auto_class(config).from_config(config))


def check_targets_of(config: PretrainedConfig, targets: Iterable[str]) -> None:
    """Raise ModelError when a LoRA target names no module of the whole model (built on meta), listing its
    Linear layers; a deep model is profiled as shallow copies, whose layer counts would mislead."""
    hf_logging.set_verbosity_error()
    with torch.device("meta"):
        check_targets(_auto_class(config).from_config(config), list(targets))


def _auto_class(config: PretrainedConfig) -> type:
    """The Auto class that builds a classifier of this config."""
    return AutoModelForImageClassification if is_image_model(config) else AutoModelForSequenceClassification
