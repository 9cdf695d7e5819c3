#!/usr/bin/env bash
# Runs the three parts of the main comparison (issue 6) one after another; each writes its own
# results/<study>/ tables and plots. Every part is resumable: rerun this script to go on after an interruption.
#   nohup scripts/run_main_study.sh > study.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
FEDPILOT="${FEDPILOT:-.venv/bin/fedpilot}"
for part in main-20ng ablations main-others; do
    "$FEDPILOT" compare --study "configs/studies/$part.yaml"
done
