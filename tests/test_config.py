"""Config loading, overrides, and errors that name the field (exit code 2 from the CLI)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedpilot.cli import app
from fedpilot.config import ConfigError, dump_config, load_config

runner = CliRunner()


def test_defaults_are_the_documented_main_job():
    config = load_config()
    assert (config.model.path, config.data.name, config.strategy.name) == ("minilm", "20newsgroups", "fedavg-full")
    assert (config.clients.num_clients, config.clients.per_round, config.partition.kind) == (10, 5, "iid")
    assert config.lora.targets is None  # the architecture's defaults, models/targets.py


def test_yaml_preset_and_overrides_with_typed_values(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  lr: 0.01\n  rounds: 3\npartition:\n  kind: dirichlet\n")
    config = load_config(preset, ["train.lr=1e-4", "partition.alpha=0.1", "lora.targets=[query]"])
    assert config.train.lr == 1e-4 and config.train.rounds == 3
    assert (config.partition.kind, config.partition.alpha) == ("dirichlet", 0.1)
    assert config.lora.targets == ["query"]
    assert load_config(preset) != config
    assert "dirichlet" in dump_config(config)


def test_an_unknown_strategy_is_a_config_error_naming_the_field():
    from fedpilot.strategies import check_strategy

    config = load_config(None, ["strategy.name=fedsomething"])
    with pytest.raises(ConfigError, match=r"strategy.name: unknown strategy 'fedsomething'; valid: \['exclusive'"):
        check_strategy(config)


def test_config_does_not_import_the_strategies():
    import subprocess
    import sys

    code = "import sys, fedpilot.config; print('fedpilot.strategies' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_rank_options_default_to_the_full_rank_and_must_fit_the_lora_rank():
    assert load_config(None, ["lora.rank=8"]).rank_options() == (8,)
    assert load_config(None, ["lora.rank=8", "strategy.ranks=[2, 4, 8]"]).rank_options() == (2, 4, 8)
    assert load_config(None, ["lora.rank=8", "strategy.ranks=[8, 4, 4]"]).rank_options() == (4, 8)
    with pytest.raises(ConfigError, match=r"strategy.ranks \[16\] must be non-empty ranks in 1..lora.rank \(8\)"):
        load_config(None, ["lora.rank=8", "strategy.ranks=[16]"])


@pytest.mark.parametrize(("override", "message"), [
    ("train.lrr=1", "train.lrr: unknown key"),
    ("train.lr=fast", "train.lr: Input should be a valid number"),
    ("data.name=mnist-typo", "unknown dataset 'mnist-typo'; packaged: ['20newsgroups', 'reuters-r8', 'rotten-tomatoes']"),
    ("partition.alpha=0", "partition.alpha: Input should be greater than 0"),
    ("lora.rank=0", "lora.rank: Input should be greater than 0"),
    ("clients.per_round=20", "per_round (20) exceeds num_clients (10)"),
    ("model.path=/nonexistent", "model folder '/nonexistent' does not exist"),
    ("data.name=/nonexistent.csv", "dataset file '/nonexistent.csv' does not exist"),
    ("train.precision=fp8", "train.precision: Input should be 'fp32' or 'bf16'"),
    ("noequals", "must look like section.field=value"),
])
def test_bad_values_are_config_errors_naming_the_field(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_model_folder_without_config_json(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        load_config(None, [f"model.path={tmp_path}"])


def test_cli_exits_2_with_the_message_and_leaves_no_run_directory(tmp_path):
    result = runner.invoke(app, ["run", "--set", "train.lrr=1", "--set", f"output.dir={tmp_path}"])
    assert result.exit_code == 2
    assert "train.lrr: unknown key" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_a_missing_config_file():
    result = runner.invoke(app, ["run", "--config", "no/such.yaml"])
    assert result.exit_code == 2
    assert "config file 'no/such.yaml' does not exist" in result.output


def test_default_preset_spells_out_the_embedded_defaults():
    from pathlib import Path

    preset = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
    assert load_config(preset) == load_config()
