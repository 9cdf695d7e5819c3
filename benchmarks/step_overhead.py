"""Steps/s of fedpilot's client training vs. a plain PyTorch + PEFT loop, side by side.

Both train every LoRA unit and the head of the packaged MiniLM with AdamW on the same batches;
they alternate in repeated trials so machine noise hits both. Writes results/step_overhead.json.

    python benchmarks/step_overhead.py [--steps 10] [--trials 5] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from common import packaged_federation, write_result
from fedpilot.client import Plan, batch_indices, to_inputs, train_client
from fedpilot.federation import Federation
from fedpilot.models.units import load_adapter_state, set_trainable


def plain_loop(federation: Federation, state: dict, steps: int, batch: int, seed: int) -> float:
    """A textbook PEFT loop: load adapters, AdamW over trainable params, forward/backward/step."""
    model, data = federation.model, federation.client_data[0]
    started = time.perf_counter()
    load_adapter_state(model, state)
    set_trainable(model, federation.unit_map, range(len(federation.unit_map.units)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for indices in batch_indices(len(data), steps, batch, torch.Generator().manual_seed(seed)):
        loss = model(**to_inputs(data[indices], "cpu")).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - started)


def ours(federation: Federation, state: dict, steps: int, seed: int) -> float:
    """fedpilot's `train_client` with a plan covering every unit."""
    plan = Plan(tuple(range(len(federation.unit_map.units))), steps)
    started = time.perf_counter()
    train_client(federation.model, federation.unit_map, state, plan, federation.client_data[0],
                 federation.settings, client_id=0, seed=seed)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    federation = packaged_federation(f"train.batch_size={args.batch}")
    state = federation.initial_state()
    ours(federation, state, 2, seed=0)
    rates = {"ours": [], "plain": []}
    for trial in range(args.trials):
        rates["ours"].append(ours(federation, state, args.steps, seed=trial))
        rates["plain"].append(plain_loop(federation, state, args.steps, args.batch, seed=trial))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["ours"] / medians["plain"]
    table = Table(title="client training steps/s (median of trials)")
    for column in ("loop", "steps/s", "trials"):
        table.add_column(column)
    for name, values in rates.items():
        table.add_row(name, f"{medians[name]:.3f}", ", ".join(f"{v:.3f}" for v in values))
    Console().print(table)
    print(f"ratio ours/plain = {ratio:.3f} (goal >= 0.9)")
    write_result("step_overhead", {"ratio": ratio, "steps_per_s": medians, "trials": rates,
                                   "batch": args.batch, "steps": args.steps, "seq_len": 64,
                                   "command": "python benchmarks/step_overhead.py"})


if __name__ == "__main__":
    main()
