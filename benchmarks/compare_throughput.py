"""Study throughput of `fedpilot compare --jobs 1` against `--jobs 2`, side by side in one run.

The same short study (fedavg-full and fedpilot on the hetero preset, 20 Newsgroups IID, seeds 0-1:
four runs) is run with 1 job (every torch thread in one process) and with 2 jobs (two processes,
cores / 2 threads each), alternating `--repeats` times so machine noise hits both; one warm-up run
first fills the token and profile caches. Runs go to a temporary folder. Writes
results/compare_throughput.json (another --rounds: compare_throughput-r<rounds>.json) with `ratio` =
runs per hour with 2 jobs / with 1 job (median).

    python benchmarks/compare_throughput.py [--repeats 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import write_result
from fedpilot.report.compare import run_study
from fedpilot.report.study import Study, expand_study

METHODS = ["fedavg-full", "fedpilot"]
SEEDS = [0, 1]


def study(folder: Path, rounds: int) -> Study:
    """The benchmark's study, its runs under `folder`."""
    return Study.model_validate({
        "name": "throughput", "base": "hetero", "runs_dir": str(folder), "results_dir": str(folder),
        "overrides": [f"train.rounds={rounds}", "train.local_steps=5", "data.max_train_examples=2000",
                      "eval.max_examples=200", "eval.final_full=false"],
        "grid": {"methods": METHODS, "datasets": ["20newsgroups"], "partitions": [{"kind": "iid"}],
                 "seeds": SEEDS}})


def timed_study(jobs: int, rounds: int, console: Console) -> float:
    """Seconds to run the whole study from scratch with `jobs` jobs."""
    with tempfile.TemporaryDirectory() as folder:
        runs, _ = expand_study(study(Path(folder), rounds))
        started = time.perf_counter()
        run_study(runs, console, jobs)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    console = Console(quiet=True)
    timed_study(1, 1, console)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for jobs in (1, 2):
            seconds[jobs].append(timed_study(jobs, args.rounds, console))
    runs = len(METHODS) * len(SEEDS)
    per_hour = {jobs: runs * 3600 / statistics.median(values) for jobs, values in seconds.items()}
    ratio = per_hour[2] / per_hour[1]
    table = Table(title=f"fedpilot compare: {runs} runs of {args.rounds} rounds")
    for column in ("jobs", "runs / hour", "seconds per study (trials)"):
        table.add_column(column, justify="right")
    for jobs, values in seconds.items():
        table.add_row(str(jobs), f"{per_hour[jobs]:.1f}", ", ".join(f"{v:.0f}" for v in values))
    Console().print(table)
    print(f"ratio jobs 2 / jobs 1 = {ratio:.3f} (goal >= 1.3)")
    write_result("compare_throughput" if args.rounds == 3 else f"compare_throughput-r{args.rounds}", {
        "ratio": ratio, "runs_per_hour": {str(k): v for k, v in per_hour.items()},
        "seconds": {str(k): v for k, v in seconds.items()}, "runs_per_study": runs, "rounds": args.rounds,
        "command": f"python benchmarks/compare_throughput.py --repeats {args.repeats} --rounds {args.rounds}"})


if __name__ == "__main__":
    main()
