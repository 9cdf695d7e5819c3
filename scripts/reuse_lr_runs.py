"""Reuse the learning-rate grid's runs at the chosen rates as the grid's runs they equal.

A run of `lr-20ng.yaml` at a method's chosen rate has the config of the converged grid's run of that
method on the same setting and seed (Dirichlet 0.5, memory-only, seed 0) but for its name. This
copies its kept record into the grid study's records under the grid's run name, with `output.name`
/ `output.dir` set as the grid sets them, and only when the rest of the config is the same text
(checked against the study's own expansion); `fedpilot compare` then counts it as finished.

    .venv/bin/python scripts/reuse_lr_runs.py configs/studies/lr-20ng.yaml configs/studies/converged-20ng-memory.yaml
"""

from __future__ import annotations

import shutil
import sys

import yaml

from fedpilot.config import dump_config
from fedpilot.report.lr_choice import choose_lrs
from fedpilot.report.compare import read_results, table_rows
from fedpilot.report.study import expand_study, load_study, lr_label


def main(lr_path: str, grid_path: str) -> None:
    lr_study, grid_study = load_study(lr_path), load_study(grid_path)
    lr_runs, _ = expand_study(lr_study)
    chosen = choose_lrs(table_rows(read_results(lr_runs), None), lr_study)
    by_name = {run.name: run for run in lr_runs}
    grid_runs, _ = expand_study(grid_study)
    for run in grid_runs:
        lr = chosen.get(run.method, {}).get("chosen")
        source_name = run.name.replace(run.method, lr_label(run.method, lr), 1) if lr else None
        source = lr_study.records_root / source_name if source_name in by_name else None
        if source is None or not (source / "summary.json").is_file():
            continue
        config = yaml.safe_load((source / "config.yaml").read_text())
        config["output"].update(dir=str(grid_study.run_root), name=run.name)
        text = dump_config(run.config)
        if dump_config(type(run.config).model_validate(config)) != text:
            print(f"{run.name}: config differs from {source_name}; not reused")
            continue
        target = grid_study.records_root / run.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        (target / "config.yaml").write_text(text)
        print(f"{run.name}: reused {source_name}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
