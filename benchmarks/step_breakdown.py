"""Where a client training step's time goes: its operators' share of the CPU time, by kind.

Profiles fedpilot's `train_client` on every unit (the step `step_efficiency.py` times) with
`torch.profiler` and sums each operator's self time (as the profiler counts it on the calling thread,
intra-op threads included in the operator's span) into kinds: matrix products (mm, addmm,
bmm), dropout's random masks (bernoulli_), and the rest (elementwise ops, softmax, layer norm,
copies, the optimizer). Shares are fractions of the profiled total, so they say what the gap between
the step's FLOP/s and a plain matmul's is made of. Writes results/step_breakdown.json with the load
average during the run (shares move less with load than times do); another --data writes
step_breakdown-<data>.json.

    python benchmarks/step_breakdown.py [--steps 6] [--batch 16] [--data 20newsgroups]
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

from rich.console import Console
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from common import packaged_federation, write_result
from fedpilot.client import Plan, train_client
from fedpilot.federation import Federation

KINDS = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul", "aten::bernoulli_": "dropout masks"}
TOP = 8


def train(federation: Federation, steps: int) -> None:
    """One client's `steps` training steps on every unit (seed 0)."""
    plan = Plan(tuple(range(len(federation.unit_map.units))), steps)
    train_client(federation.model, federation.unit_map, federation.initial_state(), plan,
                 federation.client_data[0], federation.settings, client_id=0, seed=0)


def operator_seconds(federation: Federation, steps: int) -> Counter[str]:
    """Self CPU seconds of each operator over `steps` profiled training steps (after one warm-up run)."""
    train(federation, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(federation, steps)
    return Counter({e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages() if e.self_cpu_time_total > 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data", default="20newsgroups")
    args = parser.parse_args()
    federation = packaged_federation(f"train.batch_size={args.batch}", f"data.name={args.data}")
    seconds = operator_seconds(federation, args.steps)
    total = sum(seconds.values())
    kinds: Counter[str] = Counter()
    for name, value in seconds.items():
        kinds[KINDS.get(name, "other")] += value
    shares = {kind: value / total for kind, value in kinds.most_common()}
    table = Table(title=f"client step by operator ({args.data}, batch {args.batch}, {args.steps} steps, "
                        f"{total / args.steps:.3f} s per step profiled)")
    for column in ("operator", "kind", "share of step time"):
        table.add_column(column, justify="right")
    for name, value in seconds.most_common(TOP):
        table.add_row(name, KINDS.get(name, "other"), f"{value / total:.1%}")
    table.add_section()
    for kind, share in shares.items():
        table.add_row("", kind, f"{share:.1%}")
    Console().print(table)
    write_result("step_breakdown" if args.data == "20newsgroups" else f"step_breakdown-{args.data}", {
        "shares": shares, "top_operators": {name: value / total for name, value in seconds.most_common(TOP)},
        "seconds_per_step_profiled": total / args.steps, "load_average": os.getloadavg()[0],
        "data": args.data, "batch": args.batch, "steps": args.steps,
        "command": f"python benchmarks/step_breakdown.py --steps {args.steps} --batch {args.batch} --data {args.data}"})


if __name__ == "__main__":
    main()
