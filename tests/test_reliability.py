"""Reliability: resume after SIGKILL, failing clients, the budget guard, and a catalogue of bad inputs."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fedpilot.cli import app
from fedpilot.config import load_config
from fedpilot.engines.local import LocalRun, run_local
from fedpilot.engines.server import OverBudgetError
from fedpilot.federation import build_federation
from fedpilot.report.records import RunRecorder, fresh_run_dir, read_rounds

runner = CliRunner()
SMALL = ["data.max_train_examples=400", "clients.num_clients=4", "clients.per_round=3", "eval.max_examples=60",
         "eval.final_full=false", "model.max_length=32", "train.local_steps=2", "train.batch_size=8"]


def without_times(value):
    """A round record with wall-clock fields removed, for exact comparison."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if "seconds" not in k}
    return [without_times(v) for v in value] if isinstance(value, list) else value


def cli_run(log: Path, *args: str) -> subprocess.Popen:
    """`fedpilot run` in a child process (so it can be killed for real), its output in `log`."""
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, "-m", "fedpilot.cli", "run", *args], stdout=handle,
                                stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_matches_the_uninterrupted_run(tmp_path):
    sets = [*SMALL, "strategy.name=fedpilot", "train.rounds=3", "train.local_steps=6", "train.batch_size=16",
            "model.max_length=64", f"output.dir={tmp_path}"]
    args = [a for s in sets for a in ("--set", s)] + ["--config", "configs/hetero.yaml"]
    log = tmp_path / "log.txt"
    whole = cli_run(log, *args, "--set", "output.name=whole")
    assert whole.wait(timeout=600) == 0, log.read_text()
    killed = cli_run(log, *args, "--set", "output.name=killed")
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and len(read_rounds(tmp_path / "killed")) >= 1) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()
    resumed = cli_run(log, "--resume", str(tmp_path / "killed"))
    assert resumed.wait(timeout=600) == 0, log.read_text()
    assert without_times(read_rounds(tmp_path / "killed")) == without_times(read_rounds(tmp_path / "whole"))
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed_summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert resumed_summary["final_accuracy"] == whole_summary["final_accuracy"]


def test_failing_clients_are_logged_and_survivors_aggregated(tmp_path):
    config = load_config(None, [*SMALL, "train.rounds=3", "clients.failure_rate=0.3", f"output.dir={tmp_path}"])
    run_dir, summary = run_local(config, Console(quiet=True))
    rounds = read_rounds(run_dir)
    records = [c for r in rounds for c in r["clients"]]
    failed = [c for c in records if "failed" in c]
    assert len(records) == 9 and len(rounds) == 3
    assert failed and all("InjectedFailure" in c["failed"] for c in failed)
    assert all("loss" in c for c in records if "failed" not in c)
    assert summary["final_accuracy"] is not None


def test_a_round_without_survivors_is_skipped_with_the_model_unchanged(tmp_path):
    config = load_config(None, [*SMALL, "train.rounds=1", "clients.failure_rate=0.999", f"output.dir={tmp_path}"])
    run_dir, _ = run_local(config, Console(quiet=True))
    record = read_rounds(run_dir)[0]
    assert record["strategy"] == {"skipped": "no surviving clients"}
    assert all("failed" in c for c in record["clients"])


