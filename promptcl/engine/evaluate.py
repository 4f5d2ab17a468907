"""Evaluation without task identity, and the accuracy matrix from stored predictions.

After task t the test sets of tasks 0..t are pooled and read in shuffled batches, so that every
batch mixes tasks (batch-level tricks cannot act as a task oracle). Several processes share the
batches and gather their predictions (``predict``). The method predicts logits over
all classes; the logits of classes not seen yet are masked; the predictions are stored and the
accuracy of each task is computed from them.

Multi-view testing of videos (``data.test_clips`` x ``data.test_crops`` > 1): a test item is then
V views of one video, a batch (B, V, T, C, H, W). The method predicts all B x V views at once
(``x.flatten(0, 1)``, so the forward sees B x V clips: size ``train.eval_batch_size`` with that
in mind) and the seen-class logits are averaged over the V views of each video before the argmax,
as in TSN / SlowFast multi-view testing. Images and single-view clips are predicted as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from promptcl import collectives
from promptcl.engine.sharding import ShardedBatches, shuffled_order
from promptcl.engine.step import autocast
from promptcl.frozen_cache import FrozenCache

MULTI_VIEW_DIMS = 6  # a batch (B, V, T, C, H, W) of V test views per video


@torch.no_grad()
def predict(
    predict_fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    seen_classes: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    precision: str = "fp32",
    cache: FrozenCache | None = None,
    view: str = "test",
) -> tuple[Tensor, Tensor]:
    """Predicted and true labels over ``dataset`` read in shuffled batches; both (N,) int64.

    With several processes each predicts its slice of every global batch (``batch_size`` per
    process) and the predictions are gathered, so every process returns the same two tensors, in
    the same (shuffled) order as a single process would. With a ``cache``, each batch's frozen
    passes are read from it under its samples' keys in ``view`` (``promptcl.frozen_cache``).
    """
    world, rank = collectives.world_size(), collectives.rank()
    order = shuffled_order(len(dataset), seed)
    batches = ShardedBatches(order, batch_size * world, world, rank)
    generator = torch.Generator().manual_seed(seed)  # seeds workers; keeps the global RNG untouched
    loader = DataLoader(
        dataset, batch_sampler=batches, generator=generator, num_workers=num_workers
    )
    preds, targets = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    for x, y, *index in loader:  # the scenario's items also carry each sample's index
        views = x.shape[1] if x.dim() == MULTI_VIEW_DIMS else 1  # (B, V, T, C, H, W): V views
        keyed = cache is not None and index
        keys = cache.bind(view, index[0], views) if keyed else contextlib.nullcontext()
        with keys, autocast(precision, device):
            if views > 1:
                logits = predict_fn(x.to(device).flatten(0, 1))[:, :seen_classes]  # (B V, seen)
            else:
                logits = predict_fn(x.to(device))[:, :seen_classes]  # (B, seen): unseen masked
        if views > 1:
            logits = logits.float().unflatten(0, x.shape[:2]).mean(dim=1)  # (B, seen)
        preds.append(logits.argmax(dim=1).cpu())
        targets.append(y)
    mine = torch.stack([torch.tensor(batches.positions()), torch.cat(preds), torch.cat(targets)], 1)
    everything = collectives.all_gather_cat(mine)  # (N, 3): position, prediction, target
    everything = everything[everything[:, 0].argsort()]
    return everything[:, 1].contiguous(), everything[:, 2].contiguous()


def task_accuracies(preds: Tensor, targets: Tensor, task_ends: list[int]) -> list[float]:
    """Top-1 accuracy (%) on each task's samples; task i owns labels [task_ends[i-1], task_ends[i])."""
    task_of = np.searchsorted(np.asarray(task_ends), targets.numpy(), side="right")
    correct = (preds == targets).numpy()
    return [100.0 * float(correct[task_of == i].mean()) for i in range(len(task_ends))]
