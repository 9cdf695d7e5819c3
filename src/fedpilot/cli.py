"""`fedpilot` command line: run, export, predict, evaluate, compare, collect, plot, profile, plan, data-stats, config,
strategies.

Each command parses its options and calls one function; bad input exits with code 2, no traceback.
Heavy libraries (torch, transformers, datasets, flwr) are imported inside the commands that use
them, so `--help` answers at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedpilot.config import Config, ConfigError, config_differences, load_config
from fedpilot.memory.cost import BudgetError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated LoRA fine-tuning under memory budgets.")
console = Console()

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file, or a shipped preset "
                                                                             "name: default, hetero")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override, e.g. train.lr=1e-3, "
                                                                         "lora.targets=query,value")]


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that are the user's to fix (exit code 2); imported when an error is being matched."""
    from fedpilot.data.sources import DataError
    from fedpilot.models.loading import ModelError

    return ConfigError, DataError, ModelError, BudgetError


def fail(message: str) -> None:
    """Print a user error and exit with code 2."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def stop_run(error: Exception) -> None:
    """A run that had to stop (a client over its budget with on_over_budget=fail, a non-finite global state):
    message, exit 1."""
    console.print(f"[bold red]run stopped:[/] {error}", highlight=False)
    raise typer.Exit(code=1)


def resolve(config: Path | None, overrides: list[str] | None) -> Config:
    """Load and validate the config (its strategy name included), turning errors into a clean exit."""
    from fedpilot.strategies import check_strategy

    try:
        cfg = load_config(config, overrides or [])
        check_strategy(cfg)
        return cfg
    except ConfigError as error:
        fail(str(error))


ResumeOption = Annotated[Optional[Path], typer.Option("--resume", help="continue the interrupted run in this directory")]


def resume_config(run_dir: Path, config: Path | None, overrides: list[str] | None) -> Config:
    """The saved config of a run to resume; options given as well must not change it."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        fail(f"{run_dir} is not a run directory (no config.yaml)")
    if (run_dir / "summary.json").is_file():
        fail(f"{run_dir} is complete (summary.json exists); nothing to resume")
    saved = resolve(saved_file, None)
    requested = resolve(config or saved_file, overrides)
    changed = config_differences(saved, requested)
    if changed:
        fail("resume with a changed config; differing keys:\n  " + "\n  ".join(changed))
    return saved


EngineOption = Annotated[str, typer.Option("--engine", help="local (in-process) or flower (Flower's simulation "
                                                           "engine, one SuperNode per client; see docs/deployment.md)")]
ENGINES = ("local", "flower")


def run_flower_engine(cfg: Config) -> tuple[Path, dict]:
    """The run on Flower's simulation engine, with Flower's telemetry off (read when flwr is imported)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from fedpilot.engines.flower import run_flower

    return run_flower(cfg, console)


def plural(count: int, noun: str) -> str:
    """`1 round`, `2 rounds`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def run_header(cfg: Config, engine: str) -> str:
    """The first line of a run: strategy (named once), data, clients and rounds, engine."""
    clients = cfg.clients
    return (f"[bold]run[/] {cfg.strategy.name} on {cfg.data.name} ({cfg.partition.kind}): "
            f"{plural(clients.num_clients, 'client')}, {clients.per_round} per round, "
            f"{plural(cfg.train.rounds, 'round')}, {engine} engine")


