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


def unit_use_rows(settings: Mapping[tuple[str, str, str], Sequence[Sequence[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per (dataset, partition, method, budget) with the share of client-rounds training each unit.

    `settings` maps (dataset, partition, method) to the round records of each of its runs.
    """
    clients = {key: [c for rounds in runs for record in rounds for c in record["clients"]]
               for key, runs in settings.items()}
    units = unit_count(c for records in clients.values() for c in records)
    rows = []
    for (dataset, partition, method), records in clients.items():
        for budget, members in by_budget(records).items():
            rows.append({"dataset": dataset, "partition": partition, "method": method, "budget": budget,
                         "client_rounds": len(members), "shares": unit_shares(members, units),
                         "ranks": unit_ranks(members, units)})
    return rows


def unit_use_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table, shares in percent (with the mean rank as `r4.5` where known) and
    budgets in binary units."""
    units = len(rows[0]["shares"]) if rows else 0
    header = [*KEY_COLUMNS, *(f"unit {j}" for j in range(units))]
    cells = [[row["dataset"], row["partition"], row["method"],
              "none" if row["budget"] is None else human(row["budget"]), str(row["client_rounds"]),
              *(f"{share:.0%}" + ("" if rank is None else f" r{rank:.1f}")
                for share, rank in zip(row["shares"], row.get("ranks") or [None] * units))] for row in rows]
    return markdown_table(header, cells)
