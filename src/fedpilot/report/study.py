"""A study: one YAML file that names a grid of methods x datasets x partitions x seeds.

Expanding it gives one validated `Config` per run, named `<label>-<dataset>-<partition>-s<seed>` under
`<runs_dir>/<study>/`, in the order datasets, partitions, seeds, methods. Combinations that cannot run
(a pathological partition with more classes per client than the dataset has labels) are skipped
with their reason. Field descriptions are the reference documentation of the study file.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedpilot.config import (Config, ConfigError, apply_override, build_config, describe_errors, parse_override,
                             read_config_tree)
from fedpilot.strategies import known_strategy

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
REFERENCE = "fedavg-full"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def no_output_overrides(value: list[str]) -> list[str]:
    """Reject overrides of output.*, which the study sets itself."""
    for text in value:
        if text.strip().startswith("output."):
            raise ValueError(f"{text!r}: output.* is set by the study (runs_dir, run names)")
    return value


class MethodSpec(_Strict):
    name: str = Field(description="registered strategy name (see `fedpilot strategies`)")
    label: str | None = Field(None, pattern=NAME_PATTERN, description="name in run directories and tables; "
                                                                        "default the strategy name")
    set: list[str] = Field([], description="overrides of this method only, e.g. strategy.value=uniform")

    _no_output = field_validator("set")(no_output_overrides)

    _registered = field_validator("name")(known_strategy)

    @property
    def tag(self) -> str:
        """Label of this method in run names and tables."""
        return self.label or self.name


class PartitionSpec(_Strict):
    kind: Literal["iid", "dirichlet", "pathological"] = Field(description="how training data is split")
    alpha: float | None = Field(None, gt=0, description="Dirichlet concentration; default from the base config")
    classes_per_client: int | None = Field(None, gt=0, description="labels per client (pathological); "
                                                                   "default from the base config")
    label: str | None = Field(None, pattern=NAME_PATTERN, description="name in run directories and tables; "
                                                                      "default iid, dir-a<alpha>, path-k<classes>")

    @model_validator(mode="after")
    def _options_match_kind(self) -> PartitionSpec:
        if self.alpha is not None and self.kind != "dirichlet":
            raise ValueError(f"alpha applies to kind dirichlet only, not {self.kind}")
        if self.classes_per_client is not None and self.kind != "pathological":
            raise ValueError(f"classes_per_client applies to kind pathological only, not {self.kind}")
        return self

    def overrides(self) -> list[str]:
        """The config overrides this partition sets."""
        extra = {"alpha": self.alpha, "classes_per_client": self.classes_per_client}
        return [f"partition.kind={self.kind}"] + [f"partition.{k}={v}" for k, v in extra.items() if v is not None]


def lr_label(tag: str, lr: float) -> str:
    """A method's label in a learning-rate grid: `fedpilot-lr0.003`."""
    return f"{tag}-lr{lr:g}"


