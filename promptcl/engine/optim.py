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

    cosine:      0.5 (1 + cos(pi e / K)) over K = epochs.
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
        factor = lambda e: 0.5 * (1 + math.cos(math.pi * e / K))  # noqa: E731
    elif cfg.schedule == "coda-cosine":
        factor = lambda e: math.cos(99 * math.pi * e / (200 * (K - 1))) if K > 1 else 1.0  # noqa: E731
    elif cfg.schedule == "step":
        factor = lambda e: cfg.decay_rate ** (max(e - 1, 0) // cfg.decay_epochs)  # noqa: E731
    else:
        factor = lambda e: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
