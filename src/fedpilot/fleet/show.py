"""Show a fleet plan: rich tables, JSON and a figure; also the body of `fedpilot plan`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from fedpilot.config import ConfigError
from fedpilot.fleet.planner import FleetPlan, checked_ranks, plan_fleet
from fedpilot.fleet.spec import load_fleet
from fedpilot.memory.cost import GiB, human, module_name
from fedpilot.memory.plot import model_label


def unit_ranges(units: Sequence[int]) -> str:
    """Units as compact ranges: (0, 1, 2, 5) -> "0-2, 5"; () -> "head only"."""
    if not units:
        return "head only"
    parts, start = [], units[0]
    for previous, current in zip(units, [*units[1:], None]):
        if current != previous + 1:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(parts)


def module_ranges(units: Sequence[int], blocks: Sequence[int]) -> str:
    """Module units by block (`blocks[j]` = unit j's block): a block with every one of its units as its number,
    consecutive such blocks as a range, the rest as block.i for its i-th module unit: (0, 2, 3, 4, 5) with
    blocks (0, 0, 1, 1, 2, 2) -> "0.0, 1-2"; () -> "head only"."""
    if not units:
        return "head only"
    chosen, parts, run = set(units), [], []
    for block in sorted(set(blocks)):
        members = [j for j, b in enumerate(blocks) if b == block]
        if set(members) <= chosen:
            run.append(block)
            continue
        if run:
            parts.append(unit_ranges(run))
            run = []
        parts += [module_name(tuple(blocks), j) for j in members if j in chosen]
    if run:
        parts.append(unit_ranges(run))
    return ", ".join(parts)


def unit_text(units: Sequence[int], blocks: Sequence[int] = ()) -> str:
    """Units as compact text: `unit_ranges` at block granularity, `module_ranges` when `blocks` are given."""
    return module_ranges(units, blocks) if blocks else unit_ranges(units)


def ranked_units(units: Sequence[int], ranks: Sequence[int], single_rank: bool, blocks: Sequence[int] = ()) -> str:
    """Units with their ranks: runs of consecutive units at one rank, "0-3 r8, 4-5 r4"; plain ranges when the
    plan has one rank option; "head only" for none; module units by block (`unit_text`) when `blocks` are given,
    each part with its rank ("0 r4, 1.0 r4, 1.1 r2")."""
    if single_rank or not units:
        return unit_text(units, blocks)
    parts, start = [], 0
    for i in range(1, len(units) + 1):
        if i == len(units) or units[i] != units[i - 1] + 1 or ranks[i] != ranks[start]:
            parts += [f"{part} r{ranks[start]}" for part in unit_text(units[start:i], blocks).split(", ")]
            start = i
    return ", ".join(parts)


def kinds_table(plan: FleetPlan) -> Table:
    """Per kind: budgets, whether it takes part, deepest unit, assignment, Mem, traffic, largest batch."""
    table = Table(title=f"plan: {model_label(plan.model)}, batch {plan.batch}, length {plan.length}, {plan.dtype}, "
                        f"LoRA r={plan.rank}; frozen model {human(plan.frozen_bytes)}, head only "
                        f"{human(plan.head_only_bytes)}, every unit {human(plan.all_units_bytes)}"
                        + (f"; rank options {', '.join(map(str, plan.rank_options))}" if len(plan.rank_options) > 1
                           else ""),
                  caption="module units: b = every adapted Linear of block b, b.i = its i-th" if plan.blocks else None)
    for column in ("kind", "clients", "memory", "upload", "deepest unit", "assigned units", "Mem",
                   "up / round", "down / round", "batch, all units"):
        table.add_column(column, justify="left" if column in ("kind", "assigned units") else "right")
    for kind in plan.kinds:
        upload = "unlimited" if kind.upload_budget is None else f"{human(kind.upload_budget)} ({kind.upload_units} u)"
        if not kind.takes_part:
            table.add_row(kind.name, str(kind.count), human(kind.memory_budget), upload, "-",
                          f"[red]cannot take part[/]: {kind.reason}", "-", "-", "-", "-")
            continue
        deepest = "-" if kind.deepest_unit is None else unit_text((kind.deepest_unit,), plan.blocks)
        table.add_row(kind.name, str(kind.count), human(kind.memory_budget), upload, deepest,
                      ranked_units(kind.units, kind.ranks, len(plan.rank_options) == 1, plan.blocks),
                      human(kind.mem_bytes),
                      human(kind.upload_bytes),
                      human(kind.download_bytes), str(kind.largest_batch_all_units) or "0")
    return table


def coverage_table(plan: FleetPlan) -> Table:
    """Per run of units with equal coverage: clients that can train them, clients the plans give them."""
    table = Table(title=f"coverage per unit ({sum(k.count for k in plan.kinds)} clients)")
    for column in ("units", "can train", "assigned"):
        table.add_column(column, justify="right")
    start = 0
    for j in range(1, len(plan.can_train) + 1):
        if j == len(plan.can_train) or (plan.can_train[j], plan.assigned[j]) != (plan.can_train[start],
                                                                                   plan.assigned[start]):
            table.add_row(unit_text(range(start, j), plan.blocks), str(plan.can_train[start]),
                          str(plan.assigned[start]))
            start = j
    return table


def plot_plan(plan: FleetPlan, path: Path) -> Path:
    """Two panels: each kind's Mem of its assignment against its budget; coverage per unit."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    names = [k.name for k in plan.kinds]
    left.bar(names, [plan.frozen_bytes / GiB] * len(names), color="C7", label="frozen model")
    left.bar(names, [max(k.mem_bytes - plan.frozen_bytes, 0) / GiB for k in plan.kinds],
             bottom=[plan.frozen_bytes / GiB] * len(names), color="C0", label="training (assigned units + head)")
    left.scatter(names, [k.memory_budget / GiB for k in plan.kinds], color="C3", marker="_", s=900, zorder=3,
                 label="budget")
    left.set(ylabel="memory (GiB)", title="memory per kind against its budget")
    left.legend(fontsize=8)
    units = range(len(plan.can_train))
    right.bar(units, plan.can_train, color="C1", alpha=0.5, label="clients that can train it")
    right.bar(units, plan.assigned, color="C2", width=0.5, label="clients assigned it")
    right.set(xlabel="module unit (0 = the lowest block's first)" if plan.blocks else "unit (0 = lowest block)",
              ylabel="clients", title="coverage per unit")
    right.legend(fontsize=8)
    fig.suptitle(f"{model_label(plan.model)}: batch {plan.batch}, length {plan.length}, {plan.dtype}, "
                 f"LoRA r={plan.rank}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_plan(plan: FleetPlan, out_dir: Path) -> list[Path]:
    """Write `plan.json` and `plan.png` into `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "plan.json"
    json_path.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    return [json_path, plot_plan(plan, out_dir / "plan.png")]


def unit_values(scores_run: Path | None, num_units: int) -> list[float] | None:
    """Unit values from a run's last global IG-Scores (None: uniform); `ConfigError` if unusable."""
    from fedpilot.report.records import last_global_scores

    if scores_run is None:
        return None
    scores = last_global_scores(scores_run)
    if scores is None:
        raise ConfigError(f"--scores {scores_run}: no round of that run logged strategy.global_scores "
                          f"(fedpilot runs do)")
    if len(scores) != num_units:
        raise ConfigError(f"--scores {scores_run}: {len(scores)} unit scores, but the model has {num_units} units "
                          f"(a run at the other lora.granularity? see --granularity)")
    return scores


def parse_ranks(text: str | None, rank: int) -> tuple[int, ...] | None:
    """`--ranks 2,4,8` as ascending rank options up to `rank` (None: `rank` alone); ConfigError when malformed."""
    if text is None:
        return None
    try:
        return checked_ranks([int(part) for part in text.split(",")], rank)
    except ValueError as error:
        raise ConfigError(f"--ranks {text!r}: comma-separated whole ranks; {error}") from None


def run_plan_command(model: str, batch: int, seq: int, dtype: str, rank: int, fleet_file: Path,
                     scores_run: Path | None, out: Path, console: Console, ranks: str | None = None,
                     granularity: str = "block") -> FleetPlan:
    """`fedpilot plan`: read the fleet, profile the model on meta (or read the cache) at block or module
    `granularity`, plan, print, write."""
    from fedpilot.memory.profiler import profile

    options = parse_ranks(ranks, rank)
    fleet = load_fleet(fleet_file)
    started = time.perf_counter()
    cost = profile(model, batch, seq, None, dtype, rank, None, "meta", granularity=granularity)
    plan = plan_fleet(cost, fleet, unit_values(scores_run, cost.num_units), options)
    console.print(kinds_table(plan))
    console.print(coverage_table(plan))
    values = f"global IG-Scores of {scores_run}" if scores_run else "uniform unit values"
    console.print(f"assignments: exact knapsack under {values}; up / round = assigned units' LoRA + head, "
                  f"down / round = every unit's LoRA + head", highlight=False)
    for kind in plan.kinds:
        if kind.takes_part and not kind.units:
            console.print(f"[yellow]warning:[/] {kind.name} can afford no unit and trains the head only", highlight=False)
    paths = write_plan(plan, out)
    console.print(f"planned in {time.perf_counter() - started:.1f} s; wrote {', '.join(map(str, paths))}",
                  soft_wrap=True, highlight=False)
    return plan
