"""The Flower engine: the same strategies and round logic as the local engine, as a Flower app (flwr 1.42).

`server_app` drives a `FlowerRounds` strategy whose every decision comes from the `RoundServer` of
`engines/server.py` (shared with the local engine); this module only turns those decisions into
messages. A QUERY round first maps the random node ids to partition ids, so all decisions are
keyed by partition id and replies are merged in partition order: the same seed gives the same run as
`fedpilot run --engine local`. The same QUERY brings each node's report (data size, label histogram,
declared budgets; `engines.node_report`): the server plans with those budgets and sizes and keeps
the reports in the run directory (`nodes.json`).

- simulation, in-process: `run_flower(config)` (what `fedpilot run --engine flower` calls);
- deployment: `flwr run . <superlink>` with `[tool.flwr.app.config]` keys `config` (a YAML
  preset path on the ServerApp's machine, "" for the defaults), `overrides` (`key=value` pairs
  separated by spaces) and `federated-eval`; see docs/deployment.md.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterable
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy as FlowerStrategy
from rich.console import Console

from fedpilot.config import Config, dump_config, load_config
from fedpilot.engines.flower_client import (CONFIG_KEY, client_app, decode_outcome, decode_scores, plan_config,
                                            to_arrays)
from fedpilot.engines.client_round import Outcome
from fedpilot.engines.node_report import (NodeReport, check_report, declared_budgets, decode_report, describe_dropped,
                                          describe_declared, write_reports)
from fedpilot.engines.server import Round, RoundServer, show_setup
from fedpilot.federation import Federation, build_federation
from fedpilot.report.records import RunRecorder, fresh_run_dir

REPLY_TIMEOUT = 3600.0
"""Seconds the server waits for a round's replies (deployment nodes may be slow)."""
NODE_WAIT = 300.0
"""Seconds the server waits for a SuperNode per client to connect."""


class FlowerEngineError(RuntimeError):
    """The federation of SuperNodes does not match the config (missing or duplicate partitions)."""


def instruction(node_id: int, kind: str, text: str, config: dict[str, Any] | None = None,
                **arrays: ArrayRecord) -> Message:
    """A message to one node carrying the run's config (and `config`, `arrays` records)."""
    content = RecordDict({"config": ConfigRecord({CONFIG_KEY: text, **(config or {})}), **arrays})
    return Message(content=content, message_type=kind, dst_node_id=node_id)