@app.command()
def run(config: ConfigOption = None, set_: SetOption = None, resume: ResumeOption = None,
        engine: EngineOption = "local") -> None:
    """Run one federated fine-tuning job (or resume one) and print its results table."""
    from fedpilot.engines.local import resume_local, run_local
    from fedpilot.engines.server import RunStopped
    from fedpilot.report.checkpoint import CheckpointError
    from fedpilot.report.records import read_rounds
    from fedpilot.report.tables import round_table, summary_table

    if engine not in ENGINES:
        fail(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if resume is not None and engine != "local":
        fail("--resume continues runs of the local engine only")
    cfg = resume_config(resume, config, set_) if resume is not None else resolve(config, set_)
    console.print(run_header(cfg, engine), highlight=False)
    try:
        if resume is not None:
            run_dir, summary = resume, resume_local(resume, cfg, console)
        elif engine == "flower":
            run_dir, summary = run_flower_engine(cfg)
        else:
            run_dir, summary = run_local(cfg, console)
    except (*user_errors(), CheckpointError) as error:
        fail(str(error))
    except RunStopped as error:
        stop_run(error)
    console.print(round_table(read_rounds(run_dir)))
    console.print(summary_table(summary))
    console.print(f"run directory: {run_dir}", soft_wrap=True, highlight=False)


RunArgument = Annotated[Path, typer.Argument(help="run directory (runs/<name>)")]


def run_errors() -> tuple[type[Exception], ...]:
    """User errors of the commands that read a run directory (imported here: --help stays fast)."""
    from fedpilot.models.export import ExportError
    from fedpilot.report.checkpoint import CheckpointError

    return (*user_errors(), ExportError, CheckpointError)


@app.command()
def export(
    run_dir: RunArgument,
    merged: Annotated[Optional[Path], typer.Option("--merged", help="write a plain Transformers folder (LoRA merged "
                                                                    "into the weights, tokenizer) here instead")] = None,
) -> None:
    """Write a run's model/ (PEFT adapter folder) from its last checkpoint, or a merged Transformers folder."""
    from fedpilot.report.export import export_run

    try:
        console.print(f"wrote {export_run(run_dir, merged)}", highlight=False)
    except run_errors() as error:
        fail(str(error))


def load_run_model(run_dir: Path):
    """The run's model (model/, else its last checkpoint), or a clean exit saying why there is none."""
    from fedpilot.report.export import load_run_model as load

    try:
        return load(run_dir)
    except run_errors() as error:
        fail(str(error))


@app.command()
def predict(
    run_dir: RunArgument,
    text: Annotated[Optional[list[str]], typer.Option("--text", help="a text to classify (repeatable)")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="a .csv or .parquet file of texts")] = None,
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="the file's text column; "
                                                                             "default the run's data.text_column")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="CSV to write (text, label, probability)")] = None,
    batch_size: Annotated[int, typer.Option(help="texts per forward pass")] = 64,
) -> None:
    """Label name and probability for each text, from a run's model."""
    from rich.table import Table

    from fedpilot.report.export import run_config
    from fedpilot.report.predict import class_probabilities, predictions, probabilities_with_progress, read_texts

    if (text is None) == (file is None):
        fail("give either --text (repeatable) or --file")
    run_model = load_run_model(run_dir)
    if file is None:
        probabilities = class_probabilities(run_model, text, batch_size)
    else:
        try:
            texts = read_texts(file, text_column or run_config(run_dir).data.text_column)
        except run_errors() as error:
            fail(str(error))
        probabilities = probabilities_with_progress(run_model, texts, batch_size, console)
    rows = predictions(run_model, text or texts, probabilities)
    if out is not None:
        rows.to_csv(out, index=False)
        console.print(f"wrote {len(rows)} predictions to {out}", highlight=False)
        return
    table = Table("text", "label", "probability")
    for row in rows.itertuples():
        table.add_row(row.text if len(row.text) <= 80 else row.text[:77] + "...", row.label, f"{row.probability:.1%}")
    console.print(table)


@app.command()
def evaluate(
    run_dir: RunArgument,
    data: Annotated[Optional[str], typer.Option("--data", help="a packaged dataset or a labelled .csv/.parquet file; "
                                                               "default the run's data")] = None,
    split: Annotated[str, typer.Option("--split", help="test or val (of the run's or a packaged dataset)")] = "test",
    out: Annotated[Optional[Path], typer.Option("--out", help="folder for the JSON and PNG; default RUN/eval")] = None,
    batch_size: Annotated[int, typer.Option(help="texts per forward pass")] = 64,
) -> None:
    """Accuracy, macro-F1 and per-class metrics of a run's model (table, JSON, confusion-matrix PNG)."""
    from fedpilot.report.evaluate import classification_metrics, label_ids, labelled_data, metrics_table, write_results
    from fedpilot.report.export import run_config
    from fedpilot.report.predict import probabilities_with_progress

    run_model = load_run_model(run_dir)
    names = run_model.label_names
    try:
        examples = labelled_data(run_config(run_dir), data, split)
        truth = label_ids(examples.labels, names)
    except run_errors() as error:
        fail(str(error))
    for dropped in examples.dropped:
        console.print(f"[yellow]{dropped.describe()}[/]", highlight=False)
    predicted = probabilities_with_progress(run_model, examples.texts, batch_size, console).argmax(-1).numpy()
    metrics = classification_metrics(truth, predicted, names)
    console.print(metrics_table(metrics, f"{run_dir}: {examples.name}"))
    written = write_results(metrics, names, out or run_dir / "eval", examples.name, examples.dropped)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


@app.command()
def compare(
    study: Annotated[Path, typer.Option("--study", help="study YAML (see configs/studies/)")],
    only: Annotated[Optional[list[str]], typer.Option("--only", help="run only this method label (repeatable)")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="run nothing: tabulate the finished runs")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="runs at once, each in its own process "
                                                                      "with cores / jobs torch threads; default "
                                                                      "one per core (1 when runs use a GPU)",
                                                show_default=False)] = None,
) -> None:
    """Run a study's grid of runs (skipping finished ones), then write its tables and plots."""
    from fedpilot.engines.server import RunStopped
    from fedpilot.report.compare import run_compare

    try:
        run_compare(study, only or [], console, run=not report_only, jobs=jobs)
    except user_errors() as error:
        fail(str(error))
    except RunStopped as error:
        stop_run(error)


