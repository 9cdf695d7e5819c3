"""Default LoRA targets of an architecture: its attention's query and value projections.

Looked up by `config.model_type`: fedpilot's own table first (architectures PEFT's table lacks),
then PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`, each entry taken only when the model
has those leaf names (Transformers 5 renamed ViT's `query`/`value` to `q_proj`/`v_proj`), then the leaf
names the model has (`q_proj`/`v_proj`, else `query`/`value`). `docs/models.md` lists the tested
architectures'.
"""

from __future__ import annotations

from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from torch import nn

OWN_TARGETS: dict[str, tuple[str, ...]] = {
    "distilbert": ("q_lin", "v_lin"),
    "vit": ("query", "value"),
    "albert": ("query", "value"),
}
"""model_type -> targets, for architectures PEFT's table has no entry for."""


def default_targets(model: nn.Module) -> list[str]:
    """The LoRA target leaf names fedpilot uses when `lora.targets` is not set (module docstring)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for table in (OWN_TARGETS, PEFT_TARGETS):
        known = table.get(model_type)
        if known and set(known) <= leaves:
            return list(known)
    return ["q_proj", "v_proj"] if "q_proj" in leaves else ["query", "value"]
