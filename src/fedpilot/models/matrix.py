"""The architecture matrix: the Hugging Face classifier families fedpilot is tested on, and docs/models.md.

Each `Architecture` builds a random-init config of its family at a given `Size` (no weights are
needed: what is tested is the graph, the module names and the memory a step takes). The same
table drives `tests/test_matrix.py` (units, a federated round that learns, the meta-device profile,
estimate against measurement), `benchmarks/memory_allocator.py` (Mem(S) against the CPU
allocator) and `docs/models.md`, which `python -m fedpilot.models.matrix` writes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, PretrainedConfig
from transformers.utils import logging as hf_logging

from fedpilot.models.export import head_modules
from fedpilot.models.loading import add_lora
from fedpilot.models.targets import default_targets
from fedpilot.models.units import discover_units, find_block_list


@dataclass(frozen=True)
class Size:
    """Dimensions of a random-init model: width, depth, attention heads (and key/value heads), vocabulary."""

    hidden: int = 32
    layers: int = 3
    heads: int = 2
    kv_heads: int = 1
    intermediate: int = 64
    vocab: int = 64
    positions: int = 64
    image: int = 16
    patch: int = 4


@dataclass(frozen=True)
class Architecture:
    """One family of the matrix: how to build its config, which tokenizer it is tested with, what is checked.

    `tokenizer` is "bert" (a WordPiece BERT tokenizer: [PAD] id 0, returns token_type_ids), "no-pad" (a
    word-level tokenizer with <unk>, <s>, </s> and no pad token, as decoders ship) or "image" (none).
    """

    name: str
    model_class: str
    build: Callable[[Size], PretrainedConfig]
    tokenizer: str
    note: str = ""

    @property
    def is_text(self) -> bool:
        """Whether the model reads text (the data pipeline is text only; an image model's round is built in the test)."""
        return self.tokenizer != "image"

    def config(self, size: Size = Size(), num_labels: int = 2) -> PretrainedConfig:
        """The family's config at `size` with `num_labels` classes."""
        config = self.build(size)
        config.num_labels = num_labels
        return config


def _bert(size: Size) -> PretrainedConfig:
    return transformers.BertConfig(vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                                   num_attention_heads=size.heads, intermediate_size=size.intermediate,
                                   max_position_embeddings=size.positions)


def _roberta(size: Size) -> PretrainedConfig:
    return transformers.RobertaConfig(vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                                      num_attention_heads=size.heads, intermediate_size=size.intermediate,
                                      max_position_embeddings=size.positions + 2, pad_token_id=0)


def _distilbert(size: Size) -> PretrainedConfig:
    return transformers.DistilBertConfig(vocab_size=size.vocab, dim=size.hidden, n_layers=size.layers,
                                         n_heads=size.heads, hidden_dim=size.intermediate,
                                         max_position_embeddings=size.positions)


def _electra(size: Size) -> PretrainedConfig:
    return transformers.ElectraConfig(vocab_size=size.vocab, embedding_size=size.hidden // 2,
                                      hidden_size=size.hidden, num_hidden_layers=size.layers,
                                      num_attention_heads=size.heads, intermediate_size=size.intermediate,
                                      max_position_embeddings=size.positions)


def _deberta_v2(size: Size) -> PretrainedConfig:
    return transformers.DebertaV2Config(vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                                        num_attention_heads=size.heads, intermediate_size=size.intermediate,
                                        max_position_embeddings=size.positions, relative_attention=True,
                                        pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                        position_buckets=16, norm_rel_ebd="layer_norm", share_att_key=True)


def _gpt2(size: Size) -> PretrainedConfig:
    return transformers.GPT2Config(vocab_size=size.vocab, n_embd=size.hidden, n_layer=size.layers, n_head=size.heads,
                                   n_inner=size.intermediate, n_positions=size.positions, bos_token_id=1,
                                   eos_token_id=2)


def _llama(size: Size) -> PretrainedConfig:
    return transformers.LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                                    num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                                    intermediate_size=size.intermediate, max_position_embeddings=size.positions,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=None)


def _qwen2(size: Size) -> PretrainedConfig:
    return transformers.Qwen2Config(vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                                    num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                                    intermediate_size=size.intermediate, max_position_embeddings=size.positions,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=None)


def _vit(size: Size) -> PretrainedConfig:
    return transformers.ViTConfig(image_size=size.image, patch_size=size.patch, num_channels=3,
                                  hidden_size=size.hidden, num_hidden_layers=size.layers, num_attention_heads=size.heads,
                                  intermediate_size=size.intermediate)


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("bert", "BertForSequenceClassification", _bert, "bert"),
    Architecture("roberta", "RobertaForSequenceClassification", _roberta, "bert"),
    Architecture("distilbert", "DistilBertForSequenceClassification", _distilbert, "bert",
                 "forward takes no token_type_ids: the BERT tokenizer's are dropped"),
    Architecture("electra", "ElectraForSequenceClassification", _electra, "bert",
                 "embedding width half the hidden width (embeddings_project)"),
    Architecture("deberta-v2", "DebertaV2ForSequenceClassification", _deberta_v2, "bert",
                 "relative attention (p2c, c2p), as DeBERTa-v3"),
    Architecture("gpt2", "GPT2ForSequenceClassification", _gpt2, "no-pad",
                 "LoRA on the Conv1D c_attn (fan_in_fan_out); pad token = eos"),
    Architecture("llama", "LlamaForSequenceClassification", _llama, "no-pad",
                 "grouped-query attention (1 key/value head per 2 query heads); pad token = eos"),
    Architecture("qwen2", "Qwen2ForSequenceClassification", _qwen2, "no-pad",
                 "grouped-query attention, biased q/k/v; pad token = eos. Its round is not run under "
                 "Transformers 5, which loads a qwen2 folder's tokenizer as Qwen2's BPE class whatever it is "
                 "(the test's is word-level)"),
    Architecture("vit", "ViTForImageClassification", _vit, "image",
                 "`fedpilot run` reads text only: its round runs on image tensors the test builds"),
)
"""The matrix, in the order of docs/models.md."""

