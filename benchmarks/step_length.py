"""Seconds per client training step against the sequence length, same run, trials interleaved.

What the protocol's choice of `model.max_length` costs (docs/protocol.md): the packaged MiniLM, every
unit trained, batch 16, on 20 Newsgroups texts cut to each length; the median over trials of
fedpilot's `train_client` on one client. Writes results/step_length.json with the seconds per step
per length and each length's ratio to the longest.

    python benchmarks/step_length.py [--lengths 16 24 32] [--steps 10] [--trials 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from rich.console import Console
from rich.table import Table

from common import packaged_federation, write_result
from step_efficiency import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    federations = {n: packaged_federation(f"model.max_length={n}", "train.batch_size=16") for n in args.lengths}
    for federation in federations.values():
        train(federation, 2, seed=0)
    seconds: dict[int, list[float]] = {n: [] for n in args.lengths}
    for _ in range(args.trials):
        for n, federation in federations.items():
            seconds[n].append(train(federation, args.steps, seed=0) / args.steps)
    median = {n: statistics.median(values) for n, values in seconds.items()}
    longest = median[max(args.lengths)]
    table = Table(title=f"client step time by sequence length (batch 16, every unit, {args.threads} thread(s))")
    for column in ("tokens", "s / step", "vs longest"):
        table.add_column(column, justify="right")
    for n in args.lengths:
        table.add_row(str(n), f"{median[n]:.3f}", f"{median[n] / longest:.2f}")
    Console().print(table)
    write_result("step_length", {
        "seconds_per_step": {str(n): median[n] for n in args.lengths},
        "ratio_to_longest": {str(n): median[n] / longest for n in args.lengths},
        "trials": {str(n): values for n, values in seconds.items()}, "steps": args.steps, "threads": args.threads,
        "command": "python benchmarks/step_length.py " + " ".join(
            [f"--lengths {' '.join(map(str, args.lengths))}", f"--steps {args.steps}", f"--trials {args.trials}",
             f"--threads {args.threads}"])})


if __name__ == "__main__":
    main()
