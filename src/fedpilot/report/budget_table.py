"""The budget table printed at the start of a run: per group, its budgets and what they reach.

Per client group: its clients, memory and upload budgets, the deepest unit it can train (and so
the blocks it may train, that one up to the top), and how many units its upload carries. A group
that can afford no unit trains the head only: a warning names the memory that reaches the top
unit. Excluded groups (`clients.unaffordable: exclude`) are listed as such.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from fedpilot.assign.budgets import ClientBudget
from fedpilot.assign.reach import deepest_unit, top_unit_memory, upload_units
from fedpilot.config import Config
from fedpilot.memory.cost import CostProfile, human


def group_budgets(budgets: Sequence[ClientBudget]) -> dict[int, tuple[ClientBudget, list[int]]]:
    """Per group index: its budget and its client ids."""
    groups: dict[int, tuple[ClientBudget, list[int]]] = {}
    for client, budget in enumerate(budgets):
        groups.setdefault(budget.group, (budget, []))[1].append(client)
    return groups


def reach_text(deepest: int | None, num_units: int, labels: Sequence[str] | None = None) -> str:
    """"blocks 4-5", "block 5" or "head only"; with unit labels "units 4.query-5.value" or "unit 5.value"."""
    if deepest is None:
        return "head only"
    word, low, top = ("unit", labels[deepest], labels[-1]) if labels else ("block", deepest, num_units - 1)
    return f"{word} {top}" if deepest == num_units - 1 else f"{word}s {low}-{top}"


def budget_table(config: Config, profile: CostProfile, budgets: Sequence[ClientBudget],
                 unit_upload: Sequence[int], labels: Sequence[str] | None = None) -> tuple[Table, list[str]]:
    """The table of every group's budgets and reach, and a warning per group that trains no unit.

    `labels` name the units (module granularity: "3.value"); by default they are blocks 0..n-1."""
    labels = labels if profile.granularity == "module" else None
    top = "unit" if labels else "block"
    table = Table(title=f"client budgets at batch {profile.batch}, {profile.length} tokens: head only "
                        f"{human(profile.fixed_mem)}, top {top} {human(top_unit_memory(profile))}, "
                        f"one unit's upload {human(max(unit_upload))}")
    for column in ("group", "clients", "memory", "upload", "can train", "upload carries"):
        table.add_column(column, justify="right")
    warnings = []
    for index, (budget, clients) in group_budgets(budgets).items():
        group = config.clients.groups[index]
        upload = "unlimited" if budget.upload is None else f"{group.upload} = {human(budget.upload)}"
        if budget.excluded:
            table.add_row(str(index), _ids(clients), f"{group.memory} = {human(budget.memory)}", upload,
                          "[red]excluded[/]: below head only", "-")
            continue
        deepest = deepest_unit(profile, budget.memory, unit_upload, budget.upload)
        table.add_row(str(index), _ids(clients), f"{group.memory} = {human(budget.memory)}", upload,
                      reach_text(deepest, profile.num_units, labels),
                      f"{upload_units(unit_upload, budget.upload)} units")
        if deepest is None:
            warnings.append(_head_only_warning(index, group.memory, budget, profile, unit_upload))
    return table, warnings


def _ids(clients: list[int]) -> str:
    """Client ids as a range when consecutive: "0-3" (4 clients)."""
    shown = f"{clients[0]}-{clients[-1]}" if clients == list(range(clients[0], clients[-1] + 1)) else str(clients)
    return f"{shown} ({len(clients)})"


def _head_only_warning(index: int, memory: str, budget: ClientBudget, profile: CostProfile,
                       unit_upload: Sequence[int]) -> str:
    """Why a group trains the head only, and the budget that would reach the top unit."""
    top = profile.num_units - 1
    if budget.memory < top_unit_memory(profile):
        return (f"clients.groups[{index}] can afford no unit at batch {profile.batch} and {profile.length} tokens "
                f"(memory {memory!r} = {human(budget.memory)}): it will train the head only; "
                f"{human(top_unit_memory(profile))} reaches the top unit (block {top})")
    return (f"clients.groups[{index}] can upload no unit (upload {human(budget.upload or 0)}, one unit "
            f"{human(min(unit_upload))}): it will train the head only")
