"""Methods by name. Add a method by writing its module and listing its class here."""

from fedpilot.config import Config, ConfigError
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


def known_strategy(name: str) -> str:
    """A registered method's name; raises ValueError listing the valid ones for any other."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; valid: {sorted(REGISTRY)}")
    return name


def check_strategy(config: Config) -> None:
    """Raise ConfigError naming `strategy.name` when the config's method is not registered."""
    try:
        known_strategy(config.strategy.name)
    except ValueError as error:
        raise ConfigError(f"strategy.name: {error}") from None


def make_strategy(name: str, context: StrategyContext) -> Strategy:
    """Instantiate a registered method; an unknown name raises ValueError listing the valid ones."""
    return REGISTRY[known_strategy(name)](context)
