"""A SuperNode's own data (node config data-path), the agreed label set, and each node's report before
round 1 (data size, label histogram, declared budgets)."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # flwr reads it once, when imported

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import headless_bert
from flwr.app import Context, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpilot.assign.budgets import ClientBudget
from fedpilot.config import ConfigError, dump_config, load_config
from fedpilot.data.node_data import NodeData, label_counts, load_node_data, node_config_tree, node_data_of
from fedpilot.data.sources import DataError, TextData, agree_labels, to_datasets
from fedpilot.engines.flower import FlowerEngineError, instruction, take_reports
from fedpilot.engines.flower_client import client_app
from fedpilot.engines.node_report import (NodeReport, check_report, declared_budgets, declared_memory, decode_report,
                                          describe_dropped, encode_report, node_report)
from fedpilot.memory.cost import BudgetError, CostProfile, MiB
from fedpilot.memory.gpus import GPU_RESERVE_FIXED

LABELS = ["sport", "finance", "weather"]
N = 4
PROFILE = CostProfile(model="synthetic", batch=16, length=64, dtype="fp32", rank=8, targets=("query", "value"),
                      frozen=100 * MiB, head=4 * MiB, head_path=1 * MiB, peak=2 * MiB, state=(3 * MiB,) * N,
                      path=tuple((N - k) * 100 * MiB for k in range(N)), lora=(1 * MiB,) * N,
                      head_path_per_example=0.0, peak_per_example=0.0, path_per_example=(0.0,) * N,
                      lora_per_example=(0.0,) * N)
"""fixed_mem (head only) = 107 MiB; every unit = 107 + 400 + 4 * 4 = 523 MiB."""


def write_csv(path, rows: list[tuple[str, str]], text="text", label="label"):
    pd.DataFrame(rows, columns=[text, label]).to_csv(path, index=False)
    return path


def test_node_config_names_own_data_or_none():
    assert node_data_of({"partition-id": 0}) is None
    assert node_data_of({"data-path": "/srv/a.csv", "text-column": "body"}) == NodeData("/srv/a.csv", "body", "label")
    with pytest.raises(DataError, match="sets label-column without data-path"):
        node_data_of({"label-column": "y"})
    with pytest.raises(DataError, match="must be a .csv or .parquet file"):
        node_data_of({"data-path": "/srv/a.txt"})


def test_node_data_uses_the_agreed_label_order_and_names_an_unknown_label(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("goal", "weather"), ("stocks", "sport"), ("rain", "weather")],
                     "body", "topic")
    data, dropped = load_node_data(NodeData(str(path), "body", "topic"), LABELS)
    assert dropped.dropped == 0
    assert data["label"] == [2, 0, 2] and data.features["label"].names == LABELS
    assert label_counts(data["label"], 3) == [1, 0, 2]
    bad = write_csv(tmp_path / "b.csv", [("goal", "sport"), ("odd", "politics")])
    with pytest.raises(DataError, match=r"node data .*b\.csv holds label 'politics', which is not among the run's "
                                        r"labels \(data.labels\)"):
        load_node_data(NodeData(str(bad)), LABELS)
    with pytest.raises(DataError, match="label column 'topic' not in b.csv"):
        load_node_data(NodeData(str(bad), "text", "topic"), LABELS)


def test_a_node_sees_its_own_file_as_the_data_and_needs_the_label_list(tmp_path):
    own = NodeData(str(tmp_path / "mine.csv"), "body", "y")
    tree = {"data": {"name": "/server/only.csv", "test_path": "/server/test.csv", "labels": LABELS}, "seed": 3}
    seen = node_config_tree(tree, own)
    assert seen["data"] == {"name": own.path, "test_path": None, "text_column": "body", "label_column": "y",
                            "labels": LABELS}
    assert seen["seed"] == 3 and tree["data"]["name"] == "/server/only.csv"
    with pytest.raises(DataError, match="does not list the run's labels; set data.labels"):
        node_config_tree({"data": {"name": "20newsgroups"}}, own)


def test_server_data_takes_the_agreed_label_indexes():
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["weather", "sport", "weather"]})
    text = to_datasets(frame, frame)
    assert text.label_names == ["sport", "weather"]
    agreed = agree_labels(text, LABELS)
    assert agreed.label_names == LABELS and agreed.train["label"] == [2, 0, 2]
    assert agreed.test.features["label"].names == LABELS
    with pytest.raises(DataError, match="the server's dataset \\(data.name\\) holds label 'weather'"):
        agree_labels(text, ["sport", "finance"])
    assert isinstance(agreed, TextData)


def test_labels_config_takes_a_comma_list_and_refuses_repeats():
    assert load_config(None, ["data.labels=sport,finance"]).data.labels == ["sport", "finance"]
    with pytest.raises(ConfigError, match="data.labels: label names repeat"):
        load_config(None, ["data.labels=[a, a]"])


def test_report_round_trips_and_is_checked():
    report = NodeReport(2, 5, [3, 0, 2], "own", "64MiB", None, dropped_rows=4)
    assert decode_report(encode_report(report)) == report
    assert node_report({"upload": "1MiB", "data-path": "x.csv"}, 1, [1, 1], True) == \
        NodeReport(1, 2, [1, 1], "own", None, "1MiB")
    check_report(report, 3)
    with pytest.raises(ValueError, match="reported 2 label counts for 3 labels"):
        check_report(NodeReport(2, 5, [3, 2], "own"), 3)
    with pytest.raises(ValueError, match="reported 6 examples with label counts"):
        check_report(NodeReport(2, 6, [3, 0, 2], "own"), 3)


def test_memory_auto_reads_the_cuda_device_or_refuses(monkeypatch):
    assert declared_memory("rtx3060-12g") == "rtx3060-12g"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BudgetError, match="memory=auto needs a CUDA device"):
        declared_memory("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: SimpleNamespace(total_memory=12 * 2**30))
    assert GPU_RESERVE_FIXED == 768 * MiB
    assert declared_memory("AUTO") == "11435350425"  # 12 GiB - 0.75 GiB - 5 % of 12 GiB, floored


def test_declared_budgets_replace_the_group_assignment_of_that_node_only():
    config = load_config(None, ["clients.num_clients=4", "clients.per_round=4",
                                "clients.groups=[{share: 0.5, memory: '300MiB', upload: '2MiB'}, {share: 0.5}]"])
    groups = [ClientBudget(0, 300 * MiB, 2 * MiB)] * 2 + [ClientBudget(1, 523 * MiB, None)] * 2
    reports = {0: NodeReport(0, 9, [9], "own", "200MiB"), 1: NodeReport(1, 9, [9], "own"),
               3: NodeReport(3, 9, [9], "own", None, "1MiB")}
    budgets = declared_budgets(config, groups, reports, PROFILE)
    assert budgets == [ClientBudget(0, 200 * MiB, 2 * MiB), groups[1], groups[2], ClientBudget(1, 523 * MiB, MiB)]
    with pytest.raises(BudgetError, match=r"node-config\[partition-id=0\].memory: .*below the minimum"):
        declared_budgets(config, groups, {0: NodeReport(0, 9, [9], "own", "50MiB")}, PROFILE)
    excluding = load_config(None, ["clients.num_clients=4", "clients.per_round=4", "clients.unaffordable=exclude"])
    assert declared_budgets(excluding, groups, {2: NodeReport(2, 9, [9], "own", "50MiB")}, PROFILE)[2].excluded


def test_server_takes_sizes_and_budgets_from_the_reports():
    config = load_config(None, ["clients.num_clients=2", "clients.per_round=2"])
    federation = SimpleNamespace(label_names=LABELS, profile=PROFILE, budgets=[ClientBudget(0, 523 * MiB, None)] * 2)
    reports = {1: NodeReport(1, 4, [4, 0, 0], "own", "300MiB"), 0: NodeReport(0, 7, [1, 2, 4], "partition")}
    sizes = take_reports(config, federation, reports, SimpleNamespace(print=lambda *a, **k: None))
    assert sizes == {0: 7, 1: 4}
    assert federation.budgets[1] == ClientBudget(0, 300 * MiB, None)
    with pytest.raises(FlowerEngineError, match="partition-id 0 reported 2 label counts for 3 labels"):
        take_reports(config, federation, {0: NodeReport(0, 2, [1, 1], "own")}, None)


@pytest.fixture
def task_identity(monkeypatch):
    """Let messages be built outside a running Flower app (flwr 1.42 requires a task identity)."""
    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value)


def test_client_app_reports_its_own_data_and_refuses_an_unknown_label(tmp_path, task_identity):
    headless_bert(tmp_path / "base")
    server = write_csv(tmp_path / "server.csv", [(f"text {i}", LABELS[i % 3]) for i in range(30)])
    config = load_config(None, [f"model.path={tmp_path / 'base'}", f"data.name={server}", "data.val_fraction=0",
                                "clients.num_clients=2", "clients.per_round=2", "model.max_length=16",
                                f"data.labels={','.join(LABELS)}", f"output.dir={tmp_path}"])
    text = dump_config(config)
    server.unlink()  # the node never reads the server's files
    mine = write_csv(tmp_path / "mine.csv", [("goal", "sport"), ("rain", "weather"), ("", "sport"), ("sun", "weather")])
    node = Context(run_id=1, node_id=101, state=RecordDict(), run_config={},
                   node_config={"partition-id": 1, "data-path": str(mine), "memory": "200MiB"})
    reply = client_app(instruction(101, f"{MessageType.QUERY}.partition", text), node)
    assert reply.content["partition"]["partition-id"] == 1
    report = decode_report(reply.content["report"])
    assert report == NodeReport(1, 3, [1, 0, 2], "own", "200MiB", None, dropped_rows=1)
    assert describe_dropped({1: report, 0: NodeReport(0, 2, [1, 1], "own")}) == [
        "partition 1: its node left out 1 row of its file (empty text or label)"]
    bad = write_csv(tmp_path / "bad.csv", [("goal", "sport"), ("vote", "politics")])
    node.node_config["data-path"] = str(bad)
    with pytest.raises(DataError, match="holds label 'politics'"):
        client_app(instruction(101, f"{MessageType.QUERY}.partition", text), node)
