"""The command line answers fast and explains itself: help without heavy imports, `fedpilot config`, presets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from conftest import csv_with_empty_rows
from fedpilot.cli import app, plural
from fedpilot.config import load_config

runner = CliRunner()
SRC = str(Path(__file__).resolve().parent.parent / "src")
HEAVY = ("torch", "transformers", "datasets", "flwr", "peft")
HELP_PROBE = """
import sys
from typer.testing import CliRunner
from fedpilot.cli import app
commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
for args in [["--help"]] + [[name, "--help"] for name in commands]:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print(len(commands), sorted(m for m in sys.modules if m.split(".")[0] in {heavy}))
"""


def python(code_or_args: list[str], cwd: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run the interpreter on the worktree's source; (wall seconds, result)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, cwd=cwd)
    return time.perf_counter() - started, result


def test_help_answers_in_about_a_second():
    python(["-m", "fedpilot.cli", "--help"])  # warm the file cache
    seconds, result = python(["-m", "fedpilot.cli", "--help"])
    assert result.returncode == 0 and "plan" in result.stdout
    assert seconds < 2.5, f"fedpilot --help took {seconds:.1f} s (goal: under 1 s; slack for a loaded machine)"


def test_every_help_page_imports_no_heavy_library():
    _, result = python(["-c", HELP_PROBE.format(heavy=set(HEAVY))])
    assert result.returncode == 0, result.stderr
    count, imported = result.stdout.strip().split(" ", 1)
    assert int(count) >= 8 and imported == "[]"


def test_config_prints_every_field_with_type_default_and_description():
    result = runner.invoke(app, ["config"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for text in ("clients.unaffordable", "error|exclude", "clients.groups[].memory", "train.lr", "0.003",
                 "AdamW learning rate", "seed"):
        assert text in result.output


def test_config_resolved_applies_presets_by_name_from_any_directory(tmp_path):
    args = ["config", "--resolved", "--config", "hetero", "--set", "lora.targets=query,key",
            "--set", "clients.groups.0.memory=6GiB"]
    _, result = python(["-m", "fedpilot.cli", *args], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    tree = yaml.safe_load(result.stdout)
    assert tree["strategy"]["name"] == "fedpilot" and tree["lora"]["targets"] == ["query", "key"]
    assert [g["memory"] for g in tree["clients"]["groups"]] == ["6GiB", "80%", "100%"]


def test_list_overrides_comma_form_and_one_item_of_a_default_list():
    config = load_config(None, ["lora.targets=query,value,key", "clients.groups.0.upload=2MiB"])
    assert config.lora.targets == ["query", "value", "key"]
    assert config.clients.groups[0].upload == "2MiB" and config.clients.groups[0].memory == "100%"
    assert load_config(None, ["lora.targets=[query]"]).lora.targets == ["query"]


def test_bad_overrides_say_what_to_do():
    typo = runner.invoke(app, ["config", "--set", "train.lrr=1"])
    assert typo.exit_code == 2 and "train.lrr: unknown key; did you mean lr?" in typo.output
    index = runner.invoke(app, ["config", "--set", "clients.groups.2.memory=1GiB"], terminal_width=200)
    assert index.exit_code == 2 and "set the whole list, e.g. clients.groups=[" in index.output
    missing = runner.invoke(app, ["config", "--config", "nope"], terminal_width=200)
    assert missing.exit_code == 2 and "shipped presets: default, hetero" in missing.output


def test_preset_files_in_configs_are_the_shipped_ones():
    root = Path(__file__).resolve().parent.parent
    assert load_config(root / "configs" / "hetero.yaml") == load_config("hetero")
    assert load_config(root / "configs" / "default.yaml") == load_config("default") == load_config()


def test_plural():
    assert (plural(1, "round"), plural(2, "round"), plural(0, "client")) == ("1 round", "2 rounds", "0 clients")


def test_data_stats_tells_the_rows_dropped_for_an_empty_text_or_label(tmp_path):
    csv_with_empty_rows(tmp_path / "reviews.csv")
    result = runner.invoke(app, ["data-stats", "--set", f"data.name={tmp_path / 'reviews.csv'}",
                                 "--set", "clients.num_clients=3", "--set", "clients.per_round=3"])
    assert result.exit_code == 0, result.output
    assert ("data: reviews.csv (all): dropped 4 of 40 rows: 3 with an empty text, 2 with an empty label"
            in " ".join(result.output.split()))
