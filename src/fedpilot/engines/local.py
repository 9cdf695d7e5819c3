"""The in-process engine, and the server's and client's sides of a round shared with the Flower engine.

`RoundServer` makes every server decision of a round: sample, IG-Score requests, plans,
aggregation, evaluation, records, checkpoints. `attempt_client` and `score_units` are a client's
side. `LocalRun` calls them in one process; `engines.flower` calls the same ones across Flower
messages. Every client's randomness comes from (seed, round, client), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedpilot.client import (BudgetExceeded, ClientUpdate, Plan, ScoreSettings, evaluate, score_client, tensor_bytes,
                             train_client)
from fedpilot.config import Config
from fedpilot.federation import Federation, build_federation, sample_clients
from fedpilot.models.units import UnitMap, load_adapter_state
from fedpilot.report.budget_table import budget_table
from fedpilot.report.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from fedpilot.report.export import write_run_model
from fedpilot.report.run_plots import plot_run_accuracy, plot_units
from fedpilot.report.tensorboard import RoundBoard
from fedpilot.report.records import RunRecorder, fresh_run_dir, read_rounds, summarize
from fedpilot.strategies import StrategyContext, make_strategy
from fedpilot.strategies.base import State, Strategy

Outcome = ClientUpdate | dict[str, str]
"""A client's reply to a plan: its update, or {"failed": reason} / {"over_budget": reason}."""


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
    """Test accuracy and loss of the global adapters, and validation ones when the run holds a validation split.

    Keys: test_accuracy, test_loss (and val_accuracy, val_loss).
    """
    load_adapter_state(federation.model, state)
    splits = {"test": federation.test_data, "val": federation.val_data}
    result = {}
    for split, data in splits.items():
        if data is not None:
            metrics = evaluate(federation.model, data, config.eval.batch_size, config.train.precision,
                               config.train.device)
            result.update({f"{split}_{key}": value for key, value in metrics.items()})
    return result


def split_state(unit_map: UnitMap, state: State, units: tuple[int, ...]) -> tuple[State, State]:
    """A plan's view of the global tensors: (its units' LoRA tensors + head, every other unit's LoRA).

    The client trains the first part; it needs the second frozen, since untrained adapters still
    shape its forward pass.
    """
    trained = set(unit_map.keys_of(units)) | set(unit_map.head_keys)
    return ({k: v for k, v in state.items() if k in trained}, {k: v for k, v in state.items() if k not in trained})


def state_bytes(state: State) -> int:
    """Bytes of a tensor dict's elements, as counted for traffic (no framing)."""
    return tensor_bytes(state.values())


def client_record(update: ClientUpdate, plan: Plan, scores: dict[int, tuple[float, ...]] | None) -> dict[str, Any]:
    """The per-client part of a round record: plan (with each unit's LoRA rank when below full), budget,
    estimate, scores and training metrics."""
    ranks = {} if plan.ranks is None else {"ranks": list(plan.ranks)}
    return {"id": update.client_id, "examples": update.num_examples, "units": list(plan.units), **ranks,
            "budget_bytes": plan.budget_bytes, "estimated_bytes": plan.estimated_bytes,
            "upload_bytes": plan.upload_bytes, "scores": scores, **update.metrics}


def attempt_client(config: Config, federation: Federation, state: State, round_number: int, client_id: int,
                   plan: Plan, seed: int) -> Outcome:
    """A client's side of a round: train the plan from `state`; a failure comes back as its reason."""
    try:
        if injected_failure(config, round_number, client_id):
            raise InjectedFailure(f"injected failure (clients.failure_rate={config.clients.failure_rate})")
        return train_client(federation.model, federation.unit_map, state, plan, federation.client_data[client_id],
                            federation.settings, client_id, seed, federation.profile.peak_of(plan.units))
    except BudgetExceeded as error:
        return {"over_budget": str(error)}
    except Exception as error:  # noqa: BLE001 - any client crash (incl. out-of-memory) is data
        return {"failed": f"{type(error).__name__}: {error}"}


def score_settings(config: Config) -> ScoreSettings:
    """How clients score units, from the run config."""
    options = config.strategy
    return ScoreSettings(options.ig_examples, config.rank_options(), options.score,
                         options.score_estimate == "unbiased", config.lora.alpha / config.lora.rank,
                         config.train.local_steps)


