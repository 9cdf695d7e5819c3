"""Local training of one client for one round: load the global adapters, train the planned units,
return only what was trained (the planned units' LoRA tensors and the head) with metrics."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from torch import nn

from fedpilot.assign.ig_score import local_scores
from fedpilot.data.tokenize import trim_padding
from fedpilot.memory.meters import SavedBytesMeter
from fedpilot.models.rank import reduced_rank
from fedpilot.models.units import UnitMap, adapter_state, load_adapter_state, set_trainable


class BudgetExceeded(RuntimeError):
    """A client's counted memory in a step went over its budget; the step was stopped."""


@dataclass(frozen=True)
class Plan:
    """What one client does this round: which units it trains, for how many steps, at what cost.

    `estimated_bytes` is the cost model's Mem(units); `budget_bytes` the client's memory budget.
    `ranks` gives the LoRA rank of each unit in `units` (same order) when below the model's: those
    units train real smaller tensors (see `models/rank.py`); None is the model's full rank. `enforce_budget=False` (only the budget-ignoring reference
    method) logs the counted memory against the budget without stopping the client.
    """

    units: tuple[int, ...]
    local_steps: int
    estimated_bytes: int | None = None
    budget_bytes: int | None = None
    upload_bytes: int | None = None
    ranks: tuple[int, ...] | None = None
    enforce_budget: bool = True


