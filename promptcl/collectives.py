"""Collectives for statistics computed by several processes, usable from any module.

Methods and prompt parts (which import nothing from ``promptcl.engine``) call these on what they
accumulate from their own shard of the data: ``all_reduce_sum`` for sums and counts (class sums,
activation counts), ``all_gather_cat`` for per-sample features that every process must see
(k-means, heads trained on features), so that every rank ends a task with the same state. Every
helper is the identity (or a no-op) in a single process, so callers need no condition. The
process group itself is started by ``promptcl.engine.distributed.launched``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


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


def tensors(state: dict[str, Any], prefix: str = "") -> dict[str, Tensor]:
    """The tensors of a state dict, with the tensors of nested dicts (a module's extra state)
    under dotted names."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            out[prefix + key] = value
        elif isinstance(value, dict):
            out.update(tensors(value, f"{prefix}{key}."))
    return out


def check_same(state: dict[str, Any], what: str) -> None:
    """Raise if the tensors of ``state`` differ between ranks (a cheap checksum per tensor).

    Catches a method whose ``end_task`` computed statistics from its own shard without reducing
    them: its ranks would silently continue with different models.
    """
    state = tensors(state)
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
            "promptcl.collectives.all_reduce_sum / all_gather_cat"
        )