def score_units(config: Config, federation: Federation, state: State, client_id: int, units: tuple[int, ...],
                micro_batch: int, seed: int) -> tuple[dict[int, tuple[float, ...]], float]:
    """A client's side of an IG-Score request: local scores of `units` (one per rank option), and the seconds
    they took."""
    started = time.perf_counter()
    scores = score_client(federation.model, federation.unit_map, state, units, federation.client_data[client_id],
                          federation.settings, score_settings(config), micro_batch, seed)
    return scores, time.perf_counter() - started


@dataclass
class Round:
    """One round's server decisions so far: sampled clients, IG-Score requests and replies, plans."""

    number: int
    clients: list[int]
    requests: dict[int, tuple[int, ...]]
    started: float = field(default_factory=time.perf_counter)
    scores: dict[int, dict[int, tuple[float, ...]]] = field(default_factory=dict)
    score_seconds: dict[int, float] = field(default_factory=dict)
    plans: dict[int, Plan] = field(default_factory=dict)


class RoundServer:
    """The server of a run, whichever engine carries its messages: strategy, global state, records."""

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
        self.started, self.offset = time.perf_counter(), 0.0
        units = len(federation.unit_map.units)
        self.board = RoundBoard(recorder.run_dir / "tb", units) if config.output.tensorboard else None

    def resume(self) -> None:
        """Continue after the last checkpointed round; records of later rounds are dropped."""
        checkpoint = load_checkpoint(self.recorder.run_dir)
        self.state = {**self.state, **checkpoint.global_state}
        self.strategy.restore(checkpoint.strategy_tensors, checkpoint.strategy_meta)
        restore_rng(checkpoint.rng, checkpoint.rng["torch"])
        self.rounds = [r for r in read_rounds(self.recorder.run_dir) if r["round"] <= checkpoint.round_number]
        self.recorder.rewrite_rounds(self.rounds)

    def start_clock(self) -> None:
        """Time the remaining rounds, continuing the wall time of rounds already run."""
        self.started = time.perf_counter()
        self.offset = self.rounds[-1]["wall_seconds"] if self.rounds else 0.0

    def remaining_rounds(self) -> range:
        """Numbers of the rounds still to run."""
        return range(len(self.rounds) + 1, self.config.train.rounds + 1)

    def open_round(self, round_number: int) -> Round:
        """Sample the round's clients (from seed and round only) and take the strategy's IG-Score requests."""
        cfg = self.config
        clients = sample_clients(cfg.clients.num_clients, cfg.clients.per_round, cfg.seed, round_number,
                                 self.federation.excluded)
        return Round(round_number, clients, self.strategy.score_request(round_number, clients))

    def seed(self, current: Round, client_id: int) -> int:
        """The seed of a client's scoring and training this round."""
        return client_seed(self.config.seed, current.number, client_id)

    def micro_batch(self, current: Round, client_id: int) -> int:
        """Micro-batch at which a client's IG-Score request fits its budget."""
        return self.strategy.context.scoring_micro_batch(client_id, current.requests[client_id])

    def assign(self, current: Round) -> None:
        """Hand the strategy the clients' scores (when it asked for any), then take its plans."""
        if current.requests:
            self.strategy.receive_scores(current.number, current.scores)
        current.plans = self.strategy.assign(current.number, current.clients)

    def payload(self, plan: Plan) -> tuple[State, State]:
        """The global tensors a client gets with its plan: (to train, to keep frozen)."""
        return split_state(self.federation.unit_map, self.state, plan.units)

    def download_bytes(self, current: Round, client_id: int) -> int:
        """Bytes of tensors sent to a client this round: the global state to score, and again to train."""
        return state_bytes(self.state) * ((client_id in current.requests) + (client_id in current.plans))

    def conclude(self, current: Round, outcomes: dict[int, Outcome]) -> dict[str, Any]:
        """The round's record: every sampled client's record, then the strategy's aggregate of the survivors.

        A sampled client without a plan is one the strategy left out for its budget. A round in
        which no client survives keeps the global state and says so.
        """
        records, updates = [], []
        for client_id in current.clients:
            record, update = self.describe(current, client_id, outcomes.get(client_id))
            records.append(record)
            updates += [update] if update is not None else []
        if not current.plans:
            self.console.print(f"[yellow]round {current.number}: no sampled client qualified for "
                               f"{self.config.strategy.name}; global model unchanged[/]")
            strategy_metrics: dict[str, Any] = {"skipped": "no qualifying clients"}
        elif not updates:
            self.console.print(f"[yellow]round {current.number}: no client survived; global model unchanged[/]")
            strategy_metrics = {"skipped": "no surviving clients"}
        else:
            self.state, strategy_metrics = self.strategy.aggregate(current.number, self.state, updates)
        excluded = {"excluded": self.federation.excluded} if self.federation.excluded else {}
        return {"round": current.number, "clients": records, "strategy": strategy_metrics, **excluded}

    def describe(self, current: Round, client_id: int,
                 outcome: Outcome | None) -> tuple[dict[str, Any], ClientUpdate | None]:
        """One client's record with its traffic, and its update if it survived; failures are never swallowed."""
        plan = current.plans.get(client_id)
        traffic: dict[str, Any] = {"download_bytes": self.download_bytes(current, client_id), "sent_bytes": 0}
        if client_id in current.score_seconds:
            traffic["score_seconds"] = current.score_seconds[client_id]
        if plan is None:  # a skipped client exchanged tensors only if it was asked to score
            return {"id": client_id, "skipped": "budget", **(traffic if client_id in current.requests else {})}, None
        if isinstance(outcome, ClientUpdate):
            traffic["sent_bytes"] = state_bytes(outcome.tensors)
            return {**client_record(outcome, plan, current.scores.get(client_id)), **traffic}, outcome
        reason = (outcome or {"failed": "no reply"}).copy()
        if "over_budget" in reason:
            if self.config.clients.on_over_budget == "fail":
                raise OverBudgetError(f"round {current.number}, client {client_id}: {reason['over_budget']}")
            reason = {"dropped": f"over budget: {reason['over_budget']}"}
        else:
            self.console.print(f"[yellow]round {current.number}: client {client_id} failed: {reason['failed']}[/]")
        return {"id": client_id, "units": list(plan.units), **reason, **traffic}, None

    def evaluation_due(self, round_number: int) -> bool:
        """Whether the global model is evaluated after this round."""
        return round_number % self.config.eval.every == 0 or round_number == self.config.train.rounds

    def finish_round(self, record: dict[str, Any], current: Round) -> None:
        """Evaluate when due, then log the round and checkpoint it."""
        if self.evaluation_due(current.number):
            record.update(evaluate_global(self.federation, self.state, self.config))
        record.update(round_seconds=time.perf_counter() - current.started,
                      wall_seconds=self.offset + time.perf_counter() - self.started)
        self.recorder.log_round(record)
        if self.board is not None:
            self.board.log_round(record)
        self.rounds.append(record)
        save_checkpoint(self.recorder.run_dir, current.number, self.state, *self.strategy.state())

    def final_evaluation(self, trained: bool) -> dict[str, Any]:
        """Summary fields of the last global model on the whole test split, the size of the per-round test set
        and the split's majority-class rate.

        `*_full` fields are None when `eval.final_full` is off or no client ever trained; when the per-round
        set already is the whole split, the last round's numbers are reused.
        """
        federation, cfg = self.federation, self.config
        full, last = federation.full_test_data, self.rounds[-1] if self.rounds else {}
        fields: dict[str, Any] = {"round_test_examples": len(federation.test_data),
                                  "test_majority_rate": federation.test_majority_rate, "test_examples_full": None,
                                  "final_test_accuracy_full": None, "final_test_loss_full": None}
        if full is None or not trained:
            return fields
        if len(full) == len(federation.test_data) and last.get("test_accuracy") is not None:
            metrics = {"accuracy": last["test_accuracy"], "loss": last["test_loss"]}
        else:
            self.console.print(f"evaluating the final model on the whole test split ({len(full)} examples)")
            load_adapter_state(federation.model, self.state)
            metrics = evaluate(federation.model, full, cfg.eval.batch_size, cfg.train.precision, cfg.train.device)
        return {**fields, "test_examples_full": len(full), "final_test_accuracy_full": metrics["accuracy"],
                "final_test_loss_full": metrics["loss"]}

    def finish(self) -> dict[str, Any]:
        """Evaluate on the whole test split, write the run's model (`model/`), figures and TensorBoard log, then
        its summary (summary.json, last: it marks the run finished); returns the summary."""
        summary = summarize(self.rounds, self.offset + time.perf_counter() - self.started)
        summary.update(self.final_evaluation(summary["trained_client_rounds"] > 0),
                       label_names=self.federation.label_names)
        run_dir = self.recorder.run_dir
        last_round = self.rounds[-1]["round"] if self.rounds else 0
        write_run_model(run_dir, self.config, self.state, self.federation.label_names, last_round)
        plot_run_accuracy(self.rounds, self.federation.test_majority_rate, run_dir / "accuracy.png")
        plot_units(self.rounds, run_dir / "units.png")
        if self.board is not None:
            self.board.close()
        self.recorder.write_summary(summary)
        return summary


