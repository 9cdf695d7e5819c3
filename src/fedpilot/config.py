"""One typed configuration for a run: loaded from YAML, overridden from the command line.

Field descriptions are the reference documentation (`fedpilot config` prints them, with types and
defaults). Unknown keys and bad values raise `ConfigError`, whose message names the field.
Presets ship inside the package (`fedpilot/presets/*.yaml`) and resolve by name (`hetero`).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedpilot.config_fields import annotation_at, closest_fields, is_string_list


class ConfigError(ValueError):
    """A configuration the user must fix; the CLI prints it and exits with code 2."""


def memory_budget(value: str) -> str:
    """Validator: a memory budget that parses (bytes, a GPU name or a percentage); raises BudgetError."""
    from fedpilot.memory.cost import check_budget

    check_budget(value)
    return value


def upload_budget(value: str) -> str:
    """Validator: an upload budget that parses ('unlimited', bytes or speed x deadline); raises BudgetError."""
    from fedpilot.assign.budgets import parse_upload

    parse_upload(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    path: str = Field("minilm", description="'minilm' (packaged all-MiniLM-L6-v2) or a local Hugging Face model folder")
    max_length: int = Field(64, gt=0, description="tokens per example after truncation/padding")

    @field_validator("path")
    @classmethod
    def _model_folder_exists(cls, value: str) -> str:
        if value == "minilm":
            return value
        folder = Path(value)
        if not folder.is_dir():
            raise ValueError(f"model folder {value!r} does not exist")
        if not (folder / "config.json").is_file():
            raise ValueError(f"model folder {value!r} has no config.json")
        return value


class DataConfig(_Section):
    name: str = Field("20newsgroups", description="packaged dataset name or a path to a .csv/.parquet file")
    text_column: str = Field("text", description="text column of a user file")
    label_column: str = Field("label", description="label column of a user file")
    test_path: str | None = Field(None, description="test file for a user dataset; else a seeded stratified split")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="test share when the data has no test split")
    max_train_examples: int | None = Field(None, gt=0, description="use a seeded subset of the training data")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training data held out as a validation "
                                                            "split (seeded, stratified, taken before partitioning, "
                                                            "held by no client); 0 = no validation split")
    labels: list[str] | None = Field(None, min_length=2, description="the run's agreed label names, in order "
                                     "(the model's classes); every dataset's labels must be among them. Needed when "
                                     "SuperNodes train on their own files (node config data-path); None = the "
                                     "labels found in the data, sorted")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from fedpilot.data.sources import PACKAGED

        if value in PACKAGED:
            return value
        if value.endswith((".csv", ".parquet")):
            if not Path(value).is_file():
                raise ValueError(f"dataset file {value!r} does not exist")
            return value
        raise ValueError(f"unknown dataset {value!r}; packaged: {sorted(PACKAGED)}, or a path to a .csv/.parquet file")

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) < len(value):
            raise ValueError(f"label names repeat: {value}")
        return value

    @field_validator("test_path")
    @classmethod
    def _test_file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"test file {value!r} does not exist")
        return value


class PartitionConfig(_Section):
    kind: Literal["iid", "dirichlet", "pathological"] = Field("iid", description="how training data is split over clients")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more label skew)")
    classes_per_client: int = Field(2, gt=0, description="labels per client for the pathological partition")


class ClientGroup(_Section):
    share: float = Field(1.0, gt=0, le=1, description="fraction of the clients in this group (shares sum to 1)")
    memory: str = Field("100%", description="training memory: bytes ('6GiB'), a GPU name ('t4-16g'), "
                                             "or a percentage of the cost of training every unit ('40%')")
    upload: str = Field("unlimited", description="upload per round: 'unlimited', bytes ('2MiB'), "
                                                  "or link speed x round deadline ('8Mbit/s*30s')")

    _memory_parses = field_validator("memory")(memory_budget)
    _upload_parses = field_validator("upload")(upload_budget)


class ClientsConfig(_Section):
    num_clients: int = Field(10, gt=0, description="clients holding a partition")
    per_round: int = Field(5, gt=0, description="clients sampled each round")
    groups: list[ClientGroup] = Field([ClientGroup()], min_length=1,
                                      description="budget groups, assigned to client ids in order; change one "
                                                  "with --set clients.groups.0.memory=6GiB")
    failure_rate: float = Field(0.0, ge=0, lt=1, description="probability that a client fails in a round "
                                                              "(injected, seeded; for reliability tests)")
    on_over_budget: Literal["fail", "drop"] = Field(
        "fail", description="a client whose measured memory exceeds its budget: fail the run, or drop its update")
    unaffordable: Literal["error", "exclude"] = Field(
        "error", description="a group whose memory cannot hold the frozen model and the head: stop the run, "
                             "or exclude its clients (never sampled; listed in the output and records)")
    max_examples: int | None = Field(
        None, gt=0, description="largest num_examples a client's reply may claim (its aggregation weight); null: "
                                "no bound beyond the data size the server knows for the client, which it must equal")
    max_update_norm_ratio: float | None = Field(
        None, ge=1, description="refuse a reply whose update norm exceeds this many times the round's median "
                                "norm (at least 1); null: off")

    @model_validator(mode="after")
    def _sample_fits(self) -> ClientsConfig:
        if self.per_round > self.num_clients:
            raise ValueError(f"per_round ({self.per_round}) exceeds num_clients ({self.num_clients})")
        total = sum(group.share for group in self.groups)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"group shares must sum to 1, got {total:g}")
        return self


class LoraConfig(_Section):
    rank: int = Field(8, gt=0, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch")
    targets: Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="Linear module names that get LoRA; unset: the architecture's query and value "
                          "projections (docs/models.md)")
    granularity: Literal["block", "module"] = Field(
        "block", description="what a unit is: one transformer block's adapters (block), or each adapted Linear, "
                             "e.g. block 3's value projection '3.value' (module)")


class TrainConfig(_Section):
    rounds: int = Field(10, gt=0, description="federated rounds")
    local_steps: int = Field(10, gt=0, description="optimizer steps per client per round")
    batch_size: int = Field(16, gt=0, description="examples per local step")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast on CPU/GPU")
    device: str = Field("cpu", description="torch device for training and evaluation")


class StrategyConfig(_Section):
    name: str = Field("fedavg-full", description="method; see `fedpilot strategies` (checked where runs are built)")
    value: Literal["combined", "local", "global", "uniform", "random"] = Field(
        "combined", description="fedpilot unit value: IG-Score variant, or uniform/random for ablations")
    # Defaults from configs/studies/ablations-v2.yaml (README, docs/method.md): v2 with every unit at full
    # rank (its `ranks-full` row) is ahead of v1 on validation accuracy (95% interval over the 6 paired
    # seed-settings above 0); the rank choice was not ahead of full rank, so it is not the default.
    score: Literal["product", "factors"] = Field(
        "product", description="fedpilot local IG-Score: the gradient w.r.t. the low-rank product B A projected "
                               "on the tangent space, or ||grad A||^2 + ||grad B||^2 (the design's form)")
    score_estimate: Literal["unbiased", "plain"] = Field(
        "unbiased", description="fedpilot IG-Score estimate: inner product of two half-set gradients (unbiased), "
                                "or the squared norm of one mean gradient (inflated by gradient noise)")
    global_norm: Literal["report", "mean", "none"] = Field(
        "report", description="fedpilot global IG-Score: each client's report normalised to sum 1 (favours units "
                              "many clients can afford), to mean 1 over its units, or raw scores")
    bonus: bool = Field(True, description="fedpilot: exploration bonus for rarely trained units")
    aggregation: Literal["stagg", "spatial"] = Field("stagg", description="fedpilot: STAgg, or spatial-only")
    dwa: bool = Field(True, description="fedpilot: dynamic weight average of unit update rates")
    dwa_ratio: Literal["client", "mean"] = Field(
        "client", description="fedpilot DWA rate from the clients' own update norms, or from the averaged "
                              "update's norm (the design's form; grows when fewer clients were averaged)")
    coverage: Literal["affordable", "sampled"] = Field(
        "affordable", description="fedpilot STAgg coverage: share of the sampled clients that could afford the "
                                  "unit, or of all sampled clients (the design's form)")
    bias: Literal["exact", "rounds"] = Field(
        "exact", description="fedpilot STAgg history: exact bias correction (idle rounds included), or "
                             "1 - mu^k over the k trained rounds (ignores idle rounds)")
    merge: Literal["product", "factors"] = Field(
        "product", description="fedpilot: merge units as products B A re-factored by truncated SVD, or A and B "
                               "separately")
    ranks: list[int] | None = Field(
        None, description="fedpilot rank options of the knapsack (each unit skipped or trained at one), e.g. "
                          "[2, 4, 8]; None = every unit at lora.rank; values and IG-Score shares are relative "
                          "to the largest option")
    lam: float = Field(0.5, ge=0, le=1, description="weight of the local IG-Score against the global one")
    beta: float = Field(0.1, ge=0, description="weight of the exploration bonus")
    rho: float = Field(0.5, ge=0, lt=1, description="EMA factor of the global IG-Score")
    mu: float = Field(0.9, ge=0, lt=1, description="per-unit server momentum of STAgg")
    momentum: Literal["ema", "sum"] = Field(
        "ema", description="STAgg history: bias-corrected average of past updates, or the plain sum mu*H + D")
    temperature: float = Field(2.0, gt=0, description="DWA softmax temperature")
    ig_examples: int = Field(16, gt=0, description="examples of a client's IG set for local scores")


class EvalConfig(_Section):
    every: int = Field(1, gt=0, description="evaluate the global model every N rounds (and after the last)")
    max_examples: int | None = Field(1000, gt=0, description="fixed seeded test subset; None = whole test split")
    batch_size: int = Field(128, gt=0, description="examples per evaluation forward pass")
    final_full: bool = Field(True, description="after the last round, evaluate the global model on the whole test "
                                               "split too (summary.json final_test_accuracy_full); false skips it")


class OutputConfig(_Section):
    dir: str = Field("runs", description="parent folder of run directories")
    name: str | None = Field(None, description="run directory name; default <strategy>-<dataset>-<partition>-s<seed>")
    tensorboard: bool = Field(False, description="log per-round metrics for TensorBoard into runs/<name>/tb/")


class Config(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    clients: ClientsConfig = ClientsConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig = StrategyConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    seed: int = Field(0, ge=0, description="seed for partitions, sampling, initialisation and training")

    @model_validator(mode="after")
    def _ranks_fit_lora(self) -> Config:
        ranks = self.strategy.ranks
        if ranks is not None and (not ranks or any(not 0 < r <= self.lora.rank for r in ranks)):
            raise ValueError(f"strategy.ranks {ranks} must be non-empty ranks in 1..lora.rank ({self.lora.rank})")
        return self

    def rank_options(self) -> tuple[int, ...]:
        """The knapsack's rank options, ascending and distinct: strategy.ranks, or lora.rank alone."""
        return tuple(sorted(set(self.strategy.ranks or [self.lora.rank])))

    def run_name(self) -> str:
        """Directory name of this run under output.dir."""
        if self.output.name:
            return self.output.name
        dataset = Path(self.data.name).stem
        return f"{self.strategy.name}-{dataset}-{self.partition.kind}-s{self.seed}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value.

    A `list[str]` field also takes the comma form: `lora.targets=query,value`.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    path = key.strip().split(".")
    value = yaml.safe_load(raw)
    if isinstance(value, str) and is_string_list(annotation_at(Config, path)):
        value = [item.strip() for item in value.split(",") if item.strip()]
    return path, value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set one nested key in a raw config dict, creating sections as needed.

    A number indexes a list of sections (`clients.groups.0.memory`); a list the tree does not set yet
    starts from its default. Raises `ConfigError` for an index out of range or a key under a value.
    """
    node: Any = tree
    for depth in range(len(path) - 1):
        node = _child(node, path, depth)
    if isinstance(node, list):
        node[_index(node, path, len(path) - 1)] = value
    else:
        node[path[-1]] = value


def _child(node: Any, path: list[str], depth: int) -> Any:
    """The section or list at `path[depth]` under `node`, created (or copied from the defaults) when missing."""
    part, where = path[depth], ".".join(path)
    if isinstance(node, list):
        child = node[_index(node, path, depth)]
    elif isinstance(node, dict):
        if part not in node:
            node[part] = _default_at(path[: depth + 1]) if path[depth + 1].isdigit() else {}
        child = node[part]
    else:
        raise ConfigError(f"override {where}: {path[depth - 1]!r} is not a section")
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"override {where}: {part!r} is not a section")
    return child


def _index(items: list, path: list[str], depth: int) -> int:
    """The list index `path[depth]`, checked against the list's length."""
    part, name = path[depth], ".".join(path[:depth])
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"override {'.'.join(path)}: {name} has {len(items)} item(s), indexed 0..{len(items) - 1}; "
                          f"to add or remove items set the whole list, e.g. {name}=[{{...}}, {{...}}]")
    return int(part)


