"""The server of a run, whichever engine carries its messages: every server decision of a round.

`RoundServer` samples, requests IG-Scores, plans, checks every reply against its plan
(`aggregate/validate.py`), aggregates, checks the new global state, evaluates, records and
checkpoints. `engines.local.LocalRun` calls it in one process with `engines.client_round` for the
clients; `engines.flower` calls the same methods from Flower messages. Every client's randomness
comes from (seed, round, client), so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

from fedpilot.aggregate.validate import UpdateLimits, names, nonfinite_keys, screen_updates
from fedpilot.client import ClientUpdate, Plan, evaluate, tensor_bytes
from fedpilot.config import Config
from fedpilot.engines.client_round import Outcome
from fedpilot.federation import Federation, sample_clients
from fedpilot.models.units import UnitMap, load_adapter_state
from fedpilot.report.budget_table import budget_table
from fedpilot.report.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from fedpilot.report.export import write_run_model
from fedpilot.report.records import RunRecorder, read_rounds, summarize
from fedpilot.report.run_plots import plot_run_accuracy, plot_units
from fedpilot.report.tensorboard import RoundBoard
from fedpilot.strategies import StrategyContext, make_strategy
from fedpilot.strategies.base import State, Strategy

KEPT_ON_REJECTION = ("id", "units", "ranks", "budget_bytes", "download_bytes", "sent_bytes", "score_seconds")
"""Fields of a client's record kept when its reply is refused (its training metrics are dropped)."""


class RunStopped(RuntimeError):
    """The run cannot go on; the checkpoint of the last complete round is kept."""


class OverBudgetError(RunStopped):
    """A client's measured memory exceeded its budget and `clients.on_over_budget` is `fail`."""


class NonFiniteStateError(RunStopped):
    """The global state after an aggregation holds NaN or infinite values."""


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """Seed of one client's round, from (seed, round, client) only."""
    return (seed * 1_000_003 + round_number * 10_007 + client_id) % (2**31)


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
    estimate, scores and training metrics (as the client sent them, except names the record's own fields use)."""
    ranks = {} if plan.ranks is None else {"ranks": list(plan.ranks)}
    record = {"id": update.client_id, "examples": update.num_examples, "units": list(plan.units), **ranks,
              "budget_bytes": plan.budget_bytes, "estimated_bytes": plan.estimated_bytes,
              "upload_bytes": plan.upload_bytes, "scores": scores}
    return {**record, **{key: value for key, value in update.metrics.items() if key not in record}}


def rejected_record(record: dict[str, Any], reason: str) -> dict[str, Any]:
    """A refused reply's record: who, what it was planned and what it cost, and why it was refused."""
    return {**{key: record[key] for key in KEPT_ON_REJECTION if key in record}, "rejected": reason}


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

    def __init__(self, config: Config, federation: Federation, recorder: RunRecorder, console: Console,
                 client_sizes: dict[int, int] | None = None) -> None:
        self.config = config
        self.federation = federation
        self.recorder = recorder
        self.console = console
        self.client_sizes: dict[int, int] = client_sizes or dict(enumerate(federation.client_sizes))
        """Client id -> the data size the server knows for it (its partition's, or what its node reported
        before round 1), which a reply's `num_examples` must equal."""
        sizes = [self.client_sizes[client] for client in range(config.clients.num_clients)]
        context = StrategyContext(federation.unit_map, sizes, config, federation.profile,
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
        """The round's record: every sampled client's record, then the strategy's aggregate of the replies
        that survived and passed `screen_updates`.

        A sampled client without a plan is one the strategy left out for its budget. A refused reply is
        recorded with its reason (`rejected`) and left out like a failed client. A round in which no
        reply is left keeps the global state and says so. Raises NonFiniteStateError when the
        aggregate holds a NaN or an infinite value (the global state and checkpoint stay as they were).
        """
        described = [self.describe(current, client_id, outcomes.get(client_id)) for client_id in current.clients]
        refused = self.screen(current, [update for _, update in described if update is not None])
        records, updates = [], []
        for record, update in described:
            if update is not None and update.client_id in refused:
                record, update = rejected_record(record, refused[update.client_id]), None
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
            state, strategy_metrics = self.strategy.aggregate(current.number, self.state, updates)
            self.check_finite(current.number, state)
            self.state = state
        excluded = {"excluded": self.federation.excluded} if self.federation.excluded else {}
        return {"round": current.number, "clients": records, "strategy": strategy_metrics, **excluded}

    def screen(self, current: Round, updates: list[ClientUpdate]) -> dict[int, str]:
        """Client id -> why its reply is refused (`aggregate.validate.screen_updates`), each printed."""
        clients = self.config.clients
        limits = UpdateLimits(self.client_sizes, clients.max_examples, clients.max_update_norm_ratio)
        refused = screen_updates(updates, current.plans, self.federation.unit_map, self.state, limits)
        for client_id, reason in sorted(refused.items()):
            self.console.print(f"[yellow]round {current.number}: client {client_id}'s update refused: "
                               f"{escape(reason)}[/]", highlight=False)
        return refused

    def check_finite(self, round_number: int, state: State) -> None:
        """Raise NonFiniteStateError, naming the tensors and the checkpoint kept, unless `state` is finite."""
        bad = nonfinite_keys(state)
        if not bad:
            return
        kept = (f"the checkpoint of round {round_number - 1} in {self.recorder.run_dir} is kept "
                f"(fedpilot run --resume {self.recorder.run_dir})" if round_number > 1 else "no round was completed")
        raise NonFiniteStateError(f"round {round_number}: the aggregated global state holds NaN or infinite values "
                                  f"in {len(bad)} tensors ({names(bad)}); {kept}")

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
                       label_names=self.federation.label_names, unit_names=list(self.federation.unit_map.labels),
                       dropped_rows=[dropped.record() for dropped in self.federation.dropped_rows])
        run_dir = self.recorder.run_dir
        last_round = self.rounds[-1]["round"] if self.rounds else 0
        write_run_model(run_dir, self.config, self.state, self.federation.label_names, last_round)
        plot_run_accuracy(self.rounds, self.federation.test_majority_rate, run_dir / "accuracy.png")
        plot_units(self.rounds, run_dir / "units.png")
        if self.board is not None:
            self.board.close()
        self.recorder.write_summary(summary)
        return summary


def show_setup(config: Config, federation: Federation, console: Console) -> None:
    """Print what a run starts from: the data rows left out for an empty text or label (per file), each client
    group's budgets and reach, a warning per group that trains the head only, and the excluded clients."""
    for dropped in federation.dropped_rows:
        console.print(f"[yellow]data:[/] {dropped.describe()}", highlight=False)
    table, warnings = budget_table(config, federation.profile, federation.budgets, federation.unit_upload(),
                                   federation.unit_map.labels)
    console.print(table)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if federation.excluded:
        console.print(f"[yellow]excluded clients[/] (clients.unaffordable=exclude): {federation.excluded}",
                      highlight=False)


