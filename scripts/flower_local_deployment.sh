#!/usr/bin/env bash
# Flower deployment engine on one machine: a SuperLink and N SuperNodes on 127.0.0.1 (free ports),
# then `flwr run .` of a tiny fedpilot config for 2 rounds. Every process this script starts is
# stopped by PID on exit; the exit code is non-zero unless the run wrote a 2-round summary.
#
#   scripts/flower_local_deployment.sh [--secure] [section.field=value ...]   (extra fedpilot overrides)
#   NUM_NODES=3 KEEP_DIR=1 scripts/flower_local_deployment.sh
#
# --secure: a throw-away CA and a server certificate for 127.0.0.1 (openssl), an ECDSA P-384 key
# pair per SuperNode (OpenSSH format, as flwr 1.42 reads them), the public keys registered with
# `flwr supernode register`, and the SuperLink run with TLS and --enable-supernode-auth.
#
# Environment (all optional):
#   NUM_NODES=3              SuperNodes, partition-id 0..N-1
#   NODE_CONFIG_<i>='k=v'    extra node config of SuperNode i, e.g. 'data-path="/srv/a.csv" memory="64MiB"'
#   CONFIG_FILE=path.yaml    fedpilot config instead of the tiny one (output.dir/name are set here)
#   FEDERATED_EVAL=true      clients also evaluate the global model on their own data
#   WORK_DIR=dir             keep logs, certificates and the run in this (new or empty) folder
#   KEEP_DIR=1               keep the temporary folder
#   UNREGISTERED_NODES=0     (--secure) extra SuperNodes whose keys are never registered
#   WRONG_CA_NODES=0         (--secure) extra SuperNodes (keys registered) that trust a different CA
set -euo pipefail

SECURE=0
if [[ "${1:-}" == "--secure" ]]; then SECURE=1; shift; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NUM_NODES="${NUM_NODES:-3}"
[[ -x "$REPO/.venv/bin/python" ]] && PATH="$REPO/.venv/bin:$PATH"
FEDERATED_EVAL="${FEDERATED_EVAL:-true}"
UNREGISTERED_NODES="${UNREGISTERED_NODES:-0}" WRONG_CA_NODES="${WRONG_CA_NODES:-0}"
EXTRA_NODES=$((SECURE ? UNREGISTERED_NODES + WRONG_CA_NODES : 0))
if [[ -n "${WORK_DIR:-}" ]]; then
    mkdir -p "$WORK_DIR" && WORK="$(cd "$WORK_DIR" && pwd)" KEEP_DIR=1
else
    WORK="$(mktemp -d -t fedpilot-flower-XXXXXX)"
fi
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

# NUM_NODES + EXTRA_NODES + 1 distinct free ports: the SuperLink's, then one Runtime API port per SuperNode.
read -r -a PORTS <<< "$(python - "$((NUM_NODES + EXTRA_NODES))" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]) + 1)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
PY
)"
LINK="127.0.0.1:${PORTS[0]}"

