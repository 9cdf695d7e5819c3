"""The in-process engine: sampled clients train one after another, the strategy merges, the
global model is evaluated, and every round is logged. Deterministic for a given config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedpilot.client import ClientUpdate, Plan, evaluate, score_client, train_client
from fedpilot.config import Config
from fedpilot.federation import Federation, build_federation, sample_clients
from fedpilot.models.units import load_adapter_state
from fedpilot.report.records import RunRecorder, fresh_run_dir, summarize
from fedpilot.strategies import StrategyContext, make_strategy
from fedpilot.strategies.base import State, Strategy


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """Seed of one client's round, from (seed, round, client) only."""
    return (seed * 1_000_003 + round_number * 10_007 + client_id) % (2**31)


def evaluate_global(federation: Federation, state: State, config: Config) -> dict[str, float]:
    """Test accuracy and loss of the global adapters."""
    load_adapter_state(federation.model, state)
    return evaluate(federation.model, federation.test_data, config.eval.batch_size,
                    config.train.precision, config.train.device)


def client_record(update: ClientUpdate, plan: Plan, scores: dict[int, float] | None) -> dict[str, Any]:
    """The per-client part of a round record: plan, budget, estimate, scores and training metrics."""
    return {"id": update.client_id, "examples": update.num_examples, "units": list(plan.units),
            "budget_bytes": plan.budget_bytes, "estimated_bytes": plan.estimated_bytes,
            "upload_bytes": plan.upload_bytes, "scores": scores, **update.metrics}


class LocalRun:
    """One run of a strategy over a federation, round by round, with a progress display."""

    def __init__(self, config: Config, federation: Federation, recorder: RunRecorder, console: Console) -> None:
        self.config = config
        self.federation = federation
        self.recorder = recorder
        self.console = console
        context = StrategyContext(federation.unit_map, federation.client_sizes, config, federation.profile,
                                  federation.budgets, federation.unit_upload())
        self.strategy: Strategy = make_strategy(config.strategy.name, context)
        self.state: State = federation.initial_state()

    def train_round(self, round_number: int, progress: Progress, task: Any) -> tuple[list[dict], dict[str, Any]]:
        """Assign, train each sampled client, aggregate; returns the client records.

        A sampled client without a plan is one the strategy left out for its budget: it is not
        trained and its record says so.
        """
        cfg = self.config
        clients = sample_clients(cfg.clients.num_clients, cfg.clients.per_round, cfg.seed, round_number)
        scores, score_seconds = self.score_clients(round_number, clients)
        plans = self.strategy.assign(round_number, clients)
        progress.reset(task, total=len(clients))
        updates, records = [], []
        for client_id in clients:
            if client_id not in plans:
                records.append({"id": client_id, "skipped": "budget"})
                progress.update(task, advance=1)
                continue
            progress.update(task, description=f"client {client_id}")
            update = train_client(self.federation.model, self.federation.unit_map, self.state, plans[client_id],
                                  self.federation.client_data[client_id], self.federation.settings, client_id,
                                  client_seed(cfg.seed, round_number, client_id))
            if client_id in scores:
                update.metrics["score_seconds"] = score_seconds[client_id]
            updates.append(update)
            records.append(client_record(update, plans[client_id], scores.get(client_id)))
            progress.update(task, advance=1, description=f"client {client_id} loss {update.metrics['loss']:.3f}")
        self.state, strategy_metrics = self.strategy.aggregate(round_number, self.state, updates)
        return records, strategy_metrics

    def score_clients(self, round_number: int, clients: list[int]) -> tuple[dict[int, dict], dict[int, float]]:
        """Run the strategy's IG-Score requests on the clients and hand it the scores."""
        requests = self.strategy.score_request(round_number, clients)
        scores, seconds = {}, {}
        for client_id, units in requests.items():
            started = time.perf_counter()
            micro_batch = self.strategy.context.scoring_micro_batch(client_id, units)
            scores[client_id] = score_client(
                self.federation.model, self.federation.unit_map, self.state, units,
                self.federation.client_data[client_id], self.federation.settings,
                self.config.strategy.ig_examples, micro_batch, client_seed(self.config.seed, round_number, client_id))
            seconds[client_id] = time.perf_counter() - started
        if requests:
            self.strategy.receive_scores(round_number, scores)
        return scores, seconds

    def run(self) -> dict[str, Any]:
        """All rounds; returns the summary (also written to summary.json)."""
        cfg = self.config
        started = time.perf_counter()
        rounds: list[dict[str, Any]] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            round_task = progress.add_task("rounds", total=cfg.train.rounds)
            client_task = progress.add_task("clients", total=cfg.clients.per_round)
            for round_number in range(1, cfg.train.rounds + 1):
                round_start = time.perf_counter()
                clients, strategy_metrics = self.train_round(round_number, progress, client_task)
                record = {"round": round_number, "clients": clients, "strategy": strategy_metrics}
                if round_number % cfg.eval.every == 0 or round_number == cfg.train.rounds:
                    result = evaluate_global(self.federation, self.state, cfg)
                    record.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
                record.update(round_seconds=time.perf_counter() - round_start,
                              wall_seconds=time.perf_counter() - started)
                self.recorder.log_round(record)
                rounds.append(record)
                accuracy = record.get("test_accuracy")
                shown = f"acc {accuracy:.3f}" if accuracy is not None else ""
                progress.update(round_task, advance=1, description=f"round {round_number} {shown}")
        summary = summarize(rounds, time.perf_counter() - started)
        self.recorder.write_summary(summary)
        return summary


def run_local(config: Config, console: Console | None = None) -> tuple[Path, dict[str, Any]]:
    """Build the federation, then make the run directory and run every round in this process.

    The directory is created only once data and model loaded, so a bad input leaves none behind.
    """
    console = console or Console()
    federation = build_federation(config)
    run_dir = fresh_run_dir(config.output.dir, config.run_name())
    recorder = RunRecorder(run_dir, config)
    return run_dir, LocalRun(config, federation, recorder, console).run()
