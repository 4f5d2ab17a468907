"""Optimisers and per-epoch learning-rate schedules of a phase.

``cfg`` is a ``methods.base.Optim`` (or anything with its fields: a ``MethodConfig`` has
them); ``epochs`` is the phase's number of epochs.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
    """Groups may carry their own ``lr``; the rest take ``cfg.lr``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    optim = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optim(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: Any, epochs: int | None = None
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch multiplier of each group's base lr.

    cosine:      0.5 (1 + cos(pi e / K)) over K = epochs; with ``warmup_epochs`` W > 0 or
                 ``min_lr`` m > 0, as VideoMAE's ``cosine_scheduler`` (VideoMamba, SSP) at epoch
                 starts: a linear rise from ``warmup_lr`` over W epochs, then
                 m + (lr - m) 0.5 (1 + cos(pi (e - W) / (K - W))).
    coda-cosine: cos(99 pi e / (200 (K - 1))), CODA-Prompt's and mammoth's ``CosineSchedule``
                 (GT-RIPL/CODA-Prompt utils/schedulers.py): almost zero at the last epoch.
    step:        rate ** ((e - 1) // decay_epochs) for e >= 1, timm's ``StepLRScheduler`` as the
                 L2P/DualPrompt/HiDe-Prompt PyTorch engines call it: ``step(epoch)`` after epoch
                 ``epoch`` sets the next epoch's lr, so with 30 decay epochs epochs 0..30 run at
                 the base lr and the decay starts at epoch 31.
    cosine-annealing: torch's ``CosineAnnealingLR`` (T_max = epochs, recursive form), as
                 HiDe-Prompt's head alignment calls it.
    ``epochs`` defaults to ``cfg.epochs``.
    """
    epochs = cfg.epochs if epochs is None else epochs
    if cfg.schedule == "cosine-annealing":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    K = max(epochs, 1)
    if cfg.schedule == "cosine":
        factor = _cosine(cfg, K)
    elif cfg.schedule == "coda-cosine":
        factor = lambda e: math.cos(99 * math.pi * e / (200 * (K - 1))) if K > 1 else 1.0  # noqa: E731
    elif cfg.schedule == "step":
        factor = lambda e: cfg.decay_rate ** (max(e - 1, 0) // cfg.decay_epochs)  # noqa: E731
    else:
        factor = lambda e: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _cosine(cfg: Any, epochs: int):
    """The cosine factor of epoch e, after ``warmup_epochs`` of linear warm-up (see above)."""
    warmup, lowest = getattr(cfg, "warmup_epochs", 0), getattr(cfg, "min_lr", 0.0) / cfg.lr
    first = getattr(cfg, "warmup_lr", 0.0) / cfg.lr

    def factor(e: int) -> float:
        if e < warmup:
            return first + (1 - first) * e / warmup
        return lowest + (1 - lowest) * 0.5 * (
            1 + math.cos(math.pi * (e - warmup) / max(epochs - warmup, 1))
        )

    return factor
