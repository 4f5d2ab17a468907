"""The Method contract: the only surface the trainer touches (DESIGN.md, "The Method contract").

A method is one ``nn.Module`` holding the frozen backbone and its own learnable parts. The trainer
calls, for each task t:

    begin_task(task)                 new classes arrive; must depend on ``task`` alone, because on
                                     resume it is replayed for tasks 0..t before state is loaded
    param_groups()                   what the optimiser trains this task
    training_step(batch) -> losses   ``losses["loss"]`` is optimised; other entries are logged
    end_task(task, loader)           statistics over the task's training data (test transforms)
    predict(x) -> logits             over all classes (unseen ones are masked by the trainer)

Everything a method learns lives in parameters and buffers, so ``state_dict()`` is the method.

Several processes (torchrun): ``training_step`` sees this process's slice of the global batch and
its gradients are averaged by DDP; nothing to do. ``end_task``'s loader holds only this process's
contiguous block of the task's data: a method that computes statistics there must combine them
with ``promptcl.engine.distributed`` (``all_reduce_sum`` for sums and counts, ``all_gather_cat``
for per-sample features), so that every process ends the task with the same state. The trainer
checks that it does and stops with an error otherwise. Both are the identity in one process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone
from promptcl.config import MethodConfig


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


class Method(nn.Module, ABC):
    """Base class of every continual-learning method."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # Joint training sees the data of every task so far; every other method only the current one.
    cumulative_data: ClassVar[bool] = False
    # True if a training step may leave some trainable parameter out of the loss (several
    # processes: DDP must then look for such parameters, see engine.distributed.data_parallel).
    ddp_find_unused: bool = False

    def __init__(self, config: MethodConfig, backbone: Backbone, class_names: list[str]):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.class_names = list(class_names)  # in label order (CLIP-based methods caption them)
        self.num_classes = len(class_names)
        self.task: Task | None = None

    # -- the contract -------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        self.task = task

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        raise RuntimeError(f"{type(self).__name__} has nothing to train: set method.epochs=0")

    @torch.no_grad()
    def end_task(self, task: Task, loader: DataLoader) -> None:
        """Called once the task's epochs are done; ``loader`` reads this process's block of the
        task's training data through test-time transforms. Default: nothing."""

    @abstractmethod
    def predict(self, x: Tensor) -> Tensor:
        """(B, ...) inputs -> (B, num_classes) logits; no task identity."""

    # -- helpers shared by methods ------------------------------------------------------------
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
