"""A run's fine-tuned model as a PEFT adapter folder, as a merged Transformers folder, and back.

`runs/<name>/model/` (written when a run finishes, or by `fedpilot export` from its checkpoint):

    adapter_config.json        PEFT LoRA config (task SEQ_CLS): rank, alpha, targets, `modules_to_save`
                               (the head) and `base_model_name_or_path` (the base model's folder)
    adapter_model.safetensors  the global LoRA A/B of every unit at the full rank lora.rank, and the
                               head, under PEFT's saved names (`...classifier.weight`, no adapter name)
    config.json                the base's config with num_labels, id2label, label2id, pad_token_id
    fedpilot.json              base model as configured ('minilm' or a folder), max_length, round

Loading it without fedpilot (what `tests/test_export.py` does in a fresh process):

    config = AutoConfig.from_pretrained(model_dir)
    base = AutoModelForSequenceClassification.from_pretrained(base_folder, config=config)
    model = PeftModel.from_pretrained(base, model_dir)

The head is saved whole (PEFT's `modules_to_save`), so the base's own head, newly initialized
when the base folder has none, is replaced on load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from fedpilot.config import Config
from fedpilot.models.loading import load_classifier, load_tokenizer, resolve_model_path
from fedpilot.models.targets import default_targets
from fedpilot.models.units import HEAD_NAMES

META_FILE = "fedpilot.json"
WRAPPED = ".modules_to_save.default."
"""What PEFT inserts into a head parameter's name when it wraps the head as `modules_to_save`."""


class ExportError(ValueError):
    """A run directory or model folder that holds no model to export, predict or evaluate with."""


@dataclass
class RunModel:
    """A fine-tuned classifier ready for inference, with what it needs to read text."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    max_length: int


def head_modules(state: Mapping[str, object]) -> list[str]:
    """Names of the head modules (`classifier`, `score`) that own tensors of a global state (keys are read)."""
    return [name for name in HEAD_NAMES if any(f".{name}." in f".{key}" for key in state)]


def peft_classifier(config: Config, state: dict[str, torch.Tensor], label_names: list[str]) -> RunModel:
    """The base model + PEFT LoRA (head as `modules_to_save`) holding a run's global state, in eval mode.

    `state` maps the training model's parameter names (as in checkpoints) to tensors at full rank.
    Raises ExportError when a tensor has no place in the model (a state from another config).
    """
    tokenizer = load_tokenizer(config.model.path)
    base = load_classifier(config.model.path, len(label_names), config.seed, tokenizer.pad_token_id)
    base.config.id2label = dict(enumerate(label_names))
    base.config.label2id = {name: index for index, name in enumerate(label_names)}
    lora = config.lora
    peft_config = PeftLoraConfig(task_type="SEQ_CLS", r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=lora.targets or default_targets(base),
                                 modules_to_save=head_modules(state),
                                 base_model_name_or_path=str(resolve_model_path(config.model.path).resolve()))
    model = get_peft_model(base, peft_config)
    load_into(model, state)
    return RunModel(model.eval(), tokenizer, label_names, config.model.max_length)


def load_into(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Copy a training state into an export model, whose head parameters carry PEFT's wrapper in their name."""
    params = dict(model.named_parameters())
    place = {name.replace(WRAPPED, "."): name for name in params if WRAPPED in name or ".lora_" in name}
    missing = sorted(set(state) - set(place))
    if missing:
        raise ExportError(f"the run's tensors do not fit its configured model: {missing[:3]}")
    with torch.no_grad():
        for key, tensor in state.items():
            params[place[key]].copy_(tensor)


def save_adapter(run_model: RunModel, config: Config, round_number: int, out: Path) -> Path:
    """Write the PEFT adapter folder (see the module docstring) to `out`; returns `out`."""
    model = run_model.model
    model.save_pretrained(str(out))
    model.get_base_model().config.save_pretrained(str(out))
    meta = {"base_model": config.model.path, "max_length": config.model.max_length, "round": round_number}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def save_merged(run_model: RunModel, out: Path) -> Path:
    """A plain Transformers folder: LoRA merged into the weights, the head, the tokenizer (model_max_length set)."""
    merged = run_model.model.merge_and_unload()
    merged.save_pretrained(str(out))
    run_model.tokenizer.model_max_length = run_model.max_length
    run_model.tokenizer.save_pretrained(str(out))
    return out


def read_meta(model_dir: Path) -> dict[str, Any]:
    """The `fedpilot.json` of an adapter folder; ExportError when the folder is not one."""
    try:
        return json.loads((model_dir / META_FILE).read_text())
    except FileNotFoundError:
        raise ExportError(f"{model_dir} is not an exported model folder (no {META_FILE})") from None


def load_adapter(model_dir: Path) -> RunModel:
    """An exported adapter folder loaded as PEFT does anywhere: base (with the saved labels) + adapter.

    Transformers' note that the base's head is newly initialized is silenced (the adapter replaces it), and
    so is its weight-loading progress bar.
    """
    meta = read_meta(model_dir)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(model_dir)
    base_folder = resolve_model_path(meta["base_model"])
    base = AutoModelForSequenceClassification.from_pretrained(base_folder, config=config, use_safetensors=True)
    model = PeftModel.from_pretrained(base, str(model_dir))
    labels = [config.id2label[i] for i in range(config.num_labels)]
    return RunModel(model.eval(), load_tokenizer(meta["base_model"]), labels, int(meta["max_length"]))
