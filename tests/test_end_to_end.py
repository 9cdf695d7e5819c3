"""End-to-end runs of the local engine on a small slice of the packaged data and model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from fedpilot.config import load_config
from fedpilot.engines.local import run_local
from fedpilot.federation import build_federation, sample_clients
from fedpilot.report.records import read_rounds


def small_config(tmp_path, name: str, *extra: str):
    """3 clients on 810 of 900 training examples of 20 Newsgroups (90 held out for validation), 300 test examples."""
    return load_config(None, [
        "data.max_train_examples=900", "clients.num_clients=3", "clients.per_round=3", "eval.max_examples=300",
        "eval.final_full=false", "model.max_length=48", f"output.dir={tmp_path}", f"output.name={name}", *extra,
    ])


def test_two_rounds_learn_above_the_majority_rate(tmp_path):
    config = small_config(tmp_path, "learn", "train.rounds=2", "train.local_steps=15", "train.lr=3e-3")
    run_dir, summary = run_local(config, Console(quiet=True))
    labels = np.asarray(build_federation(config).test_data["label"])
    majority = np.bincount(labels).max() / len(labels)
    assert summary["final_accuracy"] > majority + 0.1
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(len(r["clients"]) == 3 and r["clients"][0]["units"] == [0, 1, 2, 3, 4, 5] for r in rounds)
    assert rounds[0]["clients"][0]["examples"] == 270  # 900 minus the 10% validation split, over 3 clients
    assert summary["final_val_accuracy"] == rounds[-1]["val_accuracy"] > majority
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert (run_dir / "config.yaml").read_text().count("max_train_examples: 900") == 1


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    config = small_config(tmp_path, "again", "train.rounds=2", "train.local_steps=2")
    first_dir, first = run_local(config, Console(quiet=True))
    second_dir, second = run_local(config, Console(quiet=True))
    assert second_dir.name == "again-2"

    def without_times(value):
        if isinstance(value, dict):
            return {k: without_times(v) for k, v in value.items() if "seconds" not in k}
        return [without_times(v) for v in value] if isinstance(value, list) else value

    assert without_times(read_rounds(first_dir)) == without_times(read_rounds(second_dir))
    assert first["final_accuracy"] == second["final_accuracy"]


def test_the_validation_split_is_held_by_no_client_and_is_stratified():
    from fedpilot.federation import load_partitions

    config = small_config(None, "split")
    text, parts, val = load_partitions(config)
    assert len(val) == 90 and sum(len(p) for p in parts) == 810
    train_texts = {t for p in parts for t in p["text"]}
    assert not train_texts & set(val["text"])
    assert len(set(val["label"])) == text.train.features["label"].num_classes  # 20 labels, 90 examples
    _, _, none = load_partitions(load_config(None, ["data.max_train_examples=900", "data.val_fraction=0"]))
    assert none is None


def test_client_sampling_depends_only_on_seed_and_round():
    assert sample_clients(10, 5, 0, 3) == sample_clients(10, 5, 0, 3)
    draws = {tuple(sample_clients(10, 5, 0, r)) for r in range(1, 6)}
    assert len(draws) > 1 and all(len(set(d)) == 5 for d in draws)
