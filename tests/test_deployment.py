"""The deployment engine on loopback with SuperNodes that hold their own CSV files next to one that
takes its partition of the server's data, and over TLS with SuperNode authentication
(`scripts/flower_local_deployment.sh [--secure]`). The tiny 2-block encoder of conftest keeps each
run to a few process starts."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import headless_bert

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "flower_local_deployment.sh"
WORDS = {"sport": "goal match team score coach league player win".split(),
         "finance": "stock market bank price trade fund money loan".split(),
         "weather": "rain snow wind storm cloud sunny cold warm".split()}
LABELS = list(WORDS)


def examples(count: int, labels: list[str], seed: int) -> list[tuple[str, str]]:
    """`count` texts of six words of their label's vocabulary, labels taken in turn."""
    rng = random.Random(seed)
    return [(" ".join(rng.choices(WORDS[label], k=6)), label) for label in (labels[i % len(labels)]
                                                                           for i in range(count))]


def write_csv(path: Path, rows: list[tuple[str, str]], columns: tuple[str, str] = ("text", "label")) -> Path:
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def federation_files(tmp_path_factory) -> Path:
    """The tiny model, the server's train/test files, three node files (one lacks `weather`, one holds 4
    examples, one uses other column names), a file with an unknown label, and the run's config."""
    root = tmp_path_factory.mktemp("private")
    headless_bert(root / "base")
    write_csv(root / "server-train.csv", examples(30, LABELS, 1))
    write_csv(root / "server-test.csv", examples(60, LABELS, 2))
    write_csv(root / "node0.csv", examples(60, LABELS, 3))
    write_csv(root / "node1.csv", examples(40, ["sport", "finance"], 4), ("body", "topic"))
    write_csv(root / "node2.csv", examples(4, LABELS, 5))
    write_csv(root / "bad.csv", [*examples(5, LABELS, 6), ("vote ballot senate", "politics")])
    (root / "run.yaml").write_text(f"""\
model: {{path: "{root / 'base'}", max_length: 16}}
data: {{name: "{root / 'server-train.csv'}", test_path: "{root / 'server-test.csv'}", val_fraction: 0,
        labels: {LABELS}}}
clients: {{num_clients: 4, per_round: 4}}
train: {{rounds: 2, local_steps: 8, batch_size: 8, lr: 0.05}}
eval: {{every: 1, final_full: false}}
""")
    return root


NODES = {"NODE_CONFIG_0": 'data-path="{root}/node0.csv" memory="1GiB"',
         "NODE_CONFIG_1": 'data-path="{root}/node1.csv" text-column="body" label-column="topic" upload="10MiB"',
         "NODE_CONFIG_2": 'data-path="{root}/node2.csv"',
         "NODE_CONFIG_3": ""}  # no data-path: its partition of the server's training file


def deploy(root: Path, work: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run the loopback script on the run's config with the three node files; (process, seconds)."""
    nodes = {key: value.format(root=root) for key, value in NODES.items()}
    settings = {**os.environ, **nodes, "CONFIG_FILE": str(root / "run.yaml"), "WORK_DIR": str(work),
                "FEDERATED_EVAL": "false", "NUM_NODES": str(len(NODES)), **env}
    started = time.monotonic()
    done = subprocess.run([str(SCRIPT), *args], cwd=REPO, env=settings, capture_output=True, text=True, timeout=600)
    return done, time.monotonic() - started


def run_of(work: Path) -> tuple[dict, list[dict], dict]:
    """(summary, round records, node reports) of a deployment's run directory."""
    run = work / "runs" / "deployment"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run / "summary.json").read_text()), rounds, json.loads((run / "nodes.json").read_text())


@pytest.fixture(scope="module")
def insecure(federation_files, tmp_path_factory) -> Path:
    """The work folder of an insecure loopback run of the four nodes (three with their own files), federated
    eval on."""
    work = tmp_path_factory.mktemp("insecure")
    done, seconds = deploy(federation_files, work, FEDERATED_EVAL="true")
    print(f"insecure private-data deployment: {seconds:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "deployment run OK: 2 rounds" in done.stdout
    return work


@pytest.mark.slow
def test_nodes_train_on_their_own_files_report_them_and_learn(insecure):
    summary, rounds, nodes = run_of(insecure)
    reports = {node["partition"]: node for node in nodes["nodes"]}
    assert nodes["label_names"] == LABELS
    assert [(r["examples"], r["label_counts"], r["data"]) for r in list(reports.values())[:3]] == [
        (60, [20, 20, 20], "own"), (40, [20, 20, 0], "own"), (4, [2, 1, 1], "own")]
    shared = reports[3]  # a quarter of the server's 30 training rows
    assert shared["data"] == "partition" and shared["examples"] == sum(shared["label_counts"]) in (7, 8)
    assert reports[0]["budget_bytes"] == 2**30 and reports[1]["upload_limit_bytes"] == 10 * 2**20
    trained = {c["id"]: c for c in rounds[0]["clients"]}
    assert {i: trained[i]["examples"] for i in trained} == {0: 60, 1: 40, 2: 4, 3: shared["examples"]}
    assert trained[0]["budget_bytes"] == 2**30
    assert summary["final_accuracy"] >= summary["test_majority_rate"] + 0.2, summary
    losses = [sum(c["loss"] for c in r["clients"]) / len(r["clients"]) for r in rounds]
    assert losses[1] < losses[0]
    assert "client_accuracy" in rounds[-1]  # federated evaluation on the nodes' own files


@pytest.mark.slow
def test_a_node_with_a_label_outside_the_agreed_set_is_refused_before_training(federation_files, tmp_path):
    done, seconds = deploy(federation_files, tmp_path, "clients.num_clients=1", "clients.per_round=1", NUM_NODES="1",
                           NODE_CONFIG_0=f'data-path="{federation_files}/bad.csv"')
    print(f"refused node: {seconds:.0f} s")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "holds label 'politics', which is not among the run's labels" in output, output[-3000:]
    assert not (tmp_path / "runs" / "deployment" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_secure_run_matches_the_insecure_one_and_refuses_unknown_nodes(federation_files, insecure, tmp_path):
    done, seconds = deploy(federation_files, tmp_path, "--secure", UNREGISTERED_NODES="1", WRONG_CA_NODES="1")
    print(f"secure deployment: {seconds:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (secure, secure_rounds, _), (plain, plain_rounds, _) = run_of(tmp_path), run_of(insecure)
    assert len(secure_rounds) == 2
    assert secure["final_accuracy"] == plain["final_accuracy"]
    assert [c["loss"] for c in secure_rounds[-1]["clients"]] == pytest.approx(
        [c["loss"] for c in plain_rounds[-1]["clients"]], rel=1e-6)
    unregistered, other_ca = len(NODES), len(NODES) + 1  # the extra nodes' logs follow the run's nodes
    assert "Failed to activate SuperNode" in (tmp_path / f"supernode{unregistered}.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / f"supernode{other_ca}.log").read_text()
    assert "No SuperNode found with the given public key" in (tmp_path / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1" in (tmp_path / "superlink.log").read_text()