# ECDSA P-384 key pairs in OpenSSH format (what `flwr supernode register` and flower-supernode read).
make_keys() {
    python - "$@" <<'PY'
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
for stem in map(Path, sys.argv[1:]):
    key = ec.generate_private_key(ec.SECP384R1())
    stem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    stem.chmod(0o600)
    stem.with_suffix(".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                       serialization.PublicFormat.OpenSSH))
PY
}

# A throw-away CA (EC P-256) and a certificate it signs for the SuperLink at 127.0.0.1.
make_ca() {  # make_ca DIR NAME
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$2" \
        -keyout "$1/$2.key" -out "$1/$2.crt" 2> /dev/null
}

LINK_TLS=(--insecure) NODE_TLS=(--insecure) CONNECTION="insecure = true"
if ((SECURE)); then
    command -v openssl > /dev/null || { echo "--secure needs openssl (apt-get install openssl)" >&2; exit 1; }
    CERTS="$WORK/certs" && mkdir -p "$CERTS" "$WORK/keys"
    make_ca "$CERTS" ca && make_ca "$CERTS" other-ca
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$CERTS/server.key" -out "$CERTS/server.csr" 2> /dev/null
    printf "subjectAltName=IP:127.0.0.1,DNS:localhost\n" > "$CERTS/san.ext"
    openssl x509 -req -in "$CERTS/server.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -CAcreateserial \
        -days 2 -extfile "$CERTS/san.ext" -out "$CERTS/server.pem" 2> /dev/null
    make_keys $(for ((i = 0; i < NUM_NODES + EXTRA_NODES; i++)); do echo "$WORK/keys/node$i"; done)
    LINK_TLS=(--ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem" --ssl-keyfile "$CERTS/server.key"
              --enable-supernode-auth)
    NODE_TLS=(--root-certificates "$CERTS/ca.crt")
    CONNECTION="root-certificates = \"$CERTS/ca.crt\""
fi

flower-superlink "${LINK_TLS[@]}" --disable-runtime-dependency-installation --host 127.0.0.1 \
    --port "${PORTS[0]}" > "$WORK/superlink.log" 2>&1 &
PIDS+=($!)

for attempt in $(seq 1 120); do  # until the SuperLink accepts connections (slow on a busy machine)
    (exec 3<> "/dev/tcp/127.0.0.1/${PORTS[0]}") 2> /dev/null && break
    ((attempt == 120)) && { echo "the SuperLink did not open port ${PORTS[0]} in 60 s" >&2; exit 1; }
    sleep 0.5
done

cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "loopback"

[superlink.loopback]
address = "$LINK"
$CONNECTION
TOML

register() {  # register INDEX: the node's public key, retried while the SuperLink starts
    for _ in $(seq 1 60); do
        flwr supernode register "$WORK/keys/node$1.pub" loopback >> "$WORK/register$1.log" 2>&1 && return 0
        sleep 1
    done
    echo "could not register node$1 (see $WORK/register$1.log)" >&2
    return 1
}
if ((SECURE)); then  # every key but the unregistered nodes', in parallel
    REGISTERING=()
    for ((i = 0; i < NUM_NODES + EXTRA_NODES; i++)); do
        ((i >= NUM_NODES && i < NUM_NODES + UNREGISTERED_NODES)) && continue
        register "$i" &
        REGISTERING+=($!) PIDS+=($!)
    done
    for pid in "${REGISTERING[@]}"; do wait "$pid"; done
fi

start_node() {  # start_node INDEX PARTITION EXTRA_NODE_CONFIG [flower-supernode options...]
    local index=$1 partition=$2 extra=$3
    shift 3
    flower-supernode "$@" --superlink "$LINK" --port "${PORTS[index + 1]}" \
        --node-config "partition-id=$partition num-partitions=$NUM_NODES $extra" > "$WORK/supernode$index.log" 2>&1 &
    PIDS+=($!)
}
auth() { ((SECURE)) && echo "--auth-supernode-private-key $WORK/keys/node$1" || true; }
for ((i = 0; i < NUM_NODES; i++)); do
    extra="NODE_CONFIG_$i"
    start_node "$i" "$i" "${!extra:-}" "${NODE_TLS[@]}" $(auth "$i")
done
for ((i = NUM_NODES; i < NUM_NODES + EXTRA_NODES; i++)); do  # would duplicate partition 0 if let in
    if ((i < NUM_NODES + UNREGISTERED_NODES)); then
        start_node "$i" 0 "" "${NODE_TLS[@]}" $(auth "$i")
    else
        start_node "$i" 0 "" --root-certificates "$CERTS/other-ca.crt" $(auth "$i")
    fi
done

OUTPUT=("output.dir=$WORK/runs" "output.name=deployment")
if [[ -n "${CONFIG_FILE:-}" ]]; then
    CONFIG="$(cd "$(dirname "$CONFIG_FILE")" && pwd)/$(basename "$CONFIG_FILE")"
else
    CONFIG="$WORK/tiny.yaml"
    cat > "$CONFIG" <<YAML
data: {max_train_examples: 300}
clients: {num_clients: $NUM_NODES, per_round: $NUM_NODES}
model: {max_length: 32}
train: {rounds: 2, local_steps: 2, batch_size: 8}
eval: {every: 2, max_examples: 60}
YAML
fi

cd "$REPO"
flwr run . loopback --stream \
    --run-config "config=\"$CONFIG\" overrides=\"${OUTPUT[*]} $*\" federated-eval=$FEDERATED_EVAL" \
    | tee "$WORK/run.log"

python - "$WORK/runs/deployment" "$FEDERATED_EVAL" <<'PY'
import json, sys
from pathlib import Path
run, federated = Path(sys.argv[1]), sys.argv[2] == "true"
summary = json.loads((run / "summary.json").read_text())
rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
assert summary["rounds"] == 2 and len(rounds) == 2, summary
assert summary["final_accuracy"] is not None, summary
assert not federated or "client_accuracy" in rounds[-1], rounds[-1]
shown = f", client accuracy {rounds[-1]['client_accuracy']:.4f}" if federated else ""
print(f"deployment run OK: 2 rounds, final accuracy {summary['final_accuracy']:.4f}{shown}")
PY