BY_NAME = {arch.name: arch for arch in ARCHITECTURES}

TEXT_CHECKS = "units, federated round learns, meta profile = CPU, depth extension, Mem(S) = measured, allocator"
IMAGE_CHECKS = "units, federated round learns (images), meta profile = CPU, depth extension, Mem(S) = measured, allocator"


def build_on_meta(arch: Architecture, size: Size = Size()) -> torch.nn.Module:
    """The family's classifier at `size`, on the meta device (shapes and module names only)."""
    hf_logging.set_verbosity_error()
    auto = AutoModelForSequenceClassification if arch.is_text else AutoModelForImageClassification
    with torch.device("meta"):
        return auto.from_config(arch.config(size))


def _row(arch: Architecture) -> str:
    """One table row of docs/models.md."""
    model = build_on_meta(arch)
    targets = default_targets(model)
    blocks, _ = find_block_list(model)
    head = ", ".join(head_modules(dict.fromkeys(discover_units(add_lora(model, 2, 4.0, 0.0, None)).head_keys)))
    checks = TEXT_CHECKS if arch.is_text else IMAGE_CHECKS
    return (f"| {arch.name} | `{arch.model_class}` | `{model.config.model_type}` | {', '.join(targets)} | "
            f"`{blocks}` | {head} | {arch.tokenizer} | {checks} | {arch.note} |")


def transformers_major() -> int:
    """The installed Transformers' major version."""
    return int(transformers.__version__.split(".")[0])


def render() -> str:
    """The text of docs/models.md, from `ARCHITECTURES` and what the code finds in each model."""
    header = ["# Models: the tested architecture matrix", "",
              "Generated by `python -m fedpilot.models.matrix` from `src/fedpilot/models/matrix.py` with "
              f"Transformers {transformers_major()}.x (module names differ between majors: ViT's blocks and "
              "projections were renamed in 5); `tests/test_matrix.py` checks that this file is up to date "
              "under that major and runs every check listed.",
              "", "Any Hugging Face sequence classifier (`AutoModelForSequenceClassification`) whose blocks sit in "
              "one `nn.ModuleList` and whose head is named `classifier` or `score` should work; these "
              "families are tested, each as a small random-init model (hidden 32, 3 blocks) built in the test. "
              "`lora.targets` unset means the default targets below (`models/targets.py`: fedpilot's table, then "
              "PEFT's, then `q_proj`/`v_proj` or `query`/`value`). Each model is fed only the tokenizer outputs "
              "its forward names (`models/inputs.py`); a tokenizer without a pad token gets its eos token "
              "(`models/loading.py`), and the classifier's `pad_token_id` is set from it.", "",
              "Checks: **units** (`models/units.py` finds one unit per block with LoRA in each, and the head); "
              "**federated round learns** (one fedpilot round of 2 clients on a synthetic CSV whose label is "
              "given by its words reaches test accuracy above chance); **meta profile = CPU** (the cost profile "
              "measured on the meta device equals the one measured on CPU); **depth extension** (a 6-block "
              "profile extended from 3-5-block copies equals the one measured whole); **Mem(S) = measured** "
              "(held-out unit sets: Mem(S) - M_peak equals what one CPU step held, and Mem(S) is not below the "
              "step's peak); **allocator** (`benchmarks/memory_allocator.py`, results in "
              "`results/memory_allocator.json`: Mem(S) against the CPU allocator's own peak).", "",
              "Tokenizers: **bert** is a BERT-style WordPiece `PreTrainedTokenizerFast` (lower-casing, [CLS] text [SEP], pad id 0, returns `token_type_ids`); "
              "**no-pad** a word-level `PreTrainedTokenizerFast` with `<unk>`, `<s>`, `</s>` and no pad token. "
              "ViT: fedpilot has no image data path yet (datasets are text), so its round runs on a federation the "
              "test assembles from image tensors (16x16 images whose label says which half is bright), through "
              "the engine's own server and client code; `fedpilot run` cannot train it from a config.", "",
              "| name | class | model_type | default targets | blocks | head | tokenizer | checked | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(header + [_row(arch) for arch in ARCHITECTURES]) + "\n"


DOC = Path(__file__).resolve().parents[3] / "docs" / "models.md"


def main(argv: list[str] | None = None) -> None:
    """Write docs/models.md (or the path given as the only argument)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DOC
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
