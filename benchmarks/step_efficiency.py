"""Achieved FLOP/s of a client training step against a plain matmul of similar shapes, same run.

The step's FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, attention and
convolutions of the forward and of the backward that actually runs: with LoRA, no weight gradients
of the frozen base); its time is the median over trials of fedpilot's `train_client` on every unit.
The reference is `torch.matmul` of a (512 x 384) @ (384 x 1536) product, MiniLM's FFN shape at batch
8 x 64 tokens. Trials alternate step, padded step and matmul so machine noise hits all three. The
padded step stores every batch at `model.max_length` (as before dynamic padding), to show the
work it saves. Writes results/step_efficiency.json (another --data: step_efficiency-<data>.json) with
`ratio` = step FLOP/s / matmul FLOP/s.

    python benchmarks/step_efficiency.py [--steps 10] [--trials 5] [--batch 16] [--data 20newsgroups]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from unittest import mock

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from common import packaged_federation, write_result
from fedpilot.client import Plan, train_client
from fedpilot.config import load_config
from fedpilot.federation import Federation

MATMUL = (512, 384, 1536)


def matmul_flops_per_s(repeats: int = 50) -> float:
    """FLOP/s of `repeats` products of MATMUL's shape (2 M K N FLOPs each)."""
    m, k, n = MATMUL
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.matmul(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return 2 * m * k * n * repeats / (time.perf_counter() - started)


@contextlib.contextmanager
def padded() -> Iterator[None]:
    """Dynamic padding off: every batch at max_length, as stored."""
    with mock.patch("fedpilot.client.trim_padding", lambda batch: batch):
        yield


def train(federation: Federation, steps: int, seed: int) -> float:
    """Seconds of one client's `steps` training steps on every unit."""
    plan = Plan(tuple(range(len(federation.unit_map.units))), steps)
    started = time.perf_counter()
    train_client(federation.model, federation.unit_map, federation.initial_state(), plan,
                 federation.client_data[0], federation.settings, client_id=0, seed=seed)
    return time.perf_counter() - started


def step_flops(federation: Federation, steps: int, seed: int) -> int:
    """FLOPs of the same `steps` steps that `train` times (same seed, same batches)."""
    counter = FlopCounterMode(display=False)
    with counter:
        train(federation, steps, seed)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data", default="20newsgroups")
    args = parser.parse_args()
    overrides = (f"train.batch_size={args.batch}", f"data.name={args.data}")
    federation = packaged_federation(*overrides)
    max_length = load_config(None, list(overrides)).model.max_length
    train(federation, 2, seed=0)
    flops = {"dynamic": step_flops(federation, args.steps, seed=0)}
    with padded():
        flops["padded"] = step_flops(federation, args.steps, seed=0)
    seconds: dict[str, list[float]] = {"dynamic": [], "padded": []}
    reference = []
    for _ in range(args.trials):
        seconds["dynamic"].append(train(federation, args.steps, seed=0))
        with padded():
            seconds["padded"].append(train(federation, args.steps, seed=0))
        reference.append(matmul_flops_per_s())
    median = {name: statistics.median(values) for name, values in seconds.items()}
    rate = {name: flops[name] / median[name] for name in median}
    matmul = statistics.median(reference)
    ratio = rate["dynamic"] / matmul
    table = Table(title=f"client step efficiency ({args.data}, batch {args.batch}, "
                        f"{max_length} tokens, {torch.get_num_threads()} threads)")
    for column in ("step", "GFLOP / step", "s / step", "GFLOP/s", "vs matmul"):
        table.add_column(column, justify="right")
    for name in ("dynamic", "padded"):
        table.add_row(name, f"{flops[name] / args.steps / 1e9:.2f}", f"{median[name] / args.steps:.3f}",
                      f"{rate[name] / 1e9:.1f}", f"{rate[name] / matmul:.2f}")
    table.add_row("matmul " + "x".join(map(str, MATMUL)), "", "", f"{matmul / 1e9:.1f}", "1.00")
    Console().print(table)
    print(f"ratio step/matmul = {ratio:.3f} (goal >= 0.6); dynamic padding: "
          f"{median['padded'] / median['dynamic']:.2f}x the steps per second of padding to max_length")
    write_result("step_efficiency" if args.data == "20newsgroups" else f"step_efficiency-{args.data}", {
        "ratio": ratio, "flops_per_step": {k: v / args.steps for k, v in flops.items()},
        "seconds_per_step": {k: v / args.steps for k, v in median.items()},
        "step_flops_per_s": rate, "matmul_flops_per_s": matmul, "matmul_shape": MATMUL,
        "trials": {"seconds": seconds, "matmul_flops_per_s": reference},
        "speedup_dynamic_over_padded": median["padded"] / median["dynamic"],
        "data": args.data, "batch": args.batch, "steps": args.steps,
        "max_length": max_length,
        "command": f"python benchmarks/step_efficiency.py --data {args.data} --batch {args.batch}"})


if __name__ == "__main__":
    main()
