"""The in-process engine: sampled clients train one after another, the strategy merges, the
global model is evaluated, every round is logged and checkpointed. Deterministic for a config.

Every client's randomness comes from (seed, round, client), so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedpilot.client import BudgetExceeded, ClientUpdate, Plan, evaluate, score_client, train_client
from fedpilot.config import Config
from fedpilot.federation import Federation, build_federation, sample_clients
from fedpilot.models.units import load_adapter_state
from fedpilot.report.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from fedpilot.report.records import RunRecorder, fresh_run_dir, read_rounds, summarize
from fedpilot.strategies import StrategyContext, make_strategy
from fedpilot.strategies.base import State, Strategy


class InjectedFailure(RuntimeError):
    """A failure drawn by `clients.failure_rate`, standing in for a crashed or vanished client."""


class OverBudgetError(RuntimeError):
    """A client's measured memory exceeded its budget and `clients.on_over_budget` is `fail`."""


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """Seed of one client's round, from (seed, round, client) only."""
    return (seed * 1_000_003 + round_number * 10_007 + client_id) % (2**31)


def injected_failure(config: Config, round_number: int, client_id: int) -> bool:
    """Whether `clients.failure_rate` makes this client fail this round (seeded)."""
    rate = config.clients.failure_rate
    return rate > 0 and np.random.default_rng([config.seed, round_number, client_id, 1]).random() < rate


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
        self.rounds: list[dict[str, Any]] = []

    def resume(self) -> None:
        """Continue after the last checkpointed round; records of later rounds are dropped."""
        checkpoint = load_checkpoint(self.recorder.run_dir)
        self.state = {**self.state, **checkpoint.global_state}
        self.strategy.restore(checkpoint.strategy_tensors, checkpoint.strategy_meta)
        restore_rng(checkpoint.rng, checkpoint.rng["torch"])
        self.rounds = [r for r in read_rounds(self.recorder.run_dir) if r["round"] <= checkpoint.round_number]
        self.recorder.rewrite_rounds(self.rounds)

    def train_client(self, round_number: int, client_id: int, plan: Plan) -> ClientUpdate:
        """One client's training; injected failures and the budget guard raise here."""
        if injected_failure(self.config, round_number, client_id):
            raise InjectedFailure(f"injected failure (clients.failure_rate={self.config.clients.failure_rate})")
        return train_client(self.federation.model, self.federation.unit_map, self.state, plan,
                            self.federation.client_data[client_id], self.federation.settings, client_id,
                            client_seed(self.config.seed, round_number, client_id), self.federation.profile.peak)

    def run_client(self, round_number: int, client_id: int, plan: Plan | None,
                   scores: dict[int, float] | None) -> tuple[ClientUpdate | None, dict[str, Any]]:
        """Train one client and describe it; a failure is recorded with its reason, never swallowed."""
        if plan is None:
            return None, {"id": client_id, "skipped": "budget"}
        try:
            update = self.train_client(round_number, client_id, plan)
        except BudgetExceeded as error:
            if self.config.clients.on_over_budget == "fail":
                raise OverBudgetError(f"round {round_number}, client {client_id}: {error}") from None
            return None, {"id": client_id, "units": list(plan.units), "dropped": f"over budget: {error}"}
        except Exception as error:  # noqa: BLE001 - any client crash (incl. out-of-memory) is data
            self.console.print(f"[yellow]round {round_number}: client {client_id} failed: {error}[/]")
            return None, {"id": client_id, "units": list(plan.units), "failed": f"{type(error).__name__}: {error}"}
        return update, client_record(update, plan, scores)

    def train_round(self, round_number: int, progress: Progress, task: Any) -> tuple[list[dict], dict[str, Any]]:
        """Score, assign, train each sampled client, aggregate the survivors; returns the client records.

        A sampled client without a plan is one the strategy left out for its budget. A round in
        which no client survives keeps the global state and says so.
        """
        cfg = self.config
        clients = sample_clients(cfg.clients.num_clients, cfg.clients.per_round, cfg.seed, round_number)
        scores = self.score_clients(round_number, clients)
        plans = self.strategy.assign(round_number, clients)
        progress.reset(task, total=len(clients))
        updates, records = [], []
        for client_id in clients:
            progress.update(task, description=f"client {client_id}")
            update, record = self.run_client(round_number, client_id, plans.get(client_id), scores.get(client_id))
            records.append(record)
            if update is not None:
                updates.append(update)
            loss = f" loss {update.metrics['loss']:.3f}" if update is not None else ""
            progress.update(task, advance=1, description=f"client {client_id}{loss}")
        if not updates and plans:
            self.console.print(f"[yellow]round {round_number}: no client survived; global model unchanged[/]")
            return records, {"skipped": "no surviving clients"}
        self.state, strategy_metrics = self.strategy.aggregate(round_number, self.state, updates)
        return records, strategy_metrics

    def score_clients(self, round_number: int, clients: list[int]) -> dict[int, dict[str, Any]]:
        """Run the strategy's IG-Score requests on the clients and hand it the scores."""
        requests = self.strategy.score_request(round_number, clients)
        scores = {}
        for client_id, units in requests.items():
            micro_batch = self.strategy.context.scoring_micro_batch(client_id, units)
            scores[client_id] = score_client(
                self.federation.model, self.federation.unit_map, self.state, units,
                self.federation.client_data[client_id], self.federation.settings,
                self.config.strategy.ig_examples, micro_batch, client_seed(self.config.seed, round_number, client_id))
        if requests:
            self.strategy.receive_scores(round_number, scores)
        return scores

    def finish_round(self, round_number: int, record: dict[str, Any], round_start: float, offset: float) -> None:
        """Evaluate when due, then log the round and checkpoint it."""
        cfg = self.config
        if round_number % cfg.eval.every == 0 or round_number == cfg.train.rounds:
            result = evaluate_global(self.federation, self.state, cfg)
            record.update(test_accuracy=result["accuracy"], test_loss=result["loss"])
        record.update(round_seconds=time.perf_counter() - round_start,
                      wall_seconds=offset + time.perf_counter() - self.started)
        self.recorder.log_round(record)
        self.rounds.append(record)
        save_checkpoint(self.recorder.run_dir, round_number, self.state, *self.strategy.state())

    def run(self) -> dict[str, Any]:
        """The remaining rounds; returns the summary (also written to summary.json)."""
        cfg = self.config
        self.started = time.perf_counter()
        offset = self.rounds[-1]["wall_seconds"] if self.rounds else 0.0
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            round_task = progress.add_task("rounds", total=cfg.train.rounds, completed=len(self.rounds))
            client_task = progress.add_task("clients", total=cfg.clients.per_round)
            for round_number in range(len(self.rounds) + 1, cfg.train.rounds + 1):
                round_start = time.perf_counter()
                clients, strategy_metrics = self.train_round(round_number, progress, client_task)
                record = {"round": round_number, "clients": clients, "strategy": strategy_metrics}
                self.finish_round(round_number, record, round_start, offset)
                accuracy = record.get("test_accuracy")
                shown = f"acc {accuracy:.3f}" if accuracy is not None else ""
                progress.update(round_task, advance=1, description=f"round {round_number} {shown}")
        summary = summarize(self.rounds, offset + time.perf_counter() - self.started)
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


def resume_local(run_dir: Path, config: Config, console: Console | None = None) -> dict[str, Any]:
    """Continue an interrupted run in `run_dir` from its last checkpoint (the config must match)."""
    console = console or Console()
    federation = build_federation(config)
    run = LocalRun(config, federation, RunRecorder(run_dir, config), console)
    run.resume()
    return run.run()
