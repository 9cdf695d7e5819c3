"""Show a cost profile: a rich table, a Fig. 1-style PNG (memory vs the trainable unit's position), JSON.

Also the body of `fedpilot profile`, so the command line only parses options.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from fedpilot.memory.cost import GiB, MiB, CostProfile, human, mem_of, module_name, save_profile
from fedpilot.memory.profiler import profile

COMPONENTS = ("frozen", "head", "unit", "path", "peak")
LABELS = {"frozen": "M_frozen", "head": "M_head + A_head", "unit": "M_state(k) + a_k", "path": "A_path(k)",
          "peak": "M_peak"}


def model_label(model: str) -> str:
    """Short model name: the folder of a config.json, else the last path part."""
    path = Path(model)
    return (path.parent.name if path.name == "config.json" else path.name) or model


def single_unit_parts(profile: CostProfile, k: int) -> dict[str, int]:
    """Mem({k}) split into its components (they sum to `mem_of(profile, [k])`)."""
    return {"frozen": profile.frozen, "head": profile.head + profile.head_path, "unit": profile.unit_mem[k],
            "path": profile.path[k], "peak": profile.peak}


def unit_label(profile: CostProfile, k: int) -> str:
    """Unit k's name in tables and plots: its index, or block.i (the block's i-th adapted Linear) at module
    granularity."""
    return module_name(profile.blocks, k) if profile.blocks else str(k)


def profile_table(profile: CostProfile) -> Table:
    """Per unit: Mem if it is the lowest trained unit, its parts, its marginal cost above a lower one."""
    n = profile.num_units
    targets = ", ".join(profile.targets)
    table = Table(title=f"memory profile: {model_label(profile.model)}, batch {profile.batch}, "
                        f"length {profile.length}, {profile.dtype}, LoRA r={profile.rank} on {targets}"
                        + (", a unit per adapted Linear" if profile.blocks else ""))
    for column in ("unit", "Mem({k})", "A_path(k)", "M_state(k)", "a_k", "marginal above", "Mem(k..top)"):
        table.add_column(column, justify="right")
    for k in range(n):
        split = not profile.blocks or profile.blocks[k] > 0
        table.add_row(unit_label(profile, k), human(mem_of(profile, [k])),
                      human(profile.path[k]) if split else "-", human(profile.state[k]),
                      human(profile.lora[k]) if split else "-", human(profile.unit_mem[k]) if split else "-",
                      human(mem_of(profile, range(k, n))))
    table.add_section()
    table.add_row("head only", human(profile.fixed_mem), "", "", "", "", "")
    table.add_row("all units", human(mem_of(profile, range(n))), "", "", "", "", "")
    table.caption = (f"head only = M_frozen {human(profile.frozen)} + M_head {human(profile.head)} + "
                     f"A_head {human(profile.head_path)} + M_peak,head {human(profile.head_only_peak)}; "
                     f"with units, M_peak {human(profile.peak)} in place of M_peak,head"
                     + ("; unit b.i = block b's i-th adapted Linear; marginal above = what it adds when a lower "
                        "block trains (units of one block share inputs: their marginal costs do not add up); "
                        "block 0 has no lower block, so its units' costs are not split (-)" if profile.blocks else ""))
    return table


def plot_profile(profile: CostProfile, path: Path) -> Path:
    """Two panels: Mem({k}) against k with head-only and all-units lines; Mem({k}) stacked by component."""
    scale, unit = (GiB, "GiB") if mem_of(profile, range(profile.num_units)) >= GiB else (MiB, "MiB")
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    _plot_positions(left, profile, scale, unit)
    _plot_breakdown(right, profile, scale, unit)
    fig.suptitle(f"{model_label(profile.model)}: batch {profile.batch}, length {profile.length}, {profile.dtype}, "
                 f"LoRA r={profile.rank}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _plot_positions(ax, profile: CostProfile, scale: int, unit: str) -> None:
    """Mem({k}) against the position k, with the all-units and head-only costs as lines."""
    ks = list(range(profile.num_units))
    ax.plot(ks, [mem_of(profile, [k]) / scale for k in ks], "o-", label="only unit k trained")
    _unit_ticks(ax, profile)
    ax.axhline(mem_of(profile, ks) / scale, color="C3", ls="--", label="all units trained")
    ax.axhline(profile.fixed_mem / scale, color="gray", ls=":", label="head only")
    ax.set(xlabel="position k of the trainable unit (0 = lowest block)", ylabel=f"memory ({unit})",
           title="memory vs position of the single trainable unit")
    ax.legend()


def _plot_breakdown(ax, profile: CostProfile, scale: int, unit: str) -> None:
    """Mem({k}) for every k as bars stacked by component."""
    ks = list(range(profile.num_units))
    bottom = [0.0] * len(ks)
    for index, name in enumerate(COMPONENTS):
        heights = [single_unit_parts(profile, k)[name] / scale for k in ks]
        ax.bar(ks, heights, bottom=bottom, color=f"C{index}", label=LABELS[name])
        bottom = [b + h for b, h in zip(bottom, heights)]
    _unit_ticks(ax, profile)
    ax.set(xlabel="position k of the trainable unit", ylabel=f"memory ({unit})",
           title="breakdown of Mem({k})" + (" (block 0: A_path counted in M_state + a_k)" if profile.blocks else ""))
    ax.legend(fontsize=8)


def _unit_ticks(ax, profile: CostProfile) -> None:
    """At module granularity, label the x axis by block.i (at most 24 labels)."""
    if profile.blocks:
        ks = range(0, profile.num_units, max(1, -(-profile.num_units // 24)))
        ax.set_xticks(list(ks), [unit_label(profile, k) for k in ks], rotation=90, fontsize=7)


def write_profile_report(profile: CostProfile, out_dir: Path) -> list[Path]:
    """Write the profile as JSON and its figure as PNG into `out_dir`; return both paths."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_label(profile.model))
    stem = f"profile-{name}-b{profile.batch}-l{profile.length}-{profile.dtype}" + ("-module" if profile.blocks else "")
    out_dir = Path(out_dir)
    return [save_profile(profile, out_dir / f"{stem}.json"), plot_profile(profile, out_dir / f"{stem}.png")]


def run_profile_command(model: str, batch: int, seq: int, image_size: int | None, dtype: str, device: str,
                        rank: int, targets: list[str], out: Path, console: Console,
                        granularity: str = "block") -> None:
    """`fedpilot profile`: measure (or read from cache) the profile, print its table, write JSON + PNG.
    Raises ProfileError (a ModelError) for a bad option, as `profile`."""
    started = time.perf_counter()
    result = profile(model, batch, seq, image_size, dtype, rank, targets or None, device, granularity=granularity)
    console.print(profile_table(result))
    paths = write_profile_report(result, out)
    console.print(f"profiled on {device} in {time.perf_counter() - started:.1f} s; wrote "
                  + ", ".join(str(p) for p in paths), highlight=False)
