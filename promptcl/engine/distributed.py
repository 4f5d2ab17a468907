"""Multi-process training: the process group, the collectives, and the DDP wrapper of a method.

This is the one place where promptcl talks to ``torch.distributed``. Every helper is the identity
(or a no-op) in a single process, so methods can call them unconditionally.

Launch: ``torchrun --nproc-per-node N -m promptcl run CONFIG`` (multi-node: torchrun's
``--nnodes``/``--rdzv-endpoint``). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; ``launched`` reads them, starts the process group (nccl when the run's device
is CUDA, gloo otherwise), binds each process to GPU ``LOCAL_RANK`` and tears the group down at the
end.

Methods call ``all_reduce_sum`` on statistics they accumulate from their own shard of the data
(class sums, activation counts) and ``all_gather_cat`` on per-sample features they must all see
(k-means, heads trained on features), so that every rank ends a task with the same state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from promptcl.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


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
    if dev.type != "cuda" or not is_distributed():
        return dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.index is not None and dev.index != local:
        raise ConfigError(
            f"train.device={device!r} names one GPU, but this is process {rank()} of {world_size()}: "
            "set train.device=cuda and each process uses its own GPU (LOCAL_RANK)"
        )
    return torch.device("cuda", local)


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# -- collectives ------------------------------------------------------------------------------
def _comm_device() -> torch.device:
    """nccl moves CUDA tensors only; gloo moves CPU tensors."""
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    if is_distributed():
        moved = tensor.to(_comm_device())
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` (N_r, ...) along dim 0, in rank order, on every rank.

    The N_r may differ between ranks (the last shard of a dataset is often shorter). With
    contiguous shards (``sharding.contiguous_shard``) the result is the whole dataset in order.
    """
    if not is_distributed():
        return tensor
    device = _comm_device()
    local = tensor.detach().to(device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=device))
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]).to(tensor.device)


def check_same(state: dict[str, Tensor], what: str) -> None:
    """Raise if the tensors of ``state`` differ between ranks (a cheap checksum per tensor).

    Catches a method whose ``end_task`` computed statistics from its own shard without reducing
    them: its ranks would silently continue with different models.
    """
    if not is_distributed() or not state:
        return
    sums = []
    for value in state.values():
        flat = value.detach().reshape(-1).to(torch.float64)
        if flat.numel() == 0:
            sums.append(torch.zeros(2, dtype=torch.float64, device=flat.device))
            continue
        ramp = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
        sums.append(torch.stack([flat.nan_to_num().sum(), (flat.nan_to_num() * ramp).sum()]))
    mine = torch.stack(sums).cpu()  # (tensors, 2)
    ranks = all_gather_cat(mine.unsqueeze(0))  # (world, tensors, 2)
    differ = [
        k for k, same in zip(state, (ranks == ranks[:1]).all(0).all(1), strict=True) if not same
    ]
    if differ:
        raise RuntimeError(
            f"{what}: the processes hold different values of {differ[:5]}. A method's end_task "
            "reads only its process's shard of the data; it must reduce what it computes with "
            "promptcl.engine.distributed.all_reduce_sum / all_gather_cat"
        )


# -- data parallelism -------------------------------------------------------------------------
class TrainStep(nn.Module):
    """A module whose forward is ``method.training_step``, for DistributedDataParallel.

    It registers only the parameters the optimiser trains (as a ``ParameterList`` of the method's
    own ``Parameter`` objects), and holds the method outside its submodules. DDP therefore
    broadcasts (when it is built) and averages exactly the trainable parameters (prompts, keys,
    heads); the frozen backbone and the method's buffers are not its business (the module has no
    buffers; class statistics are reduced by the methods at the end of the task).
    """

    def __init__(self, method: nn.Module, params: list[nn.Parameter]):
        super().__init__()
        self.trainable = nn.ParameterList(params)
        object.__setattr__(self, "method", method)  # not a submodule: DDP must not see it

    def forward(self, batch: Any) -> dict[str, Tensor]:
        return self.method.training_step(batch)


def data_parallel(method: nn.Module, params: list[nn.Parameter]) -> nn.Module:
    """``training_step`` behind DistributedDataParallel: gradients of ``params`` are averaged over
    ranks during backward, exactly as DDP does for any model.

    Rebuilt at every task, because the trainable parameters change between tasks (HiDe adds a
    prompt per task, CODA-Prompt trains new rows). A method whose steps may leave a trainable
    parameter out of the loss (a per-sample expert no sample picked, the text tower of a
    fine-tuned CLIP) sets ``ddp_find_unused = True``: DDP then looks for such parameters in every
    step (one walk of the autograd graph) and leaves their gradients as one process would
    (None). Otherwise DDP stops at the next step with an error naming them.
    """
    device = next(iter(params)).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        TrainStep(method, params),
        device_ids=ids,
        find_unused_parameters=bool(getattr(method, "ddp_find_unused", False)),
    )
