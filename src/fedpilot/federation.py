"""Build everything a run needs from its config: tokenized client data, test set, LoRA model, units.

Both engines call `build_federation`, so the same config and seed give the same clients, data and
initial adapters wherever the rounds run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from torch import nn

from fedpilot.assign.budgets import ClientBudget, client_budgets
from fedpilot.client import TrainSettings
from fedpilot.config import Config
from fedpilot.data.partition import partition
from fedpilot.data.sources import DataError, DroppedRows, TextData, agree_labels, load_text_data
from fedpilot.data.tokenize import tokenize
from fedpilot.memory.cost import CostProfile
from fedpilot.memory.profiler import profile
from fedpilot.models.inputs import forward_inputs
from fedpilot.models.loading import ModelError, add_lora, load_classifier, load_tokenizer, resolve_model_path
from fedpilot.models.units import UnitMap, adapter_state, units_at


PROFILE_MODE = {"fp32": {"dtype": "fp32", "device": "meta"}, "bf16": {"dtype": "amp-bf16", "device": "cpu"}}
"""How to profile each training precision: bf16 training is fp32 weights under autocast, which
only a CPU run reproduces (torch has no autocast on the meta device)."""


@dataclass
class Federation:
    """The model, its units, the per-client data and the evaluation set of one run."""

    model: nn.Module
    unit_map: UnitMap
    client_data: list[Dataset]
    test_data: Dataset
    val_data: Dataset | None
    label_names: list[str]
    settings: TrainSettings
    profile: CostProfile
    budgets: list[ClientBudget]
    full_test_data: Dataset | None = None
    """The whole test split (tokenized) for the final evaluation; None when `eval.final_full` is off."""
    test_majority_rate: float = 0.0
    """Share of the most common label in the whole test split (what always guessing it scores)."""
    dropped_rows: tuple[DroppedRows, ...] = ()
    """Data files that had rows with an empty text or label, left out (with counts per reason)."""

    @property
    def excluded(self) -> list[int]:
        """Ids of the clients left out for a memory budget below the head-only cost."""
        return [client for client, budget in enumerate(self.budgets) if budget.excluded]

    @property
    def client_sizes(self) -> list[int]:
        """Training examples per client (aggregation weights)."""
        return [len(d) for d in self.client_data]

    def initial_state(self) -> dict:
        """Global adapters and head before round 1."""
        return adapter_state(self.model, self.unit_map)

    def unit_upload(self) -> tuple[int, ...]:
        """Bytes of each unit's LoRA tensors, as sent from client to server."""
        params = dict(self.model.named_parameters())
        return tuple(sum(params[k].numel() * params[k].element_size() for k in unit.lora_keys)
                     for unit in self.unit_map.units)