class LocalRun(RoundServer):
    """The local engine: each round's clients score and train one after another in this process."""

    def play_round(self, round_number: int, progress: Progress, task: Any) -> dict[str, Any]:
        """Score, assign, train each sampled client, aggregate, evaluate, log; returns the round record."""
        cfg, federation = self.config, self.federation
        current = self.open_round(round_number)
        for client_id, units in current.requests.items():
            current.scores[client_id], current.score_seconds[client_id] = score_units(
                cfg, federation, self.state, client_id, units, self.micro_batch(current, client_id),
                self.seed(current, client_id))
        self.assign(current)
        progress.reset(task, total=len(current.plans))
        outcomes: dict[int, Outcome] = {}
        for client_id, plan in current.plans.items():
            progress.update(task, description=f"client {client_id}")
            outcomes[client_id] = attempt_client(cfg, federation, self.state, round_number, client_id, plan,
                                                 self.seed(current, client_id))
            outcome = outcomes[client_id]
            loss = f" loss {outcome.metrics['loss']:.3f}" if isinstance(outcome, ClientUpdate) else ""
            progress.update(task, advance=1, description=f"client {client_id}{loss}")
        record = self.conclude(current, outcomes)
        self.finish_round(record, current)
        return record

    def run(self) -> dict[str, Any]:
        """The remaining rounds; returns the summary (also written to summary.json)."""
        self.start_clock()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            round_task = progress.add_task("rounds", total=self.config.train.rounds, completed=len(self.rounds))
            client_task = progress.add_task("clients", total=self.config.clients.per_round)
            for round_number in self.remaining_rounds():
                accuracy = self.play_round(round_number, progress, client_task).get("test_accuracy")
                shown = f"acc {accuracy:.3f}" if accuracy is not None else ""
                progress.update(round_task, advance=1, description=f"round {round_number} {shown}")
        return self.finish()


