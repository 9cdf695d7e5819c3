"""`fedpilot` command line: run, data-stats, strategies. Bad input exits with code 2, no traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedpilot.config import Config, ConfigError, load_config
from fedpilot.data.sources import DataError
from fedpilot.models.loading import ModelError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated LoRA fine-tuning under memory budgets.")
console = Console()
USER_ERRORS = (ConfigError, DataError, ModelError)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML preset (see configs/)")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override, e.g. train.lr=1e-3")]


def fail(message: str) -> None:
    """Print a user error and exit with code 2."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def resolve(config: Path | None, overrides: list[str] | None) -> Config:
    """Load and validate the config, turning errors into a clean exit."""
    try:
        return load_config(config, overrides or [])
    except ConfigError as error:
        fail(str(error))


@app.command()
def run(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Run one federated fine-tuning job and print its results table."""
    from fedpilot.engines.local import run_local
    from fedpilot.report.records import read_rounds
    from fedpilot.report.tables import round_table, summary_table

    cfg = resolve(config, set_)
    console.print(f"[bold]fedpilot[/] {cfg.strategy.name} on {cfg.data.name} ({cfg.partition.kind}), "
                  f"{cfg.clients.num_clients} clients, {cfg.clients.per_round}/round, {cfg.train.rounds} rounds")
    try:
        run_dir, summary = run_local(cfg, console)
    except USER_ERRORS as error:
        fail(str(error))
    console.print(round_table(read_rounds(run_dir)))
    console.print(summary_table(summary, str(run_dir)))


@app.command("data-stats")
def data_stats(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print each client's data size and label histogram for the configured partition."""
    from fedpilot.data.partition import label_histogram, partition
    from fedpilot.data.sources import load_text_data
    from fedpilot.federation import subset
    from fedpilot.report.tables import data_stats_table

    cfg = resolve(config, set_)
    try:
        text = load_text_data(cfg.data.name, cfg.data.text_column, cfg.data.label_column, cfg.data.test_path,
                              cfg.data.test_fraction, cfg.seed)
        train = subset(text.train, cfg.data.max_train_examples, cfg.seed)
        parts = partition(train, cfg.partition.kind, cfg.clients.num_clients, cfg.seed, cfg.partition.alpha,
                          cfg.partition.classes_per_client)
    except USER_ERRORS as error:
        fail(str(error))
    histograms = [label_histogram(p, len(text.label_names)) for p in parts]
    console.print(data_stats_table([len(p) for p in parts], histograms, text.label_names))
    console.print(f"test examples: {len(text.test)}, labels: {len(text.label_names)}")


@app.command()
def strategies() -> None:
    """List the registered methods."""
    from fedpilot.strategies import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        console.print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")


def main() -> None:
    """Console-script entry point; keeps hub lookups off, as nothing is downloaded at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app(prog_name="fedpilot")


if __name__ == "__main__":
    sys.exit(main())
