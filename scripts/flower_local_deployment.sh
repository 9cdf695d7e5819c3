#!/usr/bin/env bash
# Flower deployment engine on one machine: a SuperLink and N SuperNodes on 127.0.0.1 (free ports),
# then `flwr run .` of a tiny fedpilot config for 2 rounds. Every process this script starts is
# stopped by PID on exit; the exit code is non-zero unless the run wrote a 2-round summary.
#
#   scripts/flower_local_deployment.sh [section.field=value ...]    (extra fedpilot overrides)
#   NUM_NODES=3 KEEP_DIR=1 scripts/flower_local_deployment.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NUM_NODES="${NUM_NODES:-3}"
[[ -x "$REPO/.venv/bin/python" ]] && PATH="$REPO/.venv/bin:$PATH"
WORK="$(mktemp -d -t fedpilot-flower-XXXXXX)"
export FLWR_HOME="$WORK/flwr-home" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # N ClientApp processes share the cores
mkdir -p "$FLWR_HOME"
PIDS=()

cleanup() {
    local status=$? children=()
    for pid in "${PIDS[@]}"; do   # the superexec each service spawned, then the service itself
        children+=($(pgrep -P "$pid" || true))
    done
    for pid in "${PIDS[@]}" "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 40); do
        local alive=0
        for pid in "${PIDS[@]}" "${children[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.5
    done
    for pid in "${PIDS[@]}" "${children[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [[ $status != 0 ]]; then tail -n 20 "$WORK"/*.log >&2 || true; fi
    [[ -n "${KEEP_DIR:-}" ]] && echo "logs and run kept in $WORK" || rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

# NUM_NODES + 1 distinct free ports: the SuperLink's, then one Runtime API port per SuperNode.
read -r -a PORTS <<< "$(python - "$NUM_NODES" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]) + 1)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
PY
)"
LINK="127.0.0.1:${PORTS[0]}"

flower-superlink --insecure --disable-runtime-dependency-installation --host 127.0.0.1 --port "${PORTS[0]}" \
    > "$WORK/superlink.log" 2>&1 &
PIDS+=($!)
for ((i = 0; i < NUM_NODES; i++)); do
    flower-supernode --insecure --superlink "$LINK" --port "${PORTS[i + 1]}" \
        --node-config "partition-id=$i num-partitions=$NUM_NODES" > "$WORK/supernode$i.log" 2>&1 &
    PIDS+=($!)
done

cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "loopback"

[superlink.loopback]
address = "$LINK"
insecure = true
TOML

cat > "$WORK/tiny.yaml" <<YAML
data: {max_train_examples: 300}
clients: {num_clients: $NUM_NODES, per_round: $NUM_NODES}
model: {max_length: 32}
train: {rounds: 2, local_steps: 2, batch_size: 8}
eval: {every: 2, max_examples: 60}
output: {dir: "$WORK/runs", name: deployment}
YAML

cd "$REPO"
flwr run . loopback --stream \
    --run-config "config=\"$WORK/tiny.yaml\" overrides=\"$*\" federated-eval=true" | tee "$WORK/run.log"

python - "$WORK/runs/deployment" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
assert summary["rounds"] == 2 and len(rounds) == 2, summary
assert summary["final_accuracy"] is not None and "client_accuracy" in rounds[-1], rounds[-1]
print(f"deployment run OK: 2 rounds, final accuracy {summary['final_accuracy']:.4f}, "
      f"client accuracy {rounds[-1]['client_accuracy']:.4f}")
PY