class Grid(_Strict):
    methods: list[MethodSpec] = Field(min_length=1, description="strategy names, or {name, label, set} ablations")
    datasets: list[str] = Field(["20newsgroups"], min_length=1, description="packaged names or .csv/.parquet paths")
    partitions: list[PartitionSpec] = Field([PartitionSpec(kind="iid")], min_length=1, description="partitions")
    seeds: list[int] = Field([0], min_length=1, description="seeds; every method sees the same clients per seed")
    lrs: list[float] = Field([], description="learning-rate grid (docs/protocol.md): each method runs once per value, "
                                             "labelled <label>-lr<value>; results/<study>/lr.md names the best on "
                                             "validation")

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, value: list[float]) -> list[float]:
        if any(lr <= 0 for lr in value) or len({f"{lr:g}" for lr in value}) != len(value):
            raise ValueError(f"lrs must be distinct positive values (as printed with 6 digits), got {value}")
        return value

    @model_validator(mode="after")
    def _lrs_alone_set_the_rate(self) -> Grid:
        if self.lrs:
            fixed = [m.tag for m in self.methods if any(s.replace(" ", "").startswith("train.lr=") for s in m.set)]
            if fixed:
                raise ValueError(f"methods {fixed} set train.lr themselves; with lrs the grid sets it")
        return self

    @field_validator("methods", mode="before")
    @classmethod
    def _names_to_specs(cls, value: Any) -> Any:
        return [{"name": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) else value

    def expanded_methods(self) -> list[MethodSpec]:
        """The methods as run: each once, or once per learning rate of `lrs` (label `<label>-lr<value>`)."""
        if not self.lrs:
            return self.methods
        return [MethodSpec(name=m.name, label=lr_label(m.tag, lr), set=[*m.set, f"train.lr={lr:g}"])
                for m in self.methods for lr in self.lrs]

    @field_validator("methods")
    @classmethod
    def _unique_labels(cls, value: list[MethodSpec]) -> list[MethodSpec]:
        tags = [method.tag for method in value]
        repeated = sorted({tag for tag in tags if tags.count(tag) > 1})
        if repeated:
            raise ValueError(f"method labels {repeated} repeat; give each variant its own label")
        return value


class Study(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="study name: runs go to <runs_dir>/<name>/")
    base: str | None = Field(None, description="config preset every run starts from (path from the working "
                                              "directory, or a shipped preset name such as hetero)")
    overrides: list[str] = Field([], description="section.field=value applied to every run")
    grid: Grid = Field(description="what varies between runs")
    runs_dir: str = Field("runs", description="parent of the study's run directories")
    results_dir: str = Field("results", description="parent of the study's tables and plots")
    paired_with: str | None = Field(None, description="method label every other method is compared with, seed by seed")
    regime: str | None = Field(None, pattern=NAME_PATTERN, description="the budget regime the study's client groups "
                                                                      "set, e.g. memory-only (a column of its tables)")
    records: bool = Field(False, description="keep each finished run's record (config.yaml, summary.json, "
                                             "metrics.jsonl) in results/<study>/runs/ to commit; a kept record "
                                             "counts as a finished run on any machine")
    pilot: bool = Field(False, description="a pilot study (docs/protocol.md): also write pilot.json / pilot.png, "
                                           "the fewest rounds whose last 25% add < 1 point of validation accuracy")

    _no_output = field_validator("overrides")(no_output_overrides)

    @model_validator(mode="after")
    def _paired_with_is_a_method(self) -> Study:
        tags = [method.tag for method in self.grid.expanded_methods()]
        if self.paired_with is not None and self.paired_with not in tags:
            raise ValueError(f"paired_with: {self.paired_with!r} is not a method label of the grid {tags}")
        return self

    @property
    def run_root(self) -> Path:
        """Folder holding this study's run directories."""
        return Path(self.runs_dir) / self.name

    @property
    def result_root(self) -> Path:
        """Folder holding this study's tables and plots."""
        return Path(self.results_dir) / self.name

    @property
    def records_root(self) -> Path | None:
        """Folder of the kept run records (`records: true`), else None."""
        return self.result_root / "runs" if self.records else None

    def reference_label(self) -> str | None:
        """Label of the fedavg-full method labelled as such (its own learning rate allowed; a variant has
        another label), the reference for rounds-to-95%; None without one, and for a learning-rate grid
        (its methods all carry a rate in their labels)."""
        return next((m.tag for m in self.grid.methods if m.name == REFERENCE and m.tag == REFERENCE
                     and not self.grid.lrs), None)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: where it lands, its table key and its validated config."""

    method: str
    dataset: str
    partition: str
    seed: int
    config: Config

    @property
    def name(self) -> str:
        """Run directory name."""
        return f"{self.method}-{self.dataset}-{self.partition}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        """Run directory path."""
        return Path(self.config.output.dir) / self.name


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; errors are ConfigErrors naming the field."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(file.read_text())
        return Study.model_validate(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"study file {str(path)!r} is not valid YAML: {error}") from None
    except ValidationError as error:
        raise ConfigError(f"study file {str(path)!r}:\n{describe_errors(error)}") from None


def base_tree(study: Study) -> dict[str, Any]:
    """The raw config every run starts from: the base preset's mapping (a path or a shipped preset's name), or empty."""
    if study.base is None:
        return {}
    try:
        return read_config_tree(study.base)
    except ConfigError as error:
        raise ConfigError(f"base: {error}") from None


def partition_tag(spec: PartitionSpec, config: Config) -> str:
    """The partition's label: given, or built from the kind and the value the run uses."""
    if spec.label:
        return spec.label
    if spec.kind == "dirichlet":
        return f"dir-a{config.partition.alpha:g}"
    if spec.kind == "pathological":
        return f"path-k{config.partition.classes_per_client}"
    return spec.kind


def build_run(study: Study, base: dict[str, Any], method: MethodSpec, dataset: str, part: PartitionSpec,
              seed: int) -> PlannedRun:
    """Validate one combination's config and give it its run directory."""
    tree = copy.deepcopy(base)
    overrides = [*study.overrides, f"data.name={dataset}", *part.overrides(), f"seed={seed}",
                 f"strategy.name={method.name}", *method.set]
    for text in overrides:
        apply_override(tree, *parse_override(text))
    try:
        config = build_config(tree)
    except ConfigError as error:
        raise ConfigError(f"study run {method.tag} / {dataset} / {part.label or part.kind} / seed {seed}: "
                          f"{error}") from None
    run = PlannedRun(method.tag, Path(dataset).stem, partition_tag(part, config), seed, config)
    config.output.dir = str(study.run_root)
    config.output.name = run.name
    return run


@functools.lru_cache(maxsize=16)
def label_count(name: str, text_column: str, label_column: str, test_path: str | None,
                test_fraction: float, seed: int) -> int:
    """Number of labels of a dataset (loaded once per process)."""
    from fedpilot.data.sources import load_text_data

    return len(load_text_data(name, text_column, label_column, test_path, test_fraction, seed).label_names)


def skip_reason(config: Config) -> str | None:
    """Why a combination cannot run, or None when it can."""
    if config.partition.kind != "pathological":
        return None
    data = config.data
    labels = label_count(data.name, data.text_column, data.label_column, data.test_path, data.test_fraction, 0)
    k = config.partition.classes_per_client
    return f"classes_per_client={k} exceeds the {labels} labels of {data.name}" if k > labels else None


def expand_study(study: Study) -> tuple[list[PlannedRun], list[tuple[str, str]]]:
    """Every run of the grid in order, and the (run name, reason) of each skipped combination."""
    base = base_tree(study)
    runs, skipped = [], []
    for dataset in study.grid.datasets:
        for part in study.grid.partitions:
            for seed in study.grid.seeds:
                for method in study.grid.expanded_methods():
                    run = build_run(study, base, method, dataset, part, seed)
                    reason = skip_reason(run.config)
                    if reason:
                        skipped.append((run.name, reason))
                    else:
                        runs.append(run)
    names = [run.name for run in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"grid: runs {repeated} share a name; give partitions distinct labels")
    return runs, skipped


def select_runs(runs: list[PlannedRun], study: Study, only: list[str]) -> list[PlannedRun]:
    """The runs of the methods labelled in `only` (all when empty); an unknown label is an error."""
    tags = [method.tag for method in study.grid.expanded_methods()]
    unknown = sorted(set(only) - set(tags))
    if unknown:
        raise ConfigError(f"--only: unknown method labels {unknown}; valid: {tags}")
    return [run for run in runs if not only or run.method in only]
