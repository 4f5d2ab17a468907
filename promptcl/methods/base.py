"""The Method contract: the only surface the engine touches (DESIGN.md, "The Method contract").

A method is one ``nn.Module`` holding its backbones and its own learnable parts, built as
``Method(config, backbone, class_names)``; a method that declares ``auxiliary_backbones`` also
gets ``auxiliary={role: backbone}``. For each task t the engine calls

    begin_task(task)                 new classes arrive; must depend on ``task`` alone, because on
                                     resume it is replayed for tasks 0..t before state is loaded
    phases(task) -> [Phase]          the task's training phases, run in order (below)
    end_epoch(phase)                 after every epoch: reduce what steps accumulated
    end_task(task, loader)           statistics over the task's training data (test transforms)
    predict(x) -> logits             over all classes (unseen ones are masked by the engine)

A ``Phase`` names what one stage of a task trains (its parameter groups, optimiser, schedule and
epochs), how a step computes its losses, and where its batches come from: the task's training
data (``"train"``), the same samples through the test transforms (``"plain"``), or batches the
method makes itself (``"method"``: features drawn from stored class Gaussians, cached features).
The engine runs every phase with the same stepper (precision, DDP, clipping), progress bar, log
lines and checkpoints; a run killed anywhere resumes at (task, phase, epoch). The default is one
phase, ``"train"``, made of the config's optimiser settings, ``param_groups()`` and
``training_step(batch)``; methods with more stages (HiDe-Prompt and Hash: task inference and
head alignment) override ``phases``.

Everything a method learns lives in parameters and buffers, so ``state_dict()`` is the method;
frozen backbones are rebuilt from their presets, not saved.

Frozen passes (a frozen backbone run without prompts: the query of key-query methods, the
features of end-of-task statistics) go through ``self.frozen(x, compute, name)``: in a run the
engine then computes them once per test, validation or plain-view training sample and reads
them back afterwards (``promptcl.frozen_cache``). A pass whose result can change during the run
(a trained backbone, prompts) must not.

Capabilities are declared, never probed: ``needs_text`` (the backbone must have a text tower),
``modalities`` (the inputs the method can handle), ``auxiliary_backbones`` (config fields, each a
``BackboneConfig``, naming frozen backbones the engine builds and hands over by role),
``cumulative_data`` (joint training), ``ddp_find_unused``; ``MethodConfig.task_oracle`` marks a
run that uses test-time batch voting.

Several processes (torchrun): a step sees this process's slice of the global batch ("train",
"plain") and DDP averages the gradients; "method" batches are the same on every process, which
all take the same step. ``end_task``, ``Phase.prepare`` and ``Phase.finish`` see only this
process's contiguous block of the task's data: a method that computes statistics there combines
them with ``promptcl.collectives`` (``all_reduce_sum``, ``all_gather_cat``) so that every process
ends the task in the same state; the engine checks that it does. Both are the identity in one
process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from promptcl import collectives
from promptcl.backbones.base import Backbone
from promptcl.config import MethodConfig
from promptcl.frozen_cache import FrozenCache
from promptcl.prompts.query import QueryCache

DataSource = Literal["train", "plain", "method"]


class Batch(NamedTuple):
    """A training batch: inputs (B, ...), labels (B,) in the remapped label space, and each
    sample's stable index in its training set (keys per-sample caches such as the query cache)."""

    x: Tensor
    y: Tensor
    index: Tensor


@dataclass(frozen=True)
class Task:
    """One task of the stream: its index and its classes ``[start, end)`` in the remapped labels."""

    index: int
    start: int
    end: int
    num_tasks: int

    @property
    def classes(self) -> range:
        return range(self.start, self.end)


