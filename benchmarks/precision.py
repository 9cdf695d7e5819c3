"""fp32 vs bf16 autocast for client training: speed side by side and accuracy after equal training.

Both precisions train the packaged MiniLM (every unit + head) from the same initial adapters on the
same batches; trials alternate so machine noise hits both. Writes results/precision.json.

    python benchmarks/precision.py [--steps 40] [--trials 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from rich.console import Console
from rich.table import Table

from common import packaged_federation, write_result
from fedpilot.client import Plan, evaluate, train_client
from fedpilot.federation import Federation
from fedpilot.models.units import load_adapter_state


def train_and_score(federation: Federation, precision: str, steps: int, seed: int) -> tuple[float, float]:
    """Steps/s of `steps` client steps in `precision`, and test accuracy afterwards."""
    settings = dataclasses.replace(federation.settings, precision=precision)
    plan = Plan(tuple(range(len(federation.unit_map.units))), steps)
    started = time.perf_counter()
    update = train_client(federation.model, federation.unit_map, federation.initial_state(), plan,
                          federation.client_data[0], settings, client_id=0, seed=seed)
    rate = steps / (time.perf_counter() - started)
    load_adapter_state(federation.model, {**federation.initial_state(), **update.tensors})
    accuracy = evaluate(federation.model, federation.test_data, 128, precision, "cpu")["accuracy"]
    return rate, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    federation = packaged_federation("train.lr=3e-3", "eval.max_examples=500")
    results: dict[str, dict[str, list[float]]] = {p: {"steps_per_s": [], "accuracy": []} for p in ("fp32", "bf16")}
    for trial in range(args.trials):
        for precision in ("fp32", "bf16"):
            rate, accuracy = train_and_score(federation, precision, args.steps, seed=trial)
            results[precision]["steps_per_s"].append(rate)
            results[precision]["accuracy"].append(accuracy)
    summary = {p: {k: statistics.median(v) for k, v in r.items()} for p, r in results.items()}
    table = Table(title=f"{args.steps} client steps, batch 16, 64 tokens (median of {args.trials})")
    for column in ("precision", "steps/s", "test acc (500)"):
        table.add_column(column)
    for precision, row in summary.items():
        table.add_row(precision, f"{row['steps_per_s']:.3f}", f"{row['accuracy']:.3f}")
    Console().print(table)
    speedup = summary["bf16"]["steps_per_s"] / summary["fp32"]["steps_per_s"]
    print(f"bf16/fp32 speed ratio = {speedup:.3f}")
    write_result("precision", {"speed_ratio_bf16_over_fp32": speedup, "median": summary, "trials": results,
                               "steps": args.steps, "command": "python benchmarks/precision.py"})


if __name__ == "__main__":
    main()
