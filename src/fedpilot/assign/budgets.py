"""Per-client budgets from the config's groups: memory bytes and upload bytes per round."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedpilot.memory.cost import BudgetError, CostProfile, parse_budget

BITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


@dataclass(frozen=True)
class ClientBudget:
    """What one client may spend per round: training memory and upload bytes (None = unlimited)."""

    group: int
    memory: int
    upload: int | None


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


def client_budgets(groups: Sequence[tuple[float, str, str]], num_clients: int, profile: CostProfile) -> list[ClientBudget]:
    """Budgets of every client from (share, memory, upload) groups; a budget below the minimum is an error."""
    parsed = []
    for index, (_, memory, upload) in enumerate(groups):
        try:
            parsed.append((parse_budget(memory, profile), parse_upload(upload)))
        except BudgetError as error:
            raise BudgetError(f"clients.groups[{index}]: {error}") from None
    return [ClientBudget(g, *parsed[g]) for g in group_of_clients([s for s, _, _ in groups], num_clients)]
