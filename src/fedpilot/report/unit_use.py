"""Which units each method trained, per budget group: the evidence behind a study's accuracy table.

For every (dataset, partition, method) and every client budget, the share of that budget's sampled
client-rounds in which each unit was trained, and, where the records give per-unit LoRA ranks
(`ranks`, written when a plan trains units below full rank), the mean rank the unit was trained at
over the records that give one. A client left out of a round, or training the head only, counts as
training no unit; rank-based methods count a unit whenever it had a rank above 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedpilot.memory.cost import human
from fedpilot.report.tables import markdown_table

KEY_COLUMNS = ("dataset", "partition", "method", "budget", "client_rounds")


def unit_count(client_records: Iterable[Mapping[str, Any]]) -> int:
    """One more than the highest unit any client trained (0 when none trained any)."""
    return 1 + max((unit for record in client_records for unit in record.get("units", ())), default=-1)


def unit_shares(client_records: Sequence[Mapping[str, Any]], units: int) -> list[float]:
    """For each unit 0..units-1, the fraction of the client records that trained it."""
    if not client_records:
        raise ValueError("unit_shares needs at least one client record")
    return [sum(unit in record.get("units", ()) for record in client_records) / len(client_records)
            for unit in range(units)]


def unit_ranks(client_records: Sequence[Mapping[str, Any]], units: int) -> list[float | None]:
    """For each unit 0..units-1, its mean LoRA rank over the records that trained it with a `ranks` entry
    (None where none did)."""
    ranks: dict[int, list[int]] = defaultdict(list)
    for record in client_records:
        for unit, rank in zip(record.get("units", ()), record.get("ranks") or ()):
            ranks[unit].append(rank)
    return [sum(ranks[j]) / len(ranks[j]) if ranks[j] else None for j in range(units)]


def by_budget(client_records: Iterable[Mapping[str, Any]]) -> dict[int | None, list[Mapping[str, Any]]]:
    """Client records grouped by their budget in bytes, smallest first; no budget (None) last."""
    groups: dict[int | None, list[Mapping[str, Any]]] = defaultdict(list)
    for record in client_records:
        groups[record.get("budget_bytes")].append(record)
    return dict(sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or 0)))


def unit_use_rows(settings: Mapping[tuple[str, str, str], Sequence[Sequence[Mapping[str, Any]]]],
                  names: Mapping[tuple[str, str, str], Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """One row per (dataset, partition, method, budget) with the share of client-rounds training each unit.

    `settings` maps (dataset, partition, method) to the round records of each of its runs; `names` to
    its units' labels ("3", or "3.value" at module granularity; the runs' `unit_names`). A setting
    without names gets "0".."n-1" over the units any setting without names trained.
    """
    names = names or {}
    clients = {key: [c for rounds in runs for record in rounds for c in record["clients"]]
               for key, runs in settings.items()}
    units = unit_count(c for key, records in clients.items() if key not in names for c in records)
    rows = []
    for key, records in clients.items():
        labels = list(names.get(key, [str(j) for j in range(units)]))
        for budget, members in by_budget(records).items():
            rows.append({"dataset": key[0], "partition": key[1], "method": key[2], "budget": budget,
                         "client_rounds": len(members), "names": labels, "shares": unit_shares(members, len(labels)),
                         "ranks": unit_ranks(members, len(labels))})
    return rows


def unit_use_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as Markdown tables, shares in percent (with the mean rank as `r4.5` where known) and
    budgets in binary units; one table per distinct list of unit names (block and module units differ)."""
    tables: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        tables.setdefault(tuple(row.get("names") or map(str, range(len(row["shares"])))), []).append(row)
    return "\n\n".join(_markdown(names, members) for names, members in tables.items()) if rows else _markdown((), [])


def _markdown(names: tuple[str, ...], rows: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown table of rows that share the unit names."""
    header = [*KEY_COLUMNS, *(f"unit {name}" for name in names)]
    cells = [[row["dataset"], row["partition"], row["method"],
              "none" if row["budget"] is None else human(row["budget"]), str(row["client_rounds"]),
              *(f"{share:.0%}" + ("" if rank is None else f" r{rank:.1f}")
                for share, rank in zip(row["shares"], row.get("ranks") or [None] * len(names)))] for row in rows]
    return markdown_table(header, cells)
