"""What each SuperNode tells the server before round 1: its data size, label histogram and budgets.

The node answers the server's `query.partition` message with a `NodeReport` (never its data);
the server checks it, plans with the budgets the node declared in its node config (`memory`,
`upload`, in place of its `clients.groups` assignment), takes the sizes as the clients' data
sizes, and writes every report into the run directory (`nodes.json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord

from fedpilot.assign.budgets import ClientBudget, group_of_clients, make_budget
from fedpilot.config import Config
from fedpilot.memory.cost import BudgetError, CostProfile, human
from fedpilot.memory.gpus import usable_bytes
from fedpilot.report.records import write_atomic

BUDGET_KEYS = ("memory", "upload")
"""Node config keys a node declares its own budgets with."""


@dataclass(frozen=True)
class NodeReport:
    """One node's answer before round 1.

    `data`: "own" (its node config's data-path) or "partition" (its share of the shared dataset);
    `label_counts`: examples per label index; `memory` / `upload`: its declared budgets as budget
    text (`memory=auto` already resolved to bytes), None where it declared none; `dropped_rows`: rows
    of its own file left out for an empty text or label.
    """

    partition: int
    examples: int
    label_counts: list[int]
    data: str
    memory: str | None = None
    upload: str | None = None
    dropped_rows: int = 0


def declared_memory(text: str) -> str:
    """A node's `memory` as sent to the server; `auto` becomes its CUDA device's total memory less the
    reserve (`memory.gpus.usable_bytes`), in bytes.

    Raises BudgetError for `auto` on a node where torch sees no CUDA device.
    """
    if text.strip().lower() != "auto":
        return text
    import torch

    if not torch.cuda.is_available():
        raise BudgetError("node config memory=auto needs a CUDA device, and torch sees none on this node; "
                          "give bytes (memory=\"10GiB\") or a GPU name (memory=\"rtx3060-12g\")")
    return str(usable_bytes(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory))


def node_report(node_config: Mapping[str, Any], partition: int, label_counts: list[int], own: bool,
                dropped_rows: int = 0) -> NodeReport:
    """This node's report: data size and histogram, rows its own file dropped, and the budgets its node
    config declares."""
    budgets = {key: str(node_config[key]) for key in BUDGET_KEYS if key in node_config}
    if "memory" in budgets:
        budgets["memory"] = declared_memory(budgets["memory"])
    return NodeReport(partition, sum(label_counts), label_counts, "own" if own else "partition", **budgets,
                      dropped_rows=dropped_rows)


def encode_report(report: NodeReport) -> ConfigRecord:
    """A report as a ConfigRecord (keys kebab-cased; unset budgets left out)."""
    values = {key.replace("_", "-"): value for key, value in asdict(report).items() if value is not None}
    return ConfigRecord(values)


def decode_report(record: ConfigRecord) -> NodeReport:
    """The report `encode_report` packed."""
    return NodeReport(int(record["partition"]), int(record["examples"]), [int(n) for n in record["label-counts"]],
                      str(record["data"]), *(str(record[k]) if k in record else None for k in BUDGET_KEYS),
                      dropped_rows=int(record.get("dropped-rows", 0)))


def check_report(report: NodeReport, num_labels: int) -> None:
    """Raise ValueError unless the histogram has one count per label and sums to a positive size."""
    where = f"SuperNode of partition-id {report.partition}"
    if len(report.label_counts) != num_labels:
        raise ValueError(f"{where} reported {len(report.label_counts)} label counts for {num_labels} labels")
    if report.examples <= 0 or sum(report.label_counts) != report.examples or min(report.label_counts) < 0:
        raise ValueError(f"{where} reported {report.examples} examples with label counts {report.label_counts}")


def declared_budgets(config: Config, budgets: list[ClientBudget], reports: Mapping[int, NodeReport],
                     profile: CostProfile) -> list[ClientBudget]:
    """Every client's budget: its group's, with the memory and upload its node declared in their place.

    Errors name the node (`node-config[partition-id=2].memory: ...`), as `BudgetError`.
    """
    groups = config.clients.groups
    membership = group_of_clients([g.share for g in groups], config.clients.num_clients)
    result = list(budgets)
    for client, report in reports.items():
        if report.memory is None and report.upload is None:
            continue
        group = groups[membership[client]]
        result[client] = make_budget(f"node-config[partition-id={client}]", membership[client],
                                     report.memory or group.memory, report.upload or group.upload, profile,
                                     config.clients.unaffordable)
    return result


def describe_declared(reports: Mapping[int, NodeReport], budgets: list[ClientBudget]) -> list[str]:
    """One line per node that declared a budget: what it declared and what the server plans with."""
    lines = []
    for client, report in sorted(reports.items()):
        if report.memory is not None or report.upload is not None:
            budget = budgets[client]
            upload = "unlimited" if budget.upload is None else human(budget.upload)
            excluded = " (excluded: below the head-only cost)" if budget.excluded else ""
            lines.append(f"partition {client}: node declared memory={report.memory} upload={report.upload} -> "
                         f"plans with {human(budget.memory)} memory, {upload} upload{excluded}")
    return lines


def describe_dropped(reports: Mapping[int, NodeReport]) -> list[str]:
    """One line per node whose own file had rows left out (empty text or label)."""
    return [f"partition {client}: its node left out {report.dropped_rows} row{'s' * (report.dropped_rows != 1)} "
            "of its file (empty text or label)" for client, report in sorted(reports.items()) if report.dropped_rows]


def write_reports(run_dir: Path, reports: Mapping[int, NodeReport], budgets: list[ClientBudget],
                  label_names: list[str]) -> None:
    """`nodes.json`: the label names and, per partition, its node's report and the budget planned with."""
    nodes = [{**asdict(report), "budget_bytes": budgets[client].memory, "upload_limit_bytes": budgets[client].upload}
             for client, report in sorted(reports.items())]
    write_atomic(run_dir / "nodes.json", json.dumps({"label_names": label_names, "nodes": nodes}, indent=1))