def _default_at(path: list[str]) -> Any:
    """A copy of the default value at `path` (as JSON-ready data)."""
    node: Any = Config().model_dump(mode="json")
    for part in path:
        node = node[part]
    return copy.deepcopy(node)


def field_name(loc: tuple[str | int, ...]) -> str:
    """A pydantic error location as the user writes it: ('clients', 'groups', 0, 'memory') -> clients.groups[0].memory."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "config"


def describe_errors(error: ValidationError) -> str:
    """One line per invalid field: `section.field: reason`."""
    lines = []
    for item in error.errors():
        field = field_name(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            close = closest_fields(Config, [str(p) for p in item["loc"]])
            message = "unknown key" + (f"; did you mean {', '.join(close)}?" if close else "")
        lines.append(f"{field}: {message}")
    return "\n".join(lines)


def build_config(raw: dict[str, Any]) -> Config:
    """Validate a raw dict into a Config, turning pydantic errors into ConfigError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


PRESETS = "presets"
"""Package folder of the shipped presets."""


def preset_names() -> list[str]:
    """Names of the presets shipped in the package (`--config NAME`)."""
    return sorted(f.name.removesuffix(".yaml") for f in resources.files("fedpilot").joinpath(PRESETS).iterdir()
                  if f.name.endswith(".yaml"))


def find_config_file(path: str | Path) -> Path:
    """A config file: the path if it exists, else the shipped preset of that name (`hetero`, `hetero.yaml`).

    Raises `ConfigError` naming the presets when it is neither.
    """
    file = Path(path)
    if file.is_file():
        return file
    name = str(path).removesuffix(".yaml")
    if name in preset_names():
        return Path(str(resources.files("fedpilot").joinpath(PRESETS, f"{name}.yaml")))
    raise ConfigError(f"config file {str(path)!r} does not exist; shipped presets: {', '.join(preset_names())}")


def read_config_tree(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a config file or preset name; `ConfigError` if missing, not YAML, or not a mapping."""
    file = find_config_file(path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML preset (a path or a shipped preset's name; else the defaults), apply `key=value`
    overrides, validate."""
    raw = read_config_tree(path) if path is not None else {}
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return build_config(raw)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict as {"section.field": value}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs, as `key: old -> new`."""
    before, after = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


def dump_config(config: Config) -> str:
    """The resolved config as YAML, as written into every run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
