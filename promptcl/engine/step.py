"""One optimisation step of a phase, and the speed options around it.

``Stepper`` is the step the trainer (for every phase of a task) and ``promptcl bench`` both run:
the phase's step under autocast, backward (through a GradScaler for fp16), the gradient
all-reduce of DistributedDataParallel when several processes share the batch, clipping, and the
optimiser step.

Precision (``train.precision``): "fp32" (default) runs without autocast. "bf16" autocasts the
forward to bfloat16 (CUDA or CPU; on CPUs without native bf16 matrix units it is usually slower
than fp32). "fp16" autocasts to float16 and scales the loss with a GradScaler; it needs CUDA.
Parameters, optimiser states and end-of-task statistics stay in fp32 (``end_task`` runs without
autocast).

``train.compile`` compiles the backbone's prompted forward with ``torch.compile`` (in place, so
state dicts keep their names). The first steps are slow while it compiles (and again when a new
batch shape or prompt layout appears).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from promptcl.engine import distributed
from promptcl.methods.base import Batch, Method

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``train.precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def compile_backbone(method: Method) -> None:
    """``torch.compile`` the backbone's forward in place (``nn.Module.compile``)."""
    method.backbone.compile()


class Stepper:
    """Runs steps of ``step`` (a phase's batch -> losses) with ``optimizer`` under ``precision``.

    ``parallel``: several processes share each batch, so the step goes through
    ``distributed.data_parallel`` (rebuild the Stepper at every phase: the trainable parameters
    change). ``share`` scales the loss of a process whose slice of the global batch is not 1/W of
    it (``sharding.ShardedBatches.shares``).
    """

    def __init__(
        self,
        step: Callable[[Batch], dict[str, Tensor]],
        optimizer: torch.optim.Optimizer,
        precision: str,
        grad_clip: float | None,
        device: torch.device,
        parallel: bool = False,
        find_unused: bool = False,
    ):
        self.optimizer, self.device = optimizer, device
        self.precision, self.grad_clip = precision, grad_clip
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.forward = (
            distributed.data_parallel(step, self.params, find_unused) if parallel else step
        )

    def __call__(self, batch: Batch, share: float = 1.0) -> dict[str, Tensor]:
        with autocast(self.precision, self.device):
            losses = self.forward(batch)
        loss = losses["loss"] if share == 1.0 else losses["loss"] * share
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return losses

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
