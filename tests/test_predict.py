"""`fedpilot predict` and `fedpilot evaluate` on a finished run's model, and their user errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedpilot.cli import app
from fedpilot.report.evaluate import classification_metrics
from fedpilot.report.export import load_run_model
from fedpilot.report.predict import class_probabilities


def invoke(*args: str):
    """The CLI's result for these arguments, with its output unwrapped onto one line."""
    result = CliRunner().invoke(app, list(args))
    return result, " ".join(result.output.split())


def test_predict_texts_gives_a_label_name_and_its_probability(finished_run, tmp_path):
    _, run_dir = finished_run
    texts = ["the rocket reached orbit", "god and religion", "my gpu driver crashed"]
    result, _ = invoke("predict", str(run_dir), *[a for t in texts for a in ("--text", t)], "--out",
                       str(tmp_path / "p.csv"))
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "p.csv")
    probabilities = class_probabilities(load_run_model(run_dir), texts, batch_size=2)
    names = json.loads((run_dir / "summary.json").read_text())["label_names"]
    assert rows["text"].tolist() == texts
    assert rows["label"].tolist() == [names[i] for i in probabilities.argmax(-1).tolist()]
    assert rows["probability"].tolist() == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-6)
    assert torch.allclose(probabilities.sum(-1), torch.ones(3))


def test_predict_a_file_in_batches_matches_one_text_at_a_time(finished_run, tmp_path):
    _, run_dir = finished_run
    texts = [f"message number {i} about hockey and baseball" for i in range(70)]
    pd.DataFrame({"body": texts}).to_parquet(tmp_path / "in.parquet")
    result, _ = invoke("predict", str(run_dir), "--file", str(tmp_path / "in.parquet"), "--text-column", "body",
                       "--out", str(tmp_path / "out.csv"), "--batch-size", "32")
    assert result.exit_code == 0, result.output
    single = class_probabilities(load_run_model(run_dir), texts[-2:], batch_size=1).max(-1).values
    assert pd.read_csv(tmp_path / "out.csv")["probability"].tail(2).tolist() == pytest.approx(single.tolist(), abs=1e-5)


def test_predict_input_errors_exit_2_with_one_message(finished_run, tmp_path):
    _, run_dir = finished_run
    pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "wrong.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    pd.DataFrame({"text": []}).to_csv(tmp_path / "header.csv", index=False)
    (tmp_path / "bare").mkdir()
    cases = {("--file", str(tmp_path / "wrong.csv")): "text column 'text' not in wrong.csv",
             ("--file", str(tmp_path / "empty.csv")): "empty.csv is empty",
             ("--file", str(tmp_path / "header.csv")): "header.csv has no rows",
             (): "give either --text"}
    for args, message in cases.items():
        result, output = invoke("predict", str(run_dir), *args)
        assert result.exit_code == 2 and message in output and "Traceback" not in output, output
    result, output = invoke("predict", str(tmp_path / "bare"), "--text", "hi")
    assert result.exit_code == 2 and "not a run directory" in output


def test_classification_metrics_against_a_hand_count():
    metrics = classification_metrics(torch.tensor([0, 0, 1, 2]).numpy(), torch.tensor([0, 1, 1, 1]).numpy(),
                                      ["a", "b", "c"])
    assert metrics["accuracy"] == 0.5
    assert metrics["per_class"]["b"] == {"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1}
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert metrics["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_evaluate_the_runs_validation_split_writes_json_and_confusion_png(finished_run, tmp_path):
    config, run_dir = finished_run
    result, output = invoke("evaluate", str(run_dir), "--split", "val", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "20newsgroups-val.json").read_text())
    assert metrics["examples"] == 30 and len(metrics["per_class"]) == 20  # 10% of 300 training examples
    assert sum(map(sum, metrics["confusion"])) == 30
    assert f"accuracy {metrics['accuracy']:.1%}" in output
    assert (tmp_path / "20newsgroups-val-confusion.png").stat().st_size > 10_000


def test_evaluate_a_labelled_file_and_its_errors(finished_run, tmp_path):
    _, run_dir = finished_run
    names = json.loads((run_dir / "summary.json").read_text())["label_names"]
    pd.DataFrame({"text": ["orbit and shuttle", "a new car", ""], "label": [names[14], names[7], names[7]]}).to_csv(
        tmp_path / "mine.csv", index=False)
    result, output = invoke("evaluate", str(run_dir), "--data", str(tmp_path / "mine.csv"), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "mine.json").read_text())
    assert written["examples"] == 2
    assert "mine.csv (all): dropped 1 of 3 rows: 1 with an empty text" in output.replace("\n", " ")
    assert [(d["rows"], d["empty_text"], d["dropped"]) for d in written["dropped_rows"]] == [(3, 1, 1)]
    pd.DataFrame({"text": ["x"], "label": ["cooking"]}).to_csv(tmp_path / "other.csv", index=False)
    pd.DataFrame({"body": ["x"], "label": ["cooking"]}).to_csv(tmp_path / "nocol.csv", index=False)
    for args, message in {("--data", str(tmp_path / "other.csv")): "labels the model was not trained on",
                          ("--data", str(tmp_path / "nocol.csv")): "text column 'text' not in nocol.csv",
                          ("--split", "train"): "--split 'train'"}.items():
        result, output = invoke("evaluate", str(run_dir), *args)
        assert result.exit_code == 2 and message in output, output