def show_budgets(config: Config, federation: Federation, console: Console) -> None:
    """Print each client group's budgets and reach, a warning per group that trains the head only,
    and the excluded clients."""
    table, warnings = budget_table(config, federation.profile, federation.budgets, federation.unit_upload())
    console.print(table)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if federation.excluded:
        console.print(f"[yellow]excluded clients[/] (clients.unaffordable=exclude): {federation.excluded}",
                      highlight=False)


def run_local(config: Config, console: Console | None = None) -> tuple[Path, dict[str, Any]]:
    """Build the federation, then make the run directory and run every round in this process.

    The directory is created only once data and model loaded, so a bad input leaves none behind.
    """
    console = console or Console()
    federation = build_federation(config)
    show_budgets(config, federation, console)
    run_dir = fresh_run_dir(config.output.dir, config.run_name())
    recorder = RunRecorder(run_dir, config)
    return run_dir, LocalRun(config, federation, recorder, console).run()


def resume_local(run_dir: Path, config: Config, console: Console | None = None) -> dict[str, Any]:
    """Continue an interrupted run in `run_dir` from its last checkpoint (the config must match)."""
    console = console or Console()
    federation = build_federation(config)
    show_budgets(config, federation, console)
    run = LocalRun(config, federation, RunRecorder(run_dir, config), console)
    run.resume()
    return run.run()