@dataclass
class ClientUpdate:
    """A client's reply: trained tensors, its data size (aggregation weight) and metrics."""

    client_id: int
    tensors: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation knobs a client needs, taken from the run config."""

    batch_size: int
    lr: float
    weight_decay: float
    precision: str
    device: str


@dataclass(frozen=True)
class ScoreSettings:
    """How a client computes IG-Scores: `examples` in its IG set, the rank options to score
    (ascending), the score kind, the unbiased two-half estimate or not, LoRA's scale alpha / r, and
    the round's local steps (to keep the IG set off the training batches)."""

    examples: int
    ranks: tuple[int, ...]
    kind: str
    unbiased: bool
    scale: float
    local_steps: int


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_indices(num_examples: int, steps: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """`steps` batches drawn by walking seeded permutations of the client's data."""
    needed = steps * batch_size
    order = torch.cat([torch.randperm(num_examples, generator=generator)
                       for _ in range(-(-needed // num_examples))])
    return list(order[:needed].split(batch_size))


def tensor_bytes(tensors) -> int:
    """Bytes of the given tensors' elements."""
    return sum(t.numel() * t.element_size() for t in tensors)


class MemoryWatch:
    """Counted memory of a client's steps: weights + grads + AdamW moments + saved activations.

    `counted` adds the peak of saved-activation bytes (from a saved-tensor hook) to the resident
    bytes; the profiled transient peak of a step is added before comparing with the budget, since
    temporaries are not visible to the hook. This is the accounting the cost model Mem(S) is built
    from, not the allocator's view (on CUDA, `cuda_peak` gives that). Over budget raises
    `BudgetExceeded` mid-round.
    """

    def __init__(self, model: nn.Module, trainable: list[torch.Tensor], transient: int, budget: int | None) -> None:
        self.resident = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers()) + 3 * tensor_bytes(trainable)
        self.transient = transient
        self.budget = budget
        self.meter = SavedBytesMeter(model)

    @property
    def counted(self) -> int:
        """Resident bytes plus the largest saved-activation total seen so far."""
        return self.resident + self.meter.peak_saved

    def check(self) -> None:
        """Stop the client when counted memory plus the transient peak exceeds the budget."""
        if self.budget is not None and self.counted + self.transient > self.budget:
            raise BudgetExceeded(f"counted {self.counted + self.transient} bytes (resident + saved tensors + "
                                 f"transient) exceed the budget of {self.budget}")


def reset_cuda_peak(device: str) -> None:
    """Start a new peak of the CUDA caching allocator on `device` (nothing on another device)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak(device: str) -> dict[str, int]:
    """`{"cuda_peak_bytes": the allocator's peak allocated bytes since `reset_cuda_peak`}` on CUDA, `{}` on
    another device (there is no allocator peak to read)."""
    if torch.device(device).type != "cuda":
        return {}
    return {"cuda_peak_bytes": int(torch.cuda.max_memory_allocated(device))}


def to_inputs(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """Model keyword arguments for a tokenized batch (`label` becomes `labels`), its trailing
    all-padding columns cut (`data.tokenize.trim_padding`)."""
    inputs = {key: value.to(device) for key, value in trim_padding(batch).items() if key != "label"}
    inputs["labels"] = batch["label"].to(device)
    return inputs


def plan_ranks(unit_map: UnitMap, plan: Plan) -> dict[str, int]:
    """LoRA parameter name -> the rank the plan trains it at (empty at full rank)."""
    if plan.ranks is None:
        return {}
    return {key: rank for j, rank in zip(plan.units, plan.ranks) for key in unit_map.units[j].lora_keys}


def rank_metrics(plan: Plan) -> dict[str, float]:
    """The plan's LoRA rank for the round record: `rank` when uniform, else the mean as `mean_rank`."""
    if not plan.ranks:
        return {}
    if len(set(plan.ranks)) == 1:
        return {"rank": plan.ranks[0]}
    return {"mean_rank": sum(plan.ranks) / len(plan.ranks)}


def train_client(model: nn.Module, unit_map: UnitMap, global_state: dict[str, torch.Tensor], plan: Plan,
                 data: Dataset, settings: TrainSettings, client_id: int, seed: int, transient: int = 0) -> ClientUpdate:
    """Train the plan's units (and head) with AdamW under the memory watch; return the update.

    At a plan rank below the full rank, the units' LoRA tensors are trained and returned at that rank.
    Metrics: loss, steps, seconds, `saved_tensor_bytes` (the step's memory as the cost model counts it:
    resident + peak saved tensors + profiled transient) and, on CUDA, `cuda_peak_bytes` (the allocator's peak
    over the client's round).
    """
    started = time.perf_counter()
    reset_cuda_peak(settings.device)
    load_adapter_state(model, global_state)
    with reduced_rank(model, plan_ranks(unit_map, plan)):
        trainable = set(set_trainable(model, unit_map, plan.units))
        params = [p for name, p in model.named_parameters() if name in trainable]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        watch = MemoryWatch(model, params, transient, plan.budget_bytes if plan.enforce_budget else None)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model.train()
        losses = []
        with watch.meter:
            for indices in batch_indices(len(data), plan.local_steps, settings.batch_size, generator):
                with autocast(settings.precision, settings.device):
                    loss = model(**to_inputs(data[indices], settings.device)).loss
                watch.check()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
        metrics = {"loss": sum(losses) / len(losses), "steps": len(losses), "seconds": time.perf_counter() - started,
                   "saved_tensor_bytes": watch.counted + transient, **cuda_peak(settings.device),
                   **rank_metrics(plan)}
        return ClientUpdate(client_id, adapter_state(model, unit_map, plan.units), len(data), metrics)


def ig_indices(num_examples: int, training: torch.Tensor, examples: int, seed: int) -> torch.Tensor:
    """A seeded IG set of up to `examples` of the client's examples that this round's training batches
    (`training`, the indices they draw) do not use; when fewer than 2 are left unused (every example
    is trained on), a seeded draw from all examples instead."""
    generator = torch.Generator().manual_seed(seed + 1)
    unused = torch.ones(num_examples, dtype=torch.bool)
    unused[training] = False
    pool = torch.nonzero(unused).flatten()
    if len(pool) < 2:
        pool = torch.arange(num_examples)
    return pool[torch.randperm(len(pool), generator=generator)[:examples]]


def score_client(model: nn.Module, unit_map: UnitMap, global_state: dict[str, torch.Tensor], units: tuple[int, ...],
                 data: Dataset, settings: TrainSettings, scoring: ScoreSettings, micro_batch: int,
                 seed: int) -> dict[int, tuple[float, ...]]:
    """Local IG-Scores of `units` at each rank option (`assign/ig_score.py`), in eval mode, on a seeded IG
    set disjoint from the round's training batches, in micro-batches of `micro_batch` examples."""
    if not units:
        return {}
    load_adapter_state(model, global_state)
    training = torch.cat(batch_indices(len(data), scoring.local_steps, settings.batch_size,
                                       torch.Generator().manual_seed(seed)))
    chosen = ig_indices(len(data), training, scoring.examples, seed)
    halves = chosen.tensor_split(2) if scoring.unbiased and len(chosen) >= 2 else (chosen,)
    sets = [[to_inputs(data[idx], settings.device) for idx in half.split(micro_batch)] for half in halves]
    model.eval()

    def loss_fn(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(settings.precision, settings.device):
            return net(**batch).loss

    return local_scores(model, unit_map, units, sets, loss_fn, scoring.ranks, scoring.kind, scoring.scale)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Dataset, batch_size: int, precision: str, device: str) -> dict[str, float]:
    """Accuracy and mean loss of the current model on a tokenized dataset."""
    model.eval()
    correct, total_loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        inputs = to_inputs(data[start:start + batch_size], device)
        with autocast(precision, device):
            out = model(**inputs)
        total_loss += out.loss.float().item() * len(inputs["labels"])
        correct += (out.logits.argmax(-1) == inputs["labels"]).sum().item()
    return {"accuracy": correct / len(data), "loss": total_loss / len(data)}
