"""The inputs a model's forward takes: a tokenizer's outputs are filtered by its signature.

A BERT tokenizer returns `token_type_ids`, which DistilBERT's and Llama's forwards do not name
(Llama's swallows them in `**kwargs`, DistilBERT's raises a TypeError). Only tensors whose name
is an explicit parameter of the forward of the model under the PEFT wrapper are passed on.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import nn

def forward_inputs(model: nn.Module) -> frozenset[str]:
    """Names of the explicit (named, not `*args` / `**kwargs`) parameters of the model's forward.

    For a PEFT model, the forward of the wrapped base model (PEFT's own takes `**kwargs`).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(name for name, p in inspect.signature(base.forward).parameters.items() if p.kind in kinds)


def accepted_inputs(inputs: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of `inputs` that the model's forward names (`forward_inputs`); the others are dropped."""
    names = forward_inputs(model)
    return {key: value for key, value in inputs.items() if key in names}
