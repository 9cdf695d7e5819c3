"""Time the exact LoRA-unit assignment solver on 7B-like cost shapes; writes results/knapsack.json.

Model: a 7B-like decoder cut into n units (blocks). The frozen 4-bit base plus head take 3.5 GiB;
keeping activations from block k to the top costs (n - k) x 9 GiB / n (384 MiB per block at n = 24),
so an 8 GiB budget reaches about half way down. Each unit carries LoRA rank 16 on q, k, v, o, gate,
up, down (hidden 4096, MLP 11008), scaled by 32 / n so the model's total stays that of 32 blocks;
it costs 16 bytes per parameter in memory (fp32 weight, grad, two Adam moments) and 2 bytes per
parameter to upload (bf16). The upload budget is 40 % of all units' upload, so it binds too.

Rank case: each unit may instead train at rank 4, 8 or 16 (options r/4, r/2, r); its LoRA memory and
upload scale with the rank, its activations (path_mem) do not, and its random values are sorted so a
higher rank is worth at least as much. The upload budget stays 40 % of all units' full-rank upload.

Module case (`lora.granularity: module`): the same model at 24 blocks, each block's LoRA split into two
module units of half its parameters (48 units), solved exactly over blocks of module units
(`assign/modules.py`). As the lowest block, a set without the first module keeps a quarter of that
block's activations less; the block's shared input (64 MiB) is paid once whichever of its modules train.
Memory and upload (40 % of all units' upload) both bind.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedpilot.assign.knapsack import solve_assignment, solve_rank_assignment
from fedpilot.assign.modules import solve_module_assignment

GiB = 2**30
BUDGET = 8 * GiB
REPEATS = 200
CLIENTS = 1000
LORA_PARAMS_PER_BLOCK = 16 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
RANK_FRACTIONS = np.array([0.25, 0.5, 1.0])


def costs(n: int) -> dict:
    """Cost arrays of the 7B-like model cut into n units (see module docstring)."""
    params = LORA_PARAMS_PER_BLOCK * 32 // n
    return dict(path_mem=(n - np.arange(n)) * (9 * GiB // n), unit_mem=np.full(n, 16 * params),
                fixed_mem=int(3.5 * GiB), unit_upload=np.full(n, 2 * params))


def median_ms(n: int, resources: int, rng: np.random.Generator) -> float:
    """Median wall time in ms of one solve at the 8 GiB budget, fresh random unit values each time."""
    model = costs(n)
    upload = dict(upload_budget=int(0.4 * model["unit_upload"].sum())) if resources == 2 else {}
    times = []
    for _ in range(REPEATS):
        values = rng.random(n)
        start = time.perf_counter()
        solve_assignment(values, mem_budget=BUDGET, **model, **upload)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def rank_median_ms(n: int, rng: np.random.Generator) -> float:
    """Median wall time in ms of one solve over n units x 3 ranks, memory + upload, 8 GiB budget."""
    model = costs(n)
    unit_mem = (model.pop("unit_mem")[:, None] * RANK_FRACTIONS).astype(np.int64)
    unit_upload = (model.pop("unit_upload")[:, None] * RANK_FRACTIONS).astype(np.int64)
    upload_budget = int(0.4 * unit_upload[:, -1].sum())
    times = []
    for _ in range(REPEATS):
        values = np.sort(rng.random((n, RANK_FRACTIONS.size)), axis=1)
        start = time.perf_counter()
        solve_rank_assignment(values, mem_budget=BUDGET, unit_mem=unit_mem, unit_upload=unit_upload,
                              upload_budget=upload_budget, **model)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def module_tables(blocks: int) -> dict:
    """Module-case costs: lowest/above tables per block and mask (2 modules), per-unit upload (see docstring)."""
    model = costs(blocks)
    half, shared, step = int(model["unit_mem"][0]) // 2, 64 * 2**20, 9 * GiB // blocks
    def extra(mask: int) -> int:
        """Bytes of the mask's modules and their shared input."""
        return half * bin(mask).count("1") + shared
    lowest = tuple(tuple(int(model["path_mem"][b]) - (0 if mask & 1 else step // 4) + extra(mask) for mask in (1, 2, 3))
                   for b in range(blocks))
    above = tuple(tuple(extra(mask) for mask in (1, 2, 3)) for _ in range(blocks))
    upload = np.full((2 * blocks, 1), int(model["unit_upload"][0]) // 2)
    return dict(blocks=tuple(j // 2 for j in range(2 * blocks)), lowest=lowest, above=above,
                fixed_mem=model["fixed_mem"], unit_upload=upload, upload_budget=int(0.4 * upload.sum()))


def module_median_ms(blocks: int, rng: np.random.Generator) -> float:
    """Median wall time in ms of one solve over 2 x `blocks` module units, memory + upload, 8 GiB budget."""
    model = module_tables(blocks)
    times = []
    for _ in range(REPEATS):
        values = rng.random((2 * blocks, 1))
        start = time.perf_counter()
        solve_module_assignment(values, mem_budget=BUDGET, **model)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def clients_seconds(n: int, rng: np.random.Generator) -> float:
    """Wall time in s to assign CLIENTS clients, memory only, budgets uniform in 4..16 GiB."""
    model = costs(n)
    budgets = rng.integers(4 * GiB, 16 * GiB, CLIENTS)
    values = rng.random((CLIENTS, n))
    start = time.perf_counter()
    for budget, value in zip(budgets, values):
        solve_assignment(value, mem_budget=int(budget), **model)
    return time.perf_counter() - start


def main() -> None:
    """Run every case, print a table and write results/knapsack.json."""
    rng = np.random.default_rng(0)
    cases = [{"units": n, "ranks": 1, "resources": r, "median_ms": round(median_ms(n, r, rng), 4)}
             for n in (12, 24, 48) for r in (1, 2)]
    clients_s = clients_seconds(24, rng)
    rank_ms = rank_median_ms(24, np.random.default_rng(1))
    cases.append({"units": 24, "ranks": RANK_FRACTIONS.size, "resources": 2, "median_ms": round(rank_ms, 4)})
    module_ms = module_median_ms(24, np.random.default_rng(2))
    cases.append({"units": 48, "ranks": 1, "resources": 2, "granularity": "module", "median_ms": round(module_ms, 4)})
    result = {"cases": cases, "clients_1000_s": round(clients_s, 4), "command": "python benchmarks/knapsack.py"}
    table = Table(title="Exact LoRA-unit assignment, 8 GiB budget, 1 MiB grid", min_width=60)
    for column in ("units", "granularity", "ranks", "resources", "median ms", "goal ms"):
        table.add_column(column, justify="right")
    for case in cases:
        table.add_row(str(case["units"]), case.get("granularity", "block"), str(case["ranks"]),
                      str(case["resources"]), f"{case['median_ms']:.3f}", "< 1" if case["resources"] == 1 else "< 10")
    console = Console()
    console.print(table)
    console.print(f"{CLIENTS} clients, 24 units, memory only, budgets 4-16 GiB: {result['clients_1000_s']:.3f} s")
    out = Path(__file__).resolve().parents[1] / "results" / "knapsack.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
