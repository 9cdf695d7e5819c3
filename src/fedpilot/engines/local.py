"""The in-process engine: each round's clients score and train one after another in this process.

`LocalRun` is the run's `RoundServer` (engines/server.py) with the round loop added: it calls the
client side (`engines.client_round`) directly instead of sending messages, so the Flower engine
and this one share every server decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedpilot.client import ClientUpdate
from fedpilot.config import Config
from fedpilot.engines.client_round import Outcome, attempt_client, score_units
from fedpilot.engines.server import RoundServer, show_setup
from fedpilot.federation import build_federation
from fedpilot.report.records import RunRecorder, fresh_run_dir


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


def run_local(config: Config, console: Console | None = None) -> tuple[Path, dict[str, Any]]:
    """Build the federation, then make the run directory and run every round in this process.

    The directory is created only once data and model loaded, so a bad input leaves none behind.
    """
    console = console or Console()
    federation = build_federation(config)
    show_setup(config, federation, console)
    run_dir = fresh_run_dir(config.output.dir, config.run_name())
    recorder = RunRecorder(run_dir, config)
    return run_dir, LocalRun(config, federation, recorder, console).run()


def resume_local(run_dir: Path, config: Config, console: Console | None = None) -> dict[str, Any]:
    """Continue an interrupted run in `run_dir` from its last checkpoint (the config must match)."""
    console = console or Console()
    federation = build_federation(config)
    show_setup(config, federation, console)
    run = LocalRun(config, federation, RunRecorder(run_dir, config), console)
    run.resume()
    return run.run()
