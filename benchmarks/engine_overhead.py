"""Wall time of the same small run on the local engine and on Flower's simulation engine, side by side.

The engines alternate over repeated trials so machine noise hits both. Round time is what the
run's summary counts (first round to last); Flower's one-off cost (ray and actor start-up, the
clients' first federation build, the partition QUERY, shut-down) is reported apart from it.
Writes results/engine_overhead.json; `ratio` = Flower round time / local round time (medians).

    python benchmarks/engine_overhead.py [--trials 2] [--rounds 3] [--steps 10] [--strategy fedavg-full]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # flwr reads it once, when imported

from rich.console import Console
from rich.table import Table

from common import write_result
from fedpilot.config import Config, load_config
from fedpilot.engines.flower import run_flower
from fedpilot.engines.local import run_local


def small_config(args: argparse.Namespace, out: str) -> Config:
    """3 clients, all sampled every round, on a small slice of the packaged data and model."""
    return load_config(None, ["clients.num_clients=3", "clients.per_round=3", "data.max_train_examples=600",
                              "eval.max_examples=200", "model.max_length=64", "train.batch_size=16",
                              f"train.rounds={args.rounds}", f"train.local_steps={args.steps}",
                              f"strategy.name={args.strategy}", f"output.dir={out}"])


def timed(engine: str, config: Config) -> dict[str, float]:
    """Total wall time, round time (from the summary) and final accuracy of one run."""
    run = run_local if engine == "local" else run_flower
    started = time.perf_counter()
    _, summary = run(config, Console(quiet=True))
    total = time.perf_counter() - started
    return {"total_s": total, "rounds_s": summary["wall_seconds"], "one_off_s": total - summary["wall_seconds"],
            "final_accuracy": summary["final_accuracy"]}


def medians(trials: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over trials."""
    return {key: statistics.median(t[key] for t in trials) for key in trials[0]}


def show(results: dict[str, dict[str, float]], ratio: float) -> None:
    """Print the side-by-side table."""
    table = Table(title=f"engine overhead: Flower/local round time = {ratio:.2f}x")
    for column in ("engine", "total s", "rounds s", "one-off s", "final acc"):
        table.add_column(column, justify="right")
    for engine, row in results.items():
        table.add_row(engine, f"{row['total_s']:.1f}", f"{row['rounds_s']:.1f}", f"{row['one_off_s']:.1f}",
                      f"{row['final_accuracy']:.4f}")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strategy", default="fedavg-full")
    args = parser.parse_args()
    trials: dict[str, list[dict[str, Any]]] = {"local": [], "flower": []}
    with tempfile.TemporaryDirectory() as out:
        config = small_config(args, out)
        for _ in range(args.trials):
            for engine in trials:
                trials[engine].append(timed(engine, config))
    results = {engine: medians(runs) for engine, runs in trials.items()}
    ratio = results["flower"]["rounds_s"] / results["local"]["rounds_s"]
    show(results, ratio)
    path = write_result("engine_overhead", {
        "command": " ".join(["python", *sys.argv]), "ratio": ratio, "target_ratio": 1.3,
        "flower_one_off_seconds": results["flower"]["one_off_s"], "medians": results, "trials": trials,
        "run": {"clients": 3, "rounds": args.rounds, "local_steps": args.steps, "strategy": args.strategy,
                "batch_size": 16, "max_length": 64, "backend": "ray, 1 actor, num_cpus 1 per client"}})
    Console().print(f"wrote {path}")


if __name__ == "__main__":
    main()
