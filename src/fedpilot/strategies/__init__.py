"""Methods by name. Add a method by writing its module and listing its class here."""

from fedpilot.strategies.base import Strategy, StrategyContext
from fedpilot.strategies.exclusive import Exclusive
from fedpilot.strategies.fedavg_full import FedAvgFull
from fedpilot.strategies.fedpilot import FedPilot
from fedpilot.strategies.fedra import FedRA
from fedpilot.strategies.flexlora import FlexLoRA
from fedpilot.strategies.hetlora import HetLoRA
from fedpilot.strategies.straggler import Straggler
from fedpilot.strategies.top_k import TopK

REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedAvgFull, Exclusive, Straggler, TopK, FedRA, HetLoRA, FlexLoRA, FedPilot)}


def make_strategy(name: str, context: StrategyContext) -> Strategy:
    """Instantiate a registered method; an unknown name lists the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; valid: {sorted(REGISTRY)}")
    return REGISTRY[name](context)
