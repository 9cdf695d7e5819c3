"""The model of a run: PEFT adapter folder at the end of a run, `fedpilot export`, reload in a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fedpilot.cli import app
from fedpilot.federation import build_federation
from fedpilot.models.units import load_adapter_state
from fedpilot.report.checkpoint import load_checkpoint


def server_logits(config, run_dir, examples: int = 32) -> tuple[dict, torch.Tensor]:
    """Inputs of the first test examples and the logits of the server's final global model on them."""
    federation = build_federation(config)
    load_adapter_state(federation.model, load_checkpoint(run_dir).global_state)
    batch = federation.test_data[:examples]
    inputs = {k: v for k, v in batch.items() if k != "label"}
    with torch.no_grad():
        return inputs, federation.model.eval()(**inputs).logits


RELOAD = textwrap.dedent("""
    import sys, warnings
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForSequenceClassification
    base_folder, model_dir, inputs, out = sys.argv[1:]
    base = AutoModelForSequenceClassification.from_pretrained(base_folder, config=AutoConfig.from_pretrained(model_dir))
    print("--- peft load ---", file=sys.stderr, flush=True)
    warnings.simplefilter("always")
    model = PeftModel.from_pretrained(base, model_dir).eval()
    save_file({"logits": model(**load_file(inputs)).logits.detach().contiguous()}, out)
""")


def test_a_finished_run_reloads_in_plain_peft_with_the_servers_logits(finished_run, tmp_path):
    config, run_dir = finished_run
    model_dir = run_dir / "model"
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert "classifier" in adapter["modules_to_save"] and adapter["r"] == config.lora.rank
    labels = json.loads((model_dir / "config.json").read_text())["id2label"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert labels["0"] == summary["label_names"][0] == "alt.atheism" and len(labels) == 20
    inputs, expected = server_logits(config, run_dir)
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    done = subprocess.run([sys.executable, "-c", RELOAD, adapter["base_model_name_or_path"], str(model_dir),
                           str(tmp_path / "inputs.safetensors"), str(tmp_path / "logits.safetensors")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after_base = done.stderr.split("--- peft load ---")[1]
    assert "newly initialized" not in after_base and "missing" not in after_base.lower(), after_base
    torch.testing.assert_close(load_file(tmp_path / "logits.safetensors")["logits"], expected, atol=1e-5, rtol=0)


MERGED = textwrap.dedent("""
    import sys
    sys.modules["peft"] = None  # the merged folder must load without PEFT
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification
    folder, inputs, out = sys.argv[1:]
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    save_file({"logits": model(**load_file(inputs)).logits.detach().contiguous()}, out)
""")


def test_export_rebuilds_the_model_folder_from_the_checkpoint(finished_run, tmp_path):
    _, run_dir = finished_run
    copy = tmp_path / "old-run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("model"))
    result = CliRunner().invoke(app, ["export", str(copy)])
    assert result.exit_code == 0, result.output
    rebuilt = load_file(copy / "model" / "adapter_model.safetensors")
    original = load_file(run_dir / "model" / "adapter_model.safetensors")
    assert rebuilt.keys() == original.keys() and all(torch.equal(rebuilt[k], original[k]) for k in original)
    assert json.loads((copy / "model" / "fedpilot.json").read_text())["round"] == 2


def test_export_merged_loads_without_peft_and_gives_the_servers_logits(finished_run, tmp_path):
    config, run_dir = finished_run
    result = CliRunner().invoke(app, ["export", str(run_dir), "--merged", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    inputs, expected = server_logits(config, run_dir)
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    done = subprocess.run([sys.executable, "-c", MERGED, str(tmp_path / "merged"), str(tmp_path / "inputs.safetensors"),
                           str(tmp_path / "logits.safetensors")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(load_file(tmp_path / "logits.safetensors")["logits"], expected, atol=1e-5, rtol=0)


def test_export_of_a_directory_without_model_or_checkpoint_is_a_user_error(finished_run, tmp_path):
    _, run_dir = finished_run
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    for args in (["export", str(bare)], ["export", str(bare), "--merged", str(tmp_path / "m")],
                 ["export", str(tmp_path / "nothing")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    assert "no model/ and no checkpoint/" in " ".join(CliRunner().invoke(app, ["export", str(bare)]).output.split())