def underestimating_run(tmp_path, policy: str) -> LocalRun:
    """A fedpilot run whose cost profile claims activations cost a tenth of what they do."""
    config = load_config(None, [*SMALL, "train.rounds=1", "strategy.name=fedpilot", f"output.dir={tmp_path}",
                                "clients.groups=[{share: 1.0, memory: '85%'}]", f"clients.on_over_budget={policy}"])
    federation = build_federation(config)
    cheap = dataclasses.replace(federation.profile, path=tuple(p // 10 for p in federation.profile.path), head_peak=None)
    federation.profile = cheap
    run_dir = fresh_run_dir(config.output.dir, config.run_name())
    return LocalRun(config, federation, RunRecorder(run_dir, config), Console(quiet=True))


def test_budget_guard_stops_a_client_over_its_measured_budget(tmp_path):
    with pytest.raises(OverBudgetError, match="exceed the budget"):
        underestimating_run(tmp_path, "fail").run()


def test_budget_guard_can_drop_the_update_instead(tmp_path):
    run = underestimating_run(tmp_path, "drop")
    run.run()
    clients = read_rounds(run.recorder.run_dir)[0]["clients"]
    assert clients and all("over budget" in c["dropped"] for c in clients)


def test_counted_memory_matches_the_estimate_and_stays_in_budget(tmp_path):
    config = load_config("configs/hetero.yaml", [*SMALL, "train.rounds=1", "train.batch_size=16",
                                                 "model.max_length=64", f"output.dir={tmp_path}"])
    run_dir, _ = run_local(config, Console(quiet=True))
    for client in read_rounds(run_dir)[0]["clients"]:
        assert "measured_bytes" not in client and "cuda_peak_bytes" not in client  # CPU: no allocator peak
        assert client["saved_tensor_bytes"] <= client["budget_bytes"]
        assert abs(client["saved_tensor_bytes"] - client["estimated_bytes"]) <= 0.02 * client["estimated_bytes"]


def write_csv(path: Path, frame: dict) -> str:
    pd.DataFrame(frame).to_csv(path, index=False)
    return str(path)


def bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(extra CLI arguments, expected message) for inputs a user gets wrong."""
    no_label = write_csv(tmp_path / "nolabel.csv", {"text": ["a", "b"], "y": [0, 1]})
    tiny = write_csv(tmp_path / "tiny.csv", {"text": [f"t{i}" for i in range(10)], "label": [0, 1] * 5})
    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    return [
        (["--set", "train.lrr=1"], "train.lrr: unknown key"),
        (["--set", "train.rounds=many"], "train.rounds: Input should be a valid integer"),
        (["--set", "strategy.name=fedfoo"], "unknown strategy 'fedfoo'; valid: ["),
        (["--set", "data.name=imagenet"], "unknown dataset 'imagenet'; packaged: ["),
        (["--set", "model.path=/no/such/model"], "model folder '/no/such/model' does not exist"),
        (["--set", f"model.path={empty_model}"], "has no config.json"),
        (["--set", "data.name=/no/such.csv"], "dataset file '/no/such.csv' does not exist"),
        (["--set", f"data.name={no_label}"], "label column 'label' not in nolabel.csv"),
        (["--set", "partition.kind=dirichlet", "--set", "partition.alpha=0"], "partition.alpha: Input should be greater than 0"),
        (["--set", f"data.name={tiny}", "--set", "clients.num_clients=9", "--set", "clients.per_round=2"],
         "exceeds the 7 training examples clients can hold"),
        (["--set", "partition.kind=dirichlet", "--set", "partition.alpha=0.01", "--set", "clients.num_clients=100"],
         "partition.alpha=0.01 is too skewed for clients.num_clients=100 over 360 training examples"),
        (["--set", "partition.kind=pathological", "--set", "partition.classes_per_client=21"],
         "classes_per_client=21 exceeds the dataset's 20 labels"),
        (["--set", "lora.rank=0"], "lora.rank: Input should be greater than 0"),
        (["--set", "lora.targets=query,q_lin"], "['q_lin'] not found in BertForSequenceClassification; its Linear "
                                               "layers (leaf name, count) are: query (6), key (6), value (6), dense (19)"),
        (["--set", "clients.groups=[{memory: '12 parsecs'}]"], "cannot parse budget '12 parsecs'"),
        (["--set", "clients.groups=[{memory: '1MiB'}]"], "is below the minimum of"),
        (["--set", "clients.groups=[{memory: 'gtx-9000'}]"], "unknown GPU name 'gtx-9000'; did you mean gtx1060-6g?"),
        (["--set", "clients.groups=[{share: 0.5}]"], "group shares must sum to 1"),
        (["--set", "clients.groups=[{upload: 'fast'}]"], "cannot parse upload budget 'fast'"),
    ]


def test_bad_inputs_exit_2_with_a_clear_message_and_no_run_directory(tmp_path):
    runs = tmp_path / "runs"
    for extra, message in bad_inputs(tmp_path):
        result = runner.invoke(app, ["run", "--set", f"output.dir={runs}", "--set", "data.max_train_examples=400", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)
        assert "Traceback" not in result.output and "Warning" not in result.output
        assert not runs.exists() or list(runs.iterdir()) == [], extra


def finished_small_run(tmp_path) -> Path:
    config = load_config(None, [*SMALL, "train.rounds=2", f"output.dir={tmp_path}", "output.name=r"])
    run_dir, _ = run_local(config, Console(quiet=True))
    (run_dir / "summary.json").unlink()
    return run_dir


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path):
    run_dir = finished_small_run(tmp_path)
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--set", "train.lr=0.1", "--set", "seed=3"])
    assert result.exit_code == 2
    assert "differing keys" in result.output and "train.lr: 0.003 -> 0.1" in result.output
    assert "seed: 0 -> 3" in result.output


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    run_dir = finished_small_run(tmp_path)
    (run_dir / "checkpoint" / "adapters.safetensors").write_bytes(b"not a safetensors file")
    result = runner.invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2
    assert "unreadable" in result.output


def test_resume_of_a_finished_run_is_refused(tmp_path):
    config = load_config(None, [*SMALL, "train.rounds=1", f"output.dir={tmp_path}"])
    run_dir, _ = run_local(config, Console(quiet=True))
    result = runner.invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and "is complete" in result.output


def test_cli_stops_an_over_budget_run_with_exit_1_and_no_traceback(tmp_path, monkeypatch):
    def over_budget(*args, **kwargs):
        raise OverBudgetError("round 1, client 0: measured 2 bytes exceed the budget of 1")

    monkeypatch.setattr("fedpilot.engines.local.run_local", over_budget)
    result = runner.invoke(app, ["run", "--set", f"output.dir={tmp_path}"])
    assert result.exit_code == 1
    assert "run stopped: round 1, client 0: measured 2 bytes exceed the budget of 1" in " ".join(result.output.split())
    assert "Traceback" not in result.output
