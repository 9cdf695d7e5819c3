"""The Flower `ClientApp` of fedpilot, and the message codec both Flower apps share.

A node learns its partition from `node_config["partition-id"]` and the run's config from the
resolved YAML every message carries (`run_config` is empty under simulation); it builds the
federation once per config hash in its process, then runs the client side both engines share
(`engines/client_round.py`). A node whose node config names its own data (`data-path`,
`data.node_data`) trains on that file instead of a partition of the shared dataset; before round 1
every node reports its data size, label histogram and declared budgets (`engines.node_report`).
"""

from __future__ import annotations

import dataclasses
import hashlib

import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedpilot.client import ClientUpdate, Plan, evaluate
from fedpilot.config import Config, build_config
from fedpilot.data.sources import dropped_only
from fedpilot.data.node_data import NodeData, label_counts, load_node_data, node_config_tree, node_data_of
from fedpilot.engines.client_round import Outcome, attempt_client, score_units
from fedpilot.engines.node_report import encode_report, node_report
from fedpilot.federation import Federation, build_federation, node_federation
from fedpilot.models.units import load_adapter_state
from fedpilot.strategies.base import State

CONFIG_KEY = "fedpilot-config"
"""ConfigRecord key holding the run's resolved config as YAML, in every message."""

client_app = ClientApp()
_federations: dict[str, tuple[Config, Federation]] = {}


def to_arrays(state: State) -> ArrayRecord:
    """Tensors as an ArrayRecord (exact values and dtypes)."""
    return ArrayRecord({key: tensor.detach().cpu() for key, tensor in state.items()})


def from_arrays(record: ArrayRecord) -> State:
    """An ArrayRecord back as torch tensors."""
    return dict(record.to_torch_state_dict())


def plan_fields() -> dict[str, str]:
    """ConfigRecord key of each `Plan` field (`local_steps` -> `local-steps`)."""
    return {field.name.replace("_", "-"): field.name for field in dataclasses.fields(Plan)}


def plan_config(plan: Plan, round_number: int, client_id: int, seed: int) -> dict[str, int | list[int]]:
    """A plan as ConfigRecord values (every field it sets), with its round, partition and seed."""
    values = {key: getattr(plan, name) for key, name in plan_fields().items()}
    values["units"] = list(plan.units)
    values["ranks"] = None if plan.ranks is None else list(plan.ranks)
    return {"server-round": round_number, "partition-id": client_id, "seed": seed,
            **{key: value for key, value in values.items() if value is not None}}


def plan_from_config(config: ConfigRecord) -> Plan:
    """The plan encoded by `plan_config`."""
    values = {name: config[key] for key, name in plan_fields().items() if key in config}
    ranks = values.get("ranks")
    return Plan(**{**values, "units": tuple(int(j) for j in values["units"]),
                   "ranks": None if ranks is None else tuple(int(r) for r in ranks)})


def encode_outcome(outcome: Outcome) -> RecordDict:
    """A client's reply: only the trained tensors (units + head) and metrics, or why it failed."""
    if isinstance(outcome, ClientUpdate):
        metrics = MetricRecord({"num-examples": outcome.num_examples, **outcome.metrics})
        return RecordDict({"arrays": to_arrays(outcome.tensors), "metrics": metrics})
    return RecordDict({"outcome": ConfigRecord(outcome)})


def decode_outcome(reply: Message, client_id: int) -> Outcome:
    """The `Outcome` in a train reply; a Flower-level error counts as a failed client.

    Decoding is lenient and checking is the server's (`aggregate/validate.py`): missing arrays
    decode as no tensors and a missing or non-integer `num-examples` is passed on as sent, so the
    server refuses the reply instead of crashing on it. An outcome record is a failure, or an
    over-budget report when it says so.
    """
    if reply.has_error():
        return {"failed": f"ClientAppError: {reply.error.reason}"}
    if "outcome" in reply.content:
        outcome = {key: str(value) for key, value in reply.content["outcome"].items()}
        if "over_budget" in outcome:
            return {"over_budget": outcome["over_budget"]}
        return {"failed": outcome.get("failed", f"a reply without an update: {outcome}")}
    metrics = dict(reply.content["metrics"]) if "metrics" in reply.content else {}
    num_examples = metrics.pop("num-examples", None)
    tensors = from_arrays(reply.content["arrays"]) if "arrays" in reply.content else {}
    return ClientUpdate(client_id, tensors, num_examples, metrics)


