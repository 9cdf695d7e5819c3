"""Run Hugging Face training steps on the `meta` device exactly as on CPU, with no memory or compute.

Five things differ on meta and are made to match CPU here:
- `scaled_dot_product_attention` has no fused-kernel choice on meta and falls back to the math
  kernel (which saves the attention matrix); CPU picks its flash kernel when it can. We ask CPU's
  chooser with storage-less stand-ins of the same shapes and call CPU's kernel on meta if it would.
  The stand-ins are made outside the dispatch modes, so no allocation meter counts them.
- Data-dependent checks read a scalar (`torch.all(mask == 1)`), which meta cannot. Boolean reads
  answer False: right for the profiler's batches, whose attention mask always has a padded token.
- `nonzero` has a data-dependent shape, which meta refuses. It answers as if every element were
  nonzero: right where DeBERTa's loss selects the labels that are not -100, as the profiler's all are.
- LayerNorm on bf16/fp16 input saves its mean and rstd in float32 on meta (as CUDA does) but in
  the input's dtype on CPU; meta's are cast to the input dtype.
- Llama's rotary embedding opens `torch.autocast(device_type="meta", enabled=False)`, which torch
  rejects; during the run `torch.autocast` maps the meta device type to "cpu" (disabled: a no-op).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from fedpilot.models.loading import ModelError

FLASH = 1
"""`torch._fused_sdp_choice` code of the flash-attention kernel (sdp::SDPBackend::flash_attention)."""


class MetaScalarError(ModelError):
    """A model read a non-boolean number from a meta tensor: its control flow depends on data."""


def stand_in(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A CPU tensor with the tensor's shape, strides and dtype, never written (pages stay untouched)."""
    if tensor is None:
        return None
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="cpu")


def cpu_attention_choice(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                         dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool) -> int:
    """The fused-attention kernel CPU would pick for tensors of these shapes (asked outside dispatch modes)."""
    with _disable_current_modes():
        return torch._fused_sdp_choice(stand_in(query), stand_in(key), stand_in(value), attn_mask=stand_in(attn_mask),
                                       dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def attention_as_on_cpu(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                        scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """SDPA on meta tensors through the kernel CPU would run (flash with an additive mask, or math)."""
    if cpu_attention_choice(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) != FLASH:
        return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                              enable_gqa=enable_gqa)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        neg_inf = torch.scalar_tensor(float("-inf"), dtype=query.dtype, device=attn_mask.device)
        attn_mask = torch.where(attn_mask, 0.0, neg_inf)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                      attn_mask=attn_mask, scale=scale)[0]


class _CpuAttention(TorchFunctionMode):
    """Route meta SDPA calls through `attention_as_on_cpu`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        """SDPA on meta goes through `attention_as_on_cpu`; everything else runs as is."""
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args and args[0].is_meta:
            return attention_as_on_cpu(*args, **kwargs)
        return func(*args, **kwargs)


class _MetaOpsAsCpu(TorchDispatchMode):
    """Answer boolean scalar reads of meta tensors with False (refuse others), `nonzero` as if all elements
    were nonzero; LayerNorm stats as on CPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Fake a boolean scalar read and `nonzero` on meta; give LayerNorm's saved stats the input's dtype."""
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            if args[0].dtype != torch.bool:
                raise MetaScalarError(f"the model reads a {args[0].dtype} number from a meta tensor; profile it on cpu")
            return False
        if func is torch.ops.aten.nonzero.default and args[0].is_meta:
            return torch.empty(args[0].numel(), args[0].dim(), dtype=torch.long, device="meta")
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.native_layer_norm.default and args[0].is_meta:
            return out[0], out[1].to(args[0].dtype), out[2].to(args[0].dtype)
        return out


class _Autocast(torch.autocast):
    """`torch.autocast` that treats the meta device type as cpu."""

    def __init__(self, device_type: str, *args, **kwargs) -> None:
        """Open autocast for `device_type`, cpu in place of meta."""
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


@contextlib.contextmanager
def meta_like_cpu() -> Iterator[None]:
    """Inside: meta-device steps save exactly the tensors the same steps save on CPU."""
    real_autocast = torch.autocast
    torch.autocast = _Autocast
    try:
        with _CpuAttention(), _MetaOpsAsCpu():
            yield
    finally:
        torch.autocast = real_autocast