@dataclass(frozen=True)
class Optim:
    """The optimiser and per-epoch lr schedule of a phase (``engine.optim`` builds them).

    schedule: constant, cosine, coda-cosine, step (see ``engine.optim.build_schedule``), or
    cosine-annealing (torch's ``CosineAnnealingLR`` over the phase's epochs, as HiDe-Prompt's
    alignment calls it).
    """

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    decay_epochs: int = 30
    decay_rate: float = 0.1
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    grad_clip: float | None = None

    @classmethod
    def of(cls, config: MethodConfig) -> Optim:
        """The settings a method's config gives its main phase."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


def parameters_of(parts: list[nn.Module | nn.Parameter]) -> list[nn.Parameter]:
    """The parameters of modules and bare parameters, in order."""
    return [p for m in parts for p in (m.parameters() if isinstance(m, nn.Module) else [m])]


def trainable(groups: list[dict[str, Any]], frozen: list[nn.Parameter]) -> list[dict[str, Any]]:
    """A phase's parameter groups without the ``frozen`` parameters (which stop requiring
    gradients, so no backward pass is spent on them); groups left empty are dropped."""
    for p in frozen:
        p.requires_grad_(False)
    ids = {id(p) for p in frozen}
    kept = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
    return [g for g in kept if g["params"]]


@dataclass(frozen=True)
class Phase:
    """One training stage of a task (see the module docstring).

    param_groups: called once when the phase starts: what its optimiser trains (groups may carry
                  their own ``lr``). A phase with no parameters or no epochs trains nothing.
    step:         a batch -> losses; ``losses["loss"]`` is optimised, the rest are logged.
    data:         "train" / "plain" (the engine shuffles and shards the task's data into global
                  batches of ``batch_size``) or "method" (``batches(epoch)`` yields them).
    prepare:      run before the first epoch AND again when a run resumes inside the phase, with
                  this process's block of the task's plain data, without gradients: it may only
                  rebuild what is not state (caches), deterministically.
    finish:       run once after the last epoch (also when the phase has no epochs), with the
                  same loader, without gradients: statistics that become state (class
                  Gaussians, task inference features); it may draw random numbers.
    """

    name: str
    epochs: int
    param_groups: Callable[[], list[dict[str, Any]]]
    step: Callable[[Batch], dict[str, Tensor]]
    optim: Optim = field(default_factory=Optim)
    data: DataSource = "train"
    batch_size: int = 128
    batches: Callable[[int], Iterable[Batch]] | None = None
    prepare: Callable[[DataLoader], None] | None = None
    finish: Callable[[DataLoader], None] | None = None

    def __post_init__(self) -> None:
        if (self.data == "method") != (self.batches is not None):
            raise ValueError(f"phase {self.name!r}: data 'method' and batches go together")


class Method(nn.Module, ABC):
    """Base class of every continual-learning method."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # Joint training sees the data of every task so far; every other method only the current one.
    cumulative_data: ClassVar[bool] = False
    # True if a training step may leave some trainable parameter out of the loss (several
    # processes: DDP must then look for such parameters, see engine.distributed.data_parallel).
    ddp_find_unused: bool = False
    # The backbone must have a text tower (``Backbone.supports_text``): CLIP-based methods.
    needs_text: ClassVar[bool] = False
    # The inputs the method handles ("image": (B, C, H, W), "video": (B, T, C, H, W)).
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "video"})
    # Config fields (each a BackboneConfig) of frozen backbones built by the engine, by role.
    auxiliary_backbones: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: MethodConfig,
        backbone: Backbone,
        class_names: list[str],
        auxiliary: Mapping[str, Backbone] | None = None,
    ):
        super().__init__()
        self.config = config
        self.backbone = backbone
        # Frozen backbones by role (``auxiliary_backbones``); not saved in checkpoints.
        self.auxiliary = nn.ModuleDict(dict(auxiliary or {}))
        self.class_names = list(class_names)  # in label order (CLIP-based methods caption them)
        self.num_classes = len(class_names)
        self.task: Task | None = None
        # The per-sample query cache of key-query methods (``prompts.query``), if one is kept.
        self.query_cache: QueryCache | None = None
        # The run's cache of frozen passes (``promptcl.frozen_cache``), set by the trainer.
        self.frozen_cache: FrozenCache | None = None

    # -- the contract -------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        self.task = task

    def phases(self, task: Task) -> list[Phase]:
        """The task's training phases; by default one, from the config (see the module doc)."""
        cfg = self.config
        return [
            Phase(
                "train",
                cfg.epochs,
                self.param_groups,
                self.training_step,
                Optim.of(cfg),
                batch_size=cfg.batch_size,
            )
        ]

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        """The method's prompts and what picks or makes them (keys, components, routers,
        generators): what ``method.freeze_prompts`` keeps at its initialisation. Default: none."""
        return []

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters every phase leaves as they are (the "prompts frozen" ablation, when the
        config has ``freeze_prompts: true``); the engine drops them from the optimiser."""
        if not getattr(self.config, "freeze_prompts", False):
            return []
        return parameters_of(self.prompt_state())

    def end_epoch(self, phase: Phase) -> None:
        """After every epoch of ``phase``, before its checkpoint: combine what the steps of this
        process accumulated with the other processes' (``promptcl.collectives``). Default:
        nothing."""

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        raise RuntimeError(f"{type(self).__name__} has nothing to train: set method.epochs=0")

    @torch.no_grad()
    def end_task(self, task: Task, loader: DataLoader) -> None:
        """Called once the task's phases are done; ``loader`` reads this process's block of the
        task's training data through test-time transforms. Default: nothing."""

    def frozen_state_prefixes(self) -> list[str]:
        """State-dict prefixes of the frozen backbones, which checkpoints leave out."""
        named = [("backbone", self.backbone)] + [
            (f"auxiliary.{role}", b) for role, b in self.auxiliary.items()
        ]
        return [f"{name}." for name, b in named if b.frozen]

    @abstractmethod
    def predict(self, x: Tensor) -> Tensor:
        """(B, ...) inputs -> (B, num_classes) logits; no task identity."""

    # -- helpers shared by methods ------------------------------------------------------------
    def frozen(self, x: Tensor, compute: Callable[[Tensor], Tensor], name: str = "query") -> Tensor:
        """``compute(x)`` for a pass that does not change during the run (a frozen backbone
        without prompts), read from the run's cache for samples it has already seen. ``x`` must
        be the batch the engine handed over (or its flattened views); ``name`` tells a method's
        frozen passes apart."""
        if self.frozen_cache is None:
            return compute(x)
        return self.frozen_cache(x, compute, name)

    def mask_for_training(self, logits: Tensor) -> Tensor:
        """Mask logits of classes that cannot be trained on now (L2P's ``train_mask``).

        With ``train_mask`` only the current task's classes compete (L2P/DualPrompt/HiDe/CODA);
        without it every class seen so far does. Classes of future tasks are always masked.
        """
        assert self.task is not None, "begin_task was not called"
        start = self.task.start if self.config.train_mask else 0
        masked = torch.full_like(logits, float("-inf"))
        masked[:, start : self.task.end] = logits[:, start : self.task.end]
        return masked