@app.command()
def collect(
    study: Annotated[list[Path], typer.Option("--study", help="study YAML whose results to include (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="folder for table.csv, table.md, paired.csv, verdicts.md")] = Path(
        "results/converged"),
) -> None:
    """Concatenate several studies' tables and paired verdicts (each written by `fedpilot compare`) into one."""
    from fedpilot.report.collect import collect as collect_studies

    try:
        paths = collect_studies(study, out)
    except user_errors() as error:
        fail(str(error))
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="run directories")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write")],
) -> None:
    """Draw the test accuracy vs round of any run directories on one chart."""
    from fedpilot.report.plots import RunDirError, plot_runs

    try:
        console.print(f"wrote {plot_runs(runs, out)}", highlight=False)
    except RunDirError as error:
        fail(str(error))


@app.command()
def profile(
    model: Annotated[str, typer.Option(help="'minilm', a model folder or a config.json")] = "minilm",
    batch: Annotated[int, typer.Option(help="examples per step")] = 32,
    seq: Annotated[int, typer.Option(help="tokens per example (text models)")] = 128,
    image_size: Annotated[Optional[int], typer.Option(help="image side in pixels (image models)")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, bf16, or amp-bf16 (bf16 autocast, device cpu)")] = "fp32",
    device: Annotated[str, typer.Option(help="meta (no memory, no compute) or cpu")] = "meta",
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 8,
    targets: Annotated[str, typer.Option(help="comma-separated LoRA targets, e.g. query,value; "
                                              "default the model's query/value projections")] = "",
    granularity: Annotated[str, typer.Option(help="block (a unit per block) or module (a unit per adapted "
                                                  "Linear, as lora.granularity)")] = "block",
    out: Annotated[Path, typer.Option(help="folder for the profile JSON and PNG")] = Path("results/profile"),
) -> None:
    """Measure the memory cost profile Mem(S) of a model and write it as a table, JSON and PNG."""
    from fedpilot.memory.plot import run_profile_command

    try:
        run_profile_command(model, batch, seq, image_size, dtype, device, rank,
                            [t.strip() for t in targets.split(",") if t.strip()], out, console, granularity)
    except user_errors() as error:
        fail(str(error))


@app.command()
def plan(
    fleet: Annotated[Path, typer.Option(help="fleet YAML: client kinds with counts, memory and upload "
                                             "(see configs/fleets/example.yaml)")],
    model: Annotated[str, typer.Option(help="'minilm', a model folder or a config.json (profiled on meta)")] = "minilm",
    batch: Annotated[int, typer.Option(help="examples per step")] = 8,
    seq: Annotated[int, typer.Option(help="tokens per example")] = 512,
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 (weights and activations)")] = "bf16",
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 8,
    ranks: Annotated[Optional[str], typer.Option(help="rank options the knapsack may give a unit, e.g. 2,4,8 "
                                                      "(ascending, ending at --rank; default --rank alone)")] = None,
    scores: Annotated[Optional[Path], typer.Option(help="run directory whose last global IG-Scores value the "
                                                        "units (default: uniform values)")] = None,
    granularity: Annotated[str, typer.Option(help="block (a unit per block) or module (a unit per adapted "
                                                  "Linear, as lora.granularity)")] = "block",
    out: Annotated[Path, typer.Option(help="folder for plan.json and plan.png")] = Path("results/plan"),
) -> None:
    """Before training: per client kind, who can train which units and at what memory and traffic."""
    from fedpilot.fleet.show import run_plan_command

    try:
        run_plan_command(model, batch, seq, dtype, rank, fleet, scores, out, console, ranks, granularity)
    except user_errors() as error:
        fail(str(error))


@app.command("data-stats")
def data_stats(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print each client's data size and label histogram for the configured partition, and the rows left out
    for an empty text or label."""
    from fedpilot.data.partition import label_histogram
    from fedpilot.federation import load_partitions
    from fedpilot.report.tables import data_stats_table

    cfg = resolve(config, set_)
    try:
        text, parts, val = load_partitions(cfg)
    except user_errors() as error:
        fail(str(error))
    histograms = [label_histogram(p, len(text.label_names)) for p in parts]
    console.print(data_stats_table([len(p) for p in parts], histograms, text.label_names))
    console.print(f"validation examples: {0 if val is None else len(val)}, test examples: {len(text.test)}, "
                  f"labels: {len(text.label_names)}")
    for dropped in text.dropped:
        console.print(f"[yellow]data:[/] {dropped.describe()}", highlight=False)


@app.command("config")
def config_fields(
    resolved: Annotated[bool, typer.Option("--resolved", help="print the resolved config as YAML "
                                                              "(implied by --config or --set)")] = False,
    config: ConfigOption = None, set_: SetOption = None,
) -> None:
    """Print every config field with its type, default and description, or the resolved config as YAML."""
    from fedpilot.config import dump_config
    from fedpilot.config_fields import field_docs
    from fedpilot.report.tables import fields_table

    if resolved or config is not None or set_:
        console.print(dump_config(resolve(config, set_)), end="", soft_wrap=True, highlight=False, markup=False)
    else:
        console.print(fields_table(field_docs(Config)))


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
