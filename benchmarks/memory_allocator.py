"""Mem(S) against the CPU allocator's own peak, for every architecture of the matrix; writes
results/memory_allocator.json.

For each family of `fedpilot.models.matrix` at a benchmark size (hidden 256, 6 blocks, 128 tokens;
ViT: 64 x 64 images in 8 x 8 patches), the cost profile is measured on the meta device at batch 4
and scaled to batch 8 with `at_batch`. Then 20 random non-empty unit subsets are trained for one
real AdamW step (forward, backward, optimizer step) on CPU at both batch sizes, and the step's peak
is read from the allocator itself (`torch.profiler` memory events, `memory.meters.AllocatorPeak`):
the bytes held before the step (weights, buffers, AdamW moments, the batch) plus the largest growth
the allocator reports during it. No meter that built Mem(S) takes part. Goal: Mem(S) never below
the peak, at most 3% above it. Run it with OMP_NUM_THREADS=1: it measures bytes, not time.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common import write_result
from fedpilot.memory.build import build_model, load_model_config, make_batch
from fedpilot.memory.cost import mem_of
from fedpilot.memory.profiler import allocator_step, profile
from fedpilot.models.matrix import ARCHITECTURES, Size

SUBSETS, BATCHES, SEQ, RANK = 20, (4, 8), 128, 8
SIZE = Size(hidden=256, layers=6, heads=4, kv_heads=2, intermediate=1024, vocab=2000, positions=SEQ + 2, image=64,
            patch=8)
GOAL_OVER_PCT = 3.0


def evaluate(folder: Path, rng: random.Random) -> dict:
    """Profile one family, measure random subsets with real CPU steps under the allocator, return error stats."""
    started = time.perf_counter()
    cost = profile(str(folder), BATCHES[0], seq=SEQ, rank=RANK, device="meta", use_cache=False)
    profile_s = time.perf_counter() - started
    n = cost.num_units
    units = [tuple(j for j in range(n) if s >> j & 1) for s in rng.sample(range(1, 2**n), SUBSETS)]
    config = load_model_config(str(folder))
    model, unit_map = build_model(config, rank=RANK, device="cpu")
    errors, gaps = [], []
    for batch_size in BATCHES:
        scaled = cost.at_batch(batch_size)
        batch = make_batch(config, batch_size, cost.length)
        for chosen in units:
            peak = allocator_step(model, unit_map, chosen, batch)
            gaps.append(mem_of(scaled, chosen) - peak)
            errors.append(gaps[-1] / peak)
    return {"max_under_pct": round(100 * max(0.0, -min(errors)), 3), "max_over_pct": round(100 * max(errors), 3),
            "max_under_bytes": max(0, -min(gaps)), "min_margin_bytes": min(gaps),
            "mean_abs_err_pct": round(100 * sum(map(abs, errors)) / len(errors), 3), "units": n,
            "measurements": len(errors), "profile_seconds": round(profile_s, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def main(names: list[str]) -> None:
    """Run every family (or those named), print a table and write results/memory_allocator.json."""
    torch.set_num_threads(1)
    rng = random.Random(0)
    models = {}
    with tempfile.TemporaryDirectory() as root:
        for arch in (a for a in ARCHITECTURES if not names or a.name in names):
            folder = Path(root) / arch.name
            arch.config(SIZE).save_pretrained(folder)
            models[arch.name] = evaluate(folder, rng)
            print(arch.name, models[arch.name], flush=True)
    table = Table(title=f"Mem(S) vs the CPU allocator's peak of one AdamW step, {SUBSETS} random subsets x batch "
                        f"{BATCHES}, {SEQ} tokens (ViT 64 x 64), profile at batch {BATCHES[0]} on meta")
    for column in ("model", "units", "steps", "max under %", "max over %", "mean |err| %", "goal"):
        table.add_column(column, justify="right")
    for name, row in models.items():
        table.add_row(name, str(row["units"]), str(row["measurements"]), f"{row['max_under_pct']:.3f}",
                      f"{row['max_over_pct']:.3f}", f"{row['mean_abs_err_pct']:.3f}", f"0 under, <= {GOAL_OVER_PCT} over")
    Console(width=120).print(table)
    write_result("memory_allocator", {
        "models": models, "command": "OMP_NUM_THREADS=1 nice python benchmarks/memory_allocator.py",
        "settings": {"batches": list(BATCHES), "seq": SEQ, "image_size": SIZE.image, "rank": RANK,
                     "size": vars(SIZE), "targets": "each architecture's defaults (docs/models.md)",
                     "profile": f"meta device, batch {BATCHES[0]}, scaled to {BATCHES[1]} with at_batch",
                     "measured": "one AdamW step on CPU, 1 thread; peak = bytes allocated before the step + "
                                 "the largest growth in torch.profiler's memory events during it",
                     "compared": "(Mem(S) - allocator peak) / allocator peak; under = Mem(S) below the peak"}})


if __name__ == "__main__":
    main(sys.argv[1:])
