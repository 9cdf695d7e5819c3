"""Estimated vs measured training memory for random unit subsets; writes results/memory_estimate.json.

For the packaged MiniLM, a random-init small ViT and a random-init small Llama-architecture decoder,
the cost profile is measured once on the meta device at batch 4 and scaled to batch 8 with
`at_batch`. Then 50 random non-empty unit subsets per model are trained for one real AdamW step on
CPU at both batch sizes, and Mem(S) - M_peak is compared with what the step measurably held:
weights + gradients + AdamW moments + saved activations. The step's true peak (allocation peak on
top of weights and moments) is compared with the full Mem(S), which must not be below it. Two
extra rows: Llama in pure bf16 (meta profile) and MiniLM under bf16 autocast as fedpilot's client
trains with `precision: bf16` (profiled on CPU: torch has no autocast on meta).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, ViTConfig

from fedpilot.memory.build import AUTOCAST, build_model, load_model_config, make_batch
from fedpilot.memory.cost import mem_of
from fedpilot.memory.profiler import measure_step, profile

SUBSETS, BATCHES, SEQ, IMAGE, RANK = 50, (4, 8), 64, 64, 8
SMALL_MODELS = {
    "vit-small": ViTConfig(image_size=IMAGE, patch_size=8, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                           intermediate_size=768),
    "llama-small": LlamaConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=688, max_position_embeddings=256,
                               pad_token_id=0),
}


def cases(root: Path) -> dict[str, tuple[str, str, str]]:
    """Name -> (model path, dtype, profiling device); small models are saved as config-only folders."""
    for name, config in SMALL_MODELS.items():
        config.save_pretrained(root / name)
    return {"minilm": ("minilm", "fp32", "meta"), "vit-small": (str(root / "vit-small"), "fp32", "meta"),
            "llama-small": (str(root / "llama-small"), "fp32", "meta"),
            "llama-small-bf16": (str(root / "llama-small"), "bf16", "meta"),
            "minilm-amp-bf16": ("minilm", "amp-bf16", "cpu")}


def evaluate(path: str, dtype: str, device: str, rng: random.Random) -> dict:
    """Profile, measure random subsets with real CPU steps, and return error statistics."""
    started = time.perf_counter()
    cost = profile(path, BATCHES[0], seq=SEQ, image_size=IMAGE, dtype=dtype, rank=RANK, device=device,
                   use_cache=False)
    profile_s = time.perf_counter() - started
    n = cost.num_units
    subsets = rng.sample(range(1, 2**n), SUBSETS)
    units = [tuple(j for j in range(n) if s >> j & 1) for s in subsets]
    config = load_model_config(path)
    model, unit_map = build_model(config, dtype, rank=RANK, device="cpu")
    errors, under = [], []
    for batch_size in BATCHES:
        scaled = cost.at_batch(batch_size)
        batch = make_batch(config, batch_size, cost.length, dtype)
        for chosen in units:
            step = measure_step(model, unit_map, chosen, batch, AUTOCAST.get(dtype))
            errors.append((mem_of(scaled, chosen) - scaled.peak - step.measured) / step.measured)
            under.append(max(0.0, (step.peak_total - mem_of(scaled, chosen)) / step.peak_total))
    measure_s = time.perf_counter() - started - profile_s
    return {"max_abs_err_pct": round(100 * max(map(abs, errors)), 6),
            "mean_abs_err_pct": round(100 * sum(map(abs, errors)) / len(errors), 6),
            "subsets": SUBSETS, "measurements": len(errors), "units": n, "dtype": dtype, "profiled_on": device,
            "peak_max_under_pct": round(100 * max(under), 4),
            "profile_seconds": round(profile_s, 2), "measure_seconds_cpu": round(measure_s, 1)}


def main() -> None:
    """Run every model, print a table and write results/memory_estimate.json."""
    torch.set_num_threads(1)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as root:
        models = {name: evaluate(*case, rng) for name, case in cases(Path(root)).items()}
    result = {"models": models, "command": "python benchmarks/memory_estimate.py",
              "settings": {"batches": list(BATCHES), "seq": SEQ, "image_size": IMAGE, "rank": RANK,
                           "targets": "query/value (q_proj/v_proj for Llama)",
                           "profile": f"batch {BATCHES[0]}, scaled to {BATCHES[1]} with at_batch",
                           "measured": "one AdamW step on CPU, 1 thread",
                           "compared": "Mem(S) - M_peak vs weights + grads + AdamW moments + saved activations; "
                                       "peak_max_under_pct: how far Mem(S) fell below the step's true peak"}}
    table = Table(title=f"Mem(S) estimated (profile at batch {BATCHES[0]}) vs measured (one CPU step), "
                        f"{SUBSETS} random subsets x batch {BATCHES}")
    for column in ("model", "dtype", "profiled on", "steps", "max err %", "mean err %", "goal %", "peak under %"):
        table.add_column(column, justify="right")
    for name, row in models.items():
        table.add_row(name, row["dtype"], row["profiled_on"], str(row["measurements"]), f"{row['max_abs_err_pct']:.4f}",
                      f"{row['mean_abs_err_pct']:.4f}", "<= 2", f"{row['peak_max_under_pct']:.4f}")
    Console(width=110).print(table)
    out = Path("results/memory_estimate.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
