#!/usr/bin/env bash
# The converged comparison (docs/protocol.md): every part in order, two runs at a time, then one table.
# Resumable: rerun to go on after an interruption. Each part keeps its run records in
# results/<part>/runs/ (commit them), so a fresh clone goes on where the last machine stopped.
#   nohup scripts/run_converged_study.sh > converged.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
FEDPILOT="${FEDPILOT:-.venv/bin/fedpilot}"
JOBS="${JOBS:-2}"
# Reuters R8 and Rotten Tomatoes at the lengths their pilot gave (pilot-others-l16.yaml: 40 and 24 rounds).
PARTS=(converged-20ng-memory converged-reference-20ng converged-20ng-upload
       converged-reference-r8 converged-reference-rt converged-r8-upload converged-rt-upload)
for part in "${PARTS[@]}"; do
    "$FEDPILOT" compare --study "configs/studies/$part.yaml" --jobs "$JOBS"
done
"$FEDPILOT" collect $(printf -- '--study configs/studies/%s.yaml ' "${PARTS[@]}") --out results/converged