def federation_for(text: str, own: NodeData | None = None, client_id: int = 0) -> tuple[Config, Federation]:
    """The config in a message and its federation, built once per (config, node data) in this process.

    With `own` data (the node config's data-path) the node trains on that file as client `client_id`
    and never reads the server's data (`node_data`); raises DataError for a label outside `data.labels`.
    """
    node = "" if own is None else f"\n{own}\n{client_id}"  # a partition node's federation serves every client id
    key = hashlib.sha256(f"{text}{node}".encode()).hexdigest()
    if key not in _federations:
        _federations.clear()
        tree = yaml.safe_load(text)
        if own is None:
            config = build_config(tree)
            _federations[key] = (config, build_federation(config))
        else:
            config = build_config(node_config_tree(tree, own))
            data, dropped = load_node_data(own, list(config.data.labels or []))
            _federations[key] = (config, node_federation(config, data, client_id, dropped_only(dropped)))
    return _federations[key]


def node_partition(context: Context) -> int:
    """The `partition-id` in this node's node config (ValueError when it has none)."""
    if "partition-id" not in context.node_config:
        raise ValueError("node_config lacks partition-id; start the SuperNode with "
                         "--node-config 'partition-id=<i> num-partitions=<N>'")
    return int(context.node_config["partition-id"])


def partition_of(context: Context, config: Config) -> int:
    """This node's client id: its `partition-id`, checked against the config's client count."""
    client_id = node_partition(context)
    if not 0 <= client_id < config.clients.num_clients:
        raise ValueError(f"partition-id {client_id} is outside 0..{config.clients.num_clients - 1}")
    return client_id


def received(msg: Message, context: Context) -> tuple[Config, Federation, int]:
    """Config, federation and client id for a message; the message must be meant for this partition."""
    own = node_data_of(context.node_config)
    config, federation = federation_for(str(msg.content["config"][CONFIG_KEY]), own, node_partition(context))
    client_id = partition_of(context, config)
    meant_for = msg.content["config"].get("partition-id", client_id)
    if meant_for != client_id:
        raise ValueError(f"message for partition {meant_for} reached partition {client_id}")
    return config, federation, client_id


def encode_scores(scores: dict[int, tuple[float, ...]], seconds: float) -> MetricRecord:
    """IG-Scores (per unit, one per rank option) as flat lists a MetricRecord can hold, with the seconds taken."""
    options = len(next(iter(scores.values()), ()))
    return MetricRecord({"units": [int(j) for j in scores], "scores": [float(v) for row in scores.values() for v in row],
                         "options": options, "seconds": seconds})


def decode_scores(record: MetricRecord) -> dict[int, tuple[float, ...]]:
    """The scores `encode_scores` packed: unit -> its score at each rank option."""
    options, flat = int(record["options"]), list(record["scores"])
    rows = [tuple(float(v) for v in flat[i * options:(i + 1) * options]) for i in range(len(record["units"]))]
    return dict(zip((int(j) for j in record["units"]), rows, strict=True))


def global_state(msg: Message) -> State:
    """The global tensors in a message: those to train and those to keep frozen."""
    frozen = from_arrays(msg.content["frozen"]) if "frozen" in msg.content else {}
    return {**from_arrays(msg.content["arrays"]), **frozen}


def reply(msg: Message, **records: ArrayRecord | ConfigRecord | MetricRecord) -> Message:
    """A reply carrying the given records."""
    return Message(content=RecordDict(records), reply_to=msg)


@client_app.query("partition")
def query_partition(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, its data size, label histogram and declared budgets
    (`node_report`); the federation is built here, ahead of round 1, so bad node data fails before training."""
    _, federation, client_id = received(msg, context)
    counts = label_counts(federation.client_data[client_id]["label"], len(federation.label_names))
    own = node_data_of(context.node_config) is not None
    dropped = sum(d.dropped for d in federation.dropped_rows) if own else 0
    report = node_report(context.node_config, client_id, counts, own, dropped)
    return reply(msg, partition=ConfigRecord({"partition-id": client_id}), report=encode_report(report))


@client_app.query("score")
def query_score(msg: Message, context: Context) -> Message:
    """IG-Scores of the requested units on this client's data, for the server's assignment."""
    config, federation, client_id = received(msg, context)
    cfg = msg.content["config"]
    units = tuple(int(j) for j in cfg["units"])
    scores, seconds = score_units(config, federation, global_state(msg), client_id, units, int(cfg["micro-batch"]),
                                  int(cfg["seed"]))
    return reply(msg, scores=encode_scores(scores, seconds))


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the plan in the message; reply with only the trained units' tensors, the head and metrics."""
    config, federation, client_id = received(msg, context)
    cfg = msg.content["config"]
    outcome = attempt_client(config, federation, global_state(msg), int(cfg["server-round"]), client_id,
                             plan_from_config(cfg), int(cfg["seed"]))
    return Message(content=encode_outcome(outcome), reply_to=msg)


@client_app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Federated evaluation: accuracy and loss of the global model on this client's own data."""
    config, federation, client_id = received(msg, context)
    load_adapter_state(federation.model, global_state(msg))
    data = federation.client_data[client_id]
    result = evaluate(federation.model, data, config.eval.batch_size, config.train.precision, config.train.device)
    return reply(msg, metrics=MetricRecord({"num-examples": len(data), **result}))
