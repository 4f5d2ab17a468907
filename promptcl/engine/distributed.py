"""Multi-process training: the process group and the DDP wrapper of a training step.

With ``promptcl.collectives`` (the collectives, usable below the engine) this is where promptcl
talks to ``torch.distributed``.

Launch: ``torchrun --nproc-per-node N -m promptcl run CONFIG`` (multi-node: torchrun's
``--nnodes``/``--rdzv-endpoint``). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; ``launched`` reads them, starts the process group (nccl when the run's device
is CUDA, gloo otherwise), binds each process to GPU ``LOCAL_RANK`` and tears the group down at the
end.

Methods combine what they compute from their own shard with ``promptcl.collectives``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from promptcl.collectives import is_distributed, rank, world_size
from promptcl.errors import ConfigError


def env_rank() -> int:
    """The rank torchrun gave this process (0 outside torchrun), readable without a process group."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# -- the process group ------------------------------------------------------------------------
@contextmanager
def launched(device: str) -> Iterator[None]:
    """Start the process group torchrun asked for (if any, and if none is running) and end it.

    ``device`` is the run's ``train.device``: "cuda" gives the nccl backend and binds the process
    to GPU ``LOCAL_RANK``; anything else gives gloo. A group the caller started is left alone.
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise ConfigError(
            "torchrun started several processes, but this torch has no distributed support"
        )
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={device!r} but CUDA is not available: use train.device=cpu"
            )
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def device_for(device: str) -> torch.device:
    """The torch device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-process run."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device!r}, but this machine has no CUDA device: set train.device=cpu"
        )
    if dev.type != "cuda" or not is_distributed():
        return dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.index is not None and dev.index != local:
        raise ConfigError(
            f"train.device={device!r} names one GPU, but this is process {rank()} of {world_size()}: "
            "set train.device=cuda and each process uses its own GPU (LOCAL_RANK)"
        )
    return torch.device("cuda", local)


# -- data parallelism -------------------------------------------------------------------------
class TrainStep(nn.Module):
    """A module whose forward is a phase's training step, for DistributedDataParallel.

    It registers only the parameters the optimiser trains (as a ``ParameterList`` of the method's
    own ``Parameter`` objects) and holds the step outside its submodules. DDP therefore broadcasts
    (when it is built) and averages exactly the trainable parameters (prompts, keys, heads); the
    frozen backbone and the method's buffers are not its business (the module has no buffers;
    statistics are reduced by the methods with ``promptcl.collectives``).
    """

    def __init__(self, step: Callable, params: list[nn.Parameter]):
        super().__init__()
        self.trainable = nn.ParameterList(params)
        object.__setattr__(self, "step", step)  # not a submodule: DDP must not see the method

    def forward(self, batch):
        return self.step(batch)


def data_parallel(step: Callable, params: list[nn.Parameter], find_unused: bool) -> nn.Module:
    """``step`` behind DistributedDataParallel: gradients of ``params`` are averaged over ranks
    during backward, exactly as DDP does for any model.

    Rebuilt at every phase, because the trainable parameters change (HiDe adds a prompt per task,
    CODA-Prompt trains new rows). A method whose steps may leave a trainable parameter out of the
    loss (a per-sample expert no sample picked, the text tower of a fine-tuned CLIP) sets
    ``ddp_find_unused = True``: DDP then looks for such parameters in every step (one walk of the
    autograd graph) and leaves their gradients as one process would (None). Otherwise DDP stops at
    the next step with an error naming them.
    """
    device = next(iter(params)).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        TrainStep(step, params), device_ids=ids, find_unused_parameters=find_unused
    )