def subset(data: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of at most `limit` examples (all when None)."""
    if limit is None or limit >= len(data):
        return data
    return data.shuffle(seed=seed).select(range(limit))


def hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(what clients may hold, a seeded stratified validation split of `fraction`); no split at 0.

    Raises DataError when the split would leave a part empty.
    """
    if fraction == 0:
        return train, None
    size = round(fraction * len(train))
    if not 0 < size < len(train):
        raise DataError(f"data.val_fraction={fraction} of {len(train)} training examples leaves an empty part")
    labels = train.features["label"].num_classes
    stratify = "label" if min(size, len(train) - size) >= labels else None
    split = train.train_test_split(test_size=size, seed=seed, stratify_by_column=stratify)
    return split["train"], split["test"]


def load_partitions(config: Config) -> tuple[TextData, list[Dataset], Dataset | None]:
    """The configured dataset, its per-client training partitions and its validation split (untokenized)."""
    text = load_text_data(config.data.name, config.data.text_column, config.data.label_column,
                          config.data.test_path, config.data.test_fraction, config.seed)
    if config.data.labels is not None:
        text = agree_labels(text, config.data.labels)
    train = subset(text.train, config.data.max_train_examples, config.seed)
    train, val = hold_out(train, config.data.val_fraction, config.seed)
    parts = partition(train, config.partition.kind, config.clients.num_clients, config.seed,
                      config.partition.alpha, config.partition.classes_per_client)
    return text, parts, val


def build_federation(config: Config) -> Federation:
    """Load data and model, partition, tokenize, wrap with LoRA, discover units."""
    text, parts, val = load_partitions(config)
    cost, budgets = profile_budgets(config, len(text.label_names))
    tokenizer = load_tokenizer(config.model.path)
    model = lora_model(config, len(text.label_names), tokenizer.pad_token_id)
    inputs, length = forward_inputs(model), config.model.max_length
    client_data = [tokenize(part, tokenizer, length, inputs) for part in parts]
    test = tokenize(subset(text.test, config.eval.max_examples, config.seed), tokenizer, length, inputs)
    if val is not None:
        val = tokenize(subset(val, config.eval.max_examples, config.seed), tokenizer, length, inputs)
    full_test = tokenize(text.test, tokenizer, length, inputs) if config.eval.final_full else None
    unit_map = units_at(model, config.lora.granularity)
    if len(unit_map.units) != cost.num_units:
        raise ModelError(f"the model has {len(unit_map.units)} {config.lora.granularity} units but its cost profile "
                         f"{cost.num_units}; check lora.targets and lora.granularity")
    return Federation(model, unit_map, client_data, test, val, text.label_names, train_settings(config),
                      cost, budgets, full_test, majority_rate(text.test), text.dropped)


def node_federation(config: Config, data: Dataset, client_id: int,
                    dropped: tuple[DroppedRows, ...] = ()) -> Federation:
    """A SuperNode's federation over its own (untokenized) data, with labels `config.data.labels`, and
    the rows its file dropped (`dropped_rows`).

    It holds no test or validation data and no other client's data: `client_data` has the node's
    data at `client_id` and an empty dataset at every other id.
    """
    labels = list(config.data.labels or [])
    cost, budgets = profile_budgets(config, len(labels))
    tokenizer = load_tokenizer(config.model.path)
    model = lora_model(config, len(labels), tokenizer.pad_token_id)
    own = tokenize(data, tokenizer, config.model.max_length, forward_inputs(model))
    empty = own.select([])
    client_data = [own if client == client_id else empty for client in range(config.clients.num_clients)]
    return Federation(model, units_at(model, config.lora.granularity), client_data, empty, None, labels,
                      train_settings(config), cost, budgets, dropped_rows=dropped)


def lora_model(config: Config, num_labels: int, pad_token_id: int | None) -> nn.Module:
    """The configured classifier with LoRA adapters, on the training device (initialised from `seed`)."""
    model = load_classifier(config.model.path, num_labels, config.seed, pad_token_id)
    lora = config.lora
    return add_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets).to(config.train.device)


def train_settings(config: Config) -> TrainSettings:
    """The training settings every client uses, from `config.train`."""
    train = config.train
    return TrainSettings(train.batch_size, train.lr, train.weight_decay, train.precision, train.device)


def majority_rate(data: Dataset) -> float:
    """Share of the most common label of a dataset (0-1)."""
    return float(np.bincount(np.asarray(data["label"])).max() / len(data))


def profile_budgets(config: Config, num_labels: int) -> tuple[CostProfile, list[ClientBudget]]:
    """The run's cost profile and every client's budget, checked against it (before the model loads).

    Raises `BudgetError` for a group below the head-only cost unless `clients.unaffordable=exclude`.
    """
    lora, train_cfg = config.lora, config.train
    cost = profile(str(resolve_model_path(config.model.path)), train_cfg.batch_size, config.model.max_length,
                   rank=lora.rank, targets=lora.targets, num_labels=num_labels, granularity=lora.granularity,
                   **PROFILE_MODE[train_cfg.precision])
    groups = [(g.share, g.memory, g.upload) for g in config.clients.groups]
    return cost, client_budgets(groups, config.clients.num_clients, cost, config.clients.unaffordable)


def sample_clients(num_clients: int, per_round: int, seed: int, round_number: int,
                   excluded: Sequence[int] = ()) -> list[int]:
    """This round's clients, drawn from (seed, round) alone so every method sees the same ones.

    Excluded clients are never drawn: the draw is over the others (at most all of them), in id order.
    """
    skip = set(excluded)
    pool = [client for client in range(num_clients) if client not in skip]
    rng = np.random.default_rng([seed, round_number])
    drawn = rng.choice(len(pool), size=min(per_round, len(pool)), replace=False)
    return sorted(pool[int(i)] for i in drawn)
