"""A client's side of a round, whichever engine carries it: train a plan, score units.

`engines.local` calls these in the server's process; `engines.flower_client` calls them in a
SuperNode's ClientApp. A client's failure comes back as data (an `Outcome`), never as an exception.
"""

from __future__ import annotations

import time

import numpy as np

from fedpilot.client import BudgetExceeded, ClientUpdate, Plan, ScoreSettings, score_client, train_client
from fedpilot.config import Config
from fedpilot.federation import Federation
from fedpilot.strategies.base import State

Outcome = ClientUpdate | dict[str, str]
"""A client's reply to a plan: its update, or {"failed": reason} / {"over_budget": reason}."""


class InjectedFailure(RuntimeError):
    """A failure drawn by `clients.failure_rate`, standing in for a crashed or vanished client."""


def injected_failure(config: Config, round_number: int, client_id: int) -> bool:
    """Whether `clients.failure_rate` makes this client fail this round (seeded)."""
    rate = config.clients.failure_rate
    return rate > 0 and np.random.default_rng([config.seed, round_number, client_id, 1]).random() < rate


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
