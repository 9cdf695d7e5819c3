"""Per-client budgets from the config's groups: memory bytes and upload bytes per round.

A group whose memory cannot hold the frozen model and the head (`CostProfile.fixed_mem`) is an
error, or with `clients.unaffordable: exclude` its clients are marked excluded (never sampled).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedpilot.memory.cost import BudgetError, CostProfile, budget_bytes, human, parse_budget

BITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


@dataclass(frozen=True)
class ClientBudget:
    """What one client may spend per round: training memory and upload bytes (None = unlimited).

    `excluded`: the memory cannot hold the frozen model and head, and the client never takes part.
    """

    group: int
    memory: int
    upload: int | None
    excluded: bool = False


def parse_upload(text: str) -> int | None:
    """'unlimited' -> None; '2MiB' -> bytes; '8Mbit/s*30s' -> the bytes that link sends by the deadline."""
    raw = str(text).strip()
    lowered = raw.lower().replace(" ", "")
    if lowered == "unlimited":
        return None
    link = re.fullmatch(r"(\d+(?:\.\d*)?)([kmg]?bit)/s\*(\d+(?:\.\d*)?)s", lowered)
    if link:
        return int(float(link.group(1)) * BITS[link.group(2)] * float(link.group(3)) / 8)
    try:
        return parse_budget(raw)
    except BudgetError:
        raise BudgetError(f"cannot parse upload budget {raw!r}; use 'unlimited', bytes like '2MiB', "
                          f"or a link speed times a deadline like '8Mbit/s*30s'") from None


def group_of_clients(shares: Sequence[float], num_clients: int) -> list[int]:
    """Group index of each client id: consecutive blocks sized by the shares."""
    bounds = np.round(np.cumsum(shares) * num_clients).astype(int)
    return [int(np.searchsorted(bounds, client, side="right")) for client in range(num_clients)]


def client_budgets(groups: Sequence[tuple[float, str, str]], num_clients: int, profile: CostProfile,
                   unaffordable: str = "error") -> list[ClientBudget]:
    """Budgets of every client from (share, memory, upload) groups.

    A memory budget below the head-only cost raises `BudgetError` naming the group's field, or with
    `unaffordable="exclude"` marks that group's clients excluded; every client excluded is an error.
    """
    parsed = [make_budget(f"clients.groups[{index}]", index, memory, upload, profile, unaffordable)
              for index, (_, memory, upload) in enumerate(groups)]
    budgets = [parsed[g] for g in group_of_clients([s for s, _, _ in groups], num_clients)]
    if all(budget.excluded for budget in budgets):
        raise BudgetError(f"every client group is below the minimum of {human(profile.fixed_mem)} "
                          f"(frozen model + head training); no client can take part")
    return budgets


def make_budget(field: str, group: int, memory: str, upload: str, profile: CostProfile,
                unaffordable: str) -> ClientBudget:
    """One budget of group `group`; errors name the field (`clients.groups[i].memory`, `<field>.upload`)."""
    try:
        limit = parse_upload(upload)
    except BudgetError as error:
        raise BudgetError(f"{field}.upload: {error}") from None
    try:
        if unaffordable == "exclude":
            size = budget_bytes(memory, profile)
            return ClientBudget(group, size, limit, excluded=size < profile.fixed_mem)
        return ClientBudget(group, parse_budget(memory, profile), limit)
    except BudgetError as error:
        hint = " (or set clients.unaffordable=exclude)" if "below the minimum" in str(error) else ""
        raise BudgetError(f"{field}.memory: {error}{hint}") from None
