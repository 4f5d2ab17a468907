"""Evaluation without task identity, and the accuracy matrix from stored predictions.

After task t the test sets of tasks 0..t are pooled and read in shuffled batches, so that every
batch mixes tasks (batch-level tricks cannot act as a task oracle). The method predicts logits over
all classes; the logits of classes not seen yet are masked; the predictions are stored and the
accuracy of each task is computed from them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def predict(
    predict_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    seen_classes: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Predicted and true labels over ``dataset`` read in shuffled batches; both (N,) int64."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers
    )
    preds, targets = [], []
    for x, y, *_ in loader:
        logits = predict_fn(x.to(device))[:, :seen_classes]  # (B, seen): unseen classes masked
        preds.append(logits.argmax(dim=1).cpu())
        targets.append(y)
    return torch.cat(preds), torch.cat(targets)


def task_accuracies(preds: Tensor, targets: Tensor, task_ends: list[int]) -> list[float]:
    """Top-1 accuracy (%) on each task's samples; task i owns labels [task_ends[i-1], task_ends[i])."""
    task_of = np.searchsorted(np.asarray(task_ends), targets.numpy(), side="right")
    correct = (preds == targets).numpy()
    return [100.0 * float(correct[task_of == i].mean()) for i in range(len(task_ends))]