def wait_for_nodes(grid: Grid, count: int, patience: float = NODE_WAIT) -> list[int]:
    """Node ids once at least `count` nodes are connected (deployment nodes join over time)."""
    deadline = time.monotonic() + patience
    while len(node_ids := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FlowerEngineError(f"{len(node_ids)} of {count} SuperNodes connected after {patience:.0f} s")
        time.sleep(1.0)
    return node_ids


def map_partitions(grid: Grid, text: str, num_clients: int) -> tuple[dict[int, int], dict[int, NodeReport]]:
    """Partition id -> node id and partition id -> the node's report, asked of every node by a QUERY
    (which also builds its federation, so a node's bad data fails here, before training)."""
    messages = [instruction(node, f"{MessageType.QUERY}.partition", text) for node in wait_for_nodes(grid, num_clients)]
    nodes: dict[int, int] = {}
    reports: dict[int, NodeReport] = {}
    for message in grid.send_and_receive(messages, timeout=REPLY_TIMEOUT):
        if message.has_error():
            raise FlowerEngineError(f"node {message.metadata.src_node_id} failed: {message.error.reason}")
        partition = int(message.content["partition"]["partition-id"])
        if partition in nodes:
            raise FlowerEngineError(f"two SuperNodes hold partition-id {partition}")
        nodes[partition] = message.metadata.src_node_id
        reports[partition] = decode_report(message.content["report"])
    missing = sorted(set(range(num_clients)) - set(nodes))
    if missing:
        raise FlowerEngineError(f"no SuperNode holds partition-id {missing}")
    return nodes, reports


def take_reports(config: Config, federation: Federation, reports: dict[int, NodeReport],
                 console: Console) -> dict[int, int]:
    """Check the nodes' reports, plan with the budgets they declared (`federation.budgets` replaced);
    returns each client's data size as its node reported it."""
    for report in reports.values():
        try:
            check_report(report, len(federation.label_names))
        except ValueError as error:
            raise FlowerEngineError(str(error)) from None
    federation.budgets = declared_budgets(config, federation.budgets, reports, federation.profile)
    for line in describe_declared(reports, federation.budgets):
        console.print(line, highlight=False)
    for line in describe_dropped(reports):
        console.print(f"[yellow]data:[/] {line}", highlight=False)
    return {client: report.examples for client, report in sorted(reports.items())}


class FlowerRounds(FlowerStrategy):
    """A Flower strategy adapting ours: every decision comes from a `RoundServer`, keyed by partition id."""

    def __init__(self, server: RoundServer, nodes: dict[int, int], text: str, federated_eval: bool) -> None:
        self.server = server
        self.nodes = nodes
        self.partitions = {node: partition for partition, node in nodes.items()}
        self.text = text
        self.federated_eval = federated_eval
        self.current: Round | None = None
        self.record: dict[str, Any] = {}

    @property
    def playing(self) -> Round:
        """The round in progress (opened by `configure_train`)."""
        if self.current is None:
            raise FlowerEngineError("Flower asked for replies before configure_train opened a round")
        return self.current

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample, ask for IG-Scores when the strategy wants them, assign; one message per planned client."""
        server = self.server
        current = self.current = server.open_round(server_round)
        self.score(current, grid)
        server.assign(current)
        messages = []
        for client_id, plan in current.plans.items():
            trained, frozen = server.payload(plan)
            settings = plan_config(plan, current.number, client_id, server.seed(current, client_id))
            messages.append(instruction(self.nodes[client_id], MessageType.TRAIN, self.text, settings,
                                        arrays=to_arrays(trained), frozen=to_arrays(frozen)))
        return messages

    def score(self, current: Round, grid: Grid) -> None:
        """Send the strategy's IG-Score requests as QUERY messages and keep the replies on the round."""
        if not current.requests:
            return
        server, state = self.server, to_arrays(self.server.state)
        messages = [instruction(self.nodes[client], f"{MessageType.QUERY}.score", self.text,
                                {"partition-id": client, "units": list(units), "seed": server.seed(current, client),
                                 "micro-batch": server.micro_batch(current, client)}, arrays=state)
                    for client, units in current.requests.items()]
        for message in grid.send_and_receive(messages, timeout=REPLY_TIMEOUT):
            client_id = self.partitions[message.metadata.src_node_id]
            if message.has_error():  # the strategy assigns without this client's scores
                server.console.print(f"[yellow]round {current.number}: client {client_id} did not score: "
                                     f"{message.error.reason}[/]")
                continue
            current.scores[client_id] = decode_scores(message.content["scores"])
            current.score_seconds[client_id] = float(message.content["scores"]["seconds"])

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Replies as our outcomes (a planned client without one failed); our strategy aggregates."""
        outcomes: dict[int, Outcome] = {}
        for message in replies:
            client_id = self.partitions[message.metadata.src_node_id]
            outcomes[client_id] = decode_outcome(message, client_id)
        self.record = self.server.conclude(self.playing, outcomes)
        clients = self.record["clients"]
        losses = [c["loss"] for c in clients if "loss" in c]
        metrics = {"download-bytes": sum(c["download_bytes"] for c in clients),
                   "sent-bytes": sum(c["sent_bytes"] for c in clients)}
        metrics.update({"loss": sum(losses) / len(losses)} if losses else {})
        return to_arrays(self.server.state), MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """With federated evaluation on, the round's clients evaluate the new global model when it is due."""
        if not (self.federated_eval and self.server.evaluation_due(server_round)):
            return []
        state = to_arrays(self.server.state)
        return [instruction(self.nodes[c], MessageType.EVALUATE, self.text, {"partition-id": c}, arrays=state)
                for c in self.playing.clients]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted accuracy and loss of the clients' evaluations, kept in the round record."""
        results = []
        for message in replies:
            if message.has_error():
                self.server.console.print(f"[yellow]round {server_round}: node {message.metadata.src_node_id} "
                                          f"did not evaluate: {message.error.reason}[/]")
            else:
                results.append(message.content["metrics"])
        total = sum(r["num-examples"] for r in results)
        if not total:
            return None
        metrics = {key: sum(r[key] * r["num-examples"] for r in results) / total for key in ("accuracy", "loss")}
        self.record.update(client_accuracy=metrics["accuracy"], client_loss=metrics["loss"])
        return MetricRecord(metrics)

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's end-of-round hook: our evaluation, record and checkpoint (nothing before round 1)."""
        if server_round == 0:
            return None
        self.server.finish_round(self.record, self.playing)
        accuracy = self.record.get("test_accuracy")
        shown = f" acc {accuracy:.3f}" if accuracy is not None else ""
        self.server.console.print(f"round {server_round}{shown}", highlight=False)
        return MetricRecord({"test-accuracy": accuracy, "test-loss": self.record["test_loss"]}) if shown else None

    def summary(self) -> None:
        """Log which strategy runs over how many partitions."""
        log(INFO, "\t├── fedpilot strategy %s, %d partitions", self.server.config.strategy.name, len(self.nodes))


def serve(grid: Grid, config: Config, console: Console, federated_eval: bool = False) -> tuple[Path, dict[str, Any]]:
    """The ServerApp's work: build the federation, map partitions, run every round; returns run dir and summary."""
    federation = build_federation(config)
    show_setup(config, federation, console)
    text = dump_config(config)
    nodes, reports = map_partitions(grid, text, config.clients.num_clients)
    sizes = take_reports(config, federation, reports, console)
    run_dir = fresh_run_dir(config.output.dir, config.run_name())
    write_reports(run_dir, reports, federation.budgets, federation.label_names)
    server = RoundServer(config, federation, RunRecorder(run_dir, config), console, sizes)
    strategy = FlowerRounds(server, nodes, text, federated_eval)
    server.start_clock()
    strategy.start(grid, to_arrays(server.state), num_rounds=config.train.rounds, timeout=REPLY_TIMEOUT,
                   evaluate_fn=strategy.end_round)
    return run_dir, server.finish()


def config_from_run(run_config: dict[str, Any]) -> Config:
    """The fedpilot config named by `flwr run`'s run config (`config` path and `overrides`)."""
    return load_config(str(run_config.get("config", "")) or None, shlex.split(str(run_config.get("overrides", ""))))


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run` entry point: the config from the run config, then every round."""
    config = config_from_run(context.run_config)
    run_dir, summary = serve(grid, config, Console(), bool(context.run_config.get("federated-eval", False)))
    log(INFO, "fedpilot run %s finished: final accuracy %s", run_dir, summary["final_accuracy"])


def simulation_backend() -> dict[str, dict[str, Any]]:
    """Ray settings for a small machine: one actor (clients run one after another, like the local engine)."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False}}


def run_flower(config: Config, console: Console | None = None,
               federated_eval: bool = False) -> tuple[Path, dict[str, Any]]:
    """Run every round in Flower's simulation engine in-process: one SuperNode per client, ray backend.

    Clients get the driver's torch thread count (ray would give an actor one per CPU it reserved).
    """
    from flwr.simulation import run_simulation

    console = console or Console()
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    outcome: dict[str, tuple[Path, dict[str, Any]]] = {}
    app = ServerApp()

    @app.main()
    def simulated(grid: Grid, context: Context) -> None:
        """The ServerApp of this simulation: `serve` with the given config."""
        outcome["run"] = serve(grid, config, console, federated_eval)

    run_simulation(server_app=app, client_app=client_app, num_supernodes=config.clients.num_clients,
                   backend_config=simulation_backend())
    if "run" not in outcome:
        raise FlowerEngineError("the Flower simulation ended without finishing the run")
    return outcome["run"]