@torch.no_grad()
def class_means(
    loader: DataLoader, encode: Callable[[Tensor], Tensor], num_classes: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The mean ``encode`` feature of each class of this process's block of a task's data, summed
    over processes: (C, F) means (zero rows for absent classes) and the (C,) mask of the classes
    present. Sums are accumulated in float64: exact in practice for float32 features, so the means
    depend on neither the number of processes nor the order."""
    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64, device=device)
    for x, y, *_ in loader:
        y, features = y.to(device), encode(x.to(device)).double()
        if sums is None:
            sums = features.new_zeros(num_classes, features.shape[1])
        sums.index_add_(0, y, features)
        counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
    assert sums is not None, "class_means: the loader is empty"
    collectives.all_reduce_sum(sums)
    collectives.all_reduce_sum(counts)
    return sums / counts.clamp(min=1)[:, None], counts > 0


@torch.no_grad()
def gather_features(
    loader: DataLoader, encode: Callable[[Tensor], Tensor], device: torch.device
) -> tuple[Tensor, Tensor]:
    """``encode`` of this process's block of a task's data and the labels, gathered in order over
    processes, so that every process fits the same statistics from them."""
    features, labels = [], []
    for x, y, *_ in loader:
        features.append(encode(x.to(device)))
        labels.append(y.to(device))
    return collectives.all_gather_cat(torch.cat(features)), collectives.all_gather_cat(
        torch.cat(labels)
    )
