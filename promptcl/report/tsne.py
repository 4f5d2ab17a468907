"""t-SNE of a method's instance prompts: what its final state feeds the frozen backbone for each
test sample, coloured by the sample's task and by its class.

The method is rebuilt from the run's config and final checkpoint (``checkpoints.rebuild``) and
predicts a few test samples per class; a hook on the backbone records the ``LayerPrompts`` of its
last prompted call per batch (the call that makes the features the head reads; task-inference
passes go without prompts). The per-sample tensors (tokens, prefix keys and values, residuals,
values) are flattened into one vector per sample; prompts shared by every sample are left out, as
they move no point. A method that gives its backbone no prompts (fine-tuning, linear probe,
SimpleCIL, joint) has no such figure, and the report says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from promptcl.backbones.base import LayerPrompts
from promptcl.report.plots import Plot, _colors, slug

PER_CLASS = 3  # test samples per class


class NoPrompts(Exception):
    """Why a run has no instance prompts to show."""


def _per_sample(prompts: LayerPrompts, batch: int) -> Tensor | None:
    parts: list[Tensor] = []
    for kind in (prompts.tokens, prompts.residual, prompts.value):
        parts += [kind[layer] for layer in sorted(kind)]
    for layer in sorted(prompts.prefix):
        parts += list(prompts.prefix[layer])
    flat = [p.detach().float().reshape(batch, -1) for p in parts if p.dim() and len(p) == batch]
    return torch.cat(flat, dim=1) if flat else None


def instance_prompts(run_dir: Path, per_class: int = PER_CLASS):
    """(vectors (N, F), tasks (N,), classes (N,)) of test samples; raises NoPrompts."""
    from promptcl.report.checkpoints import rebuild

    parts = rebuild(run_dir)
    if parts is None:
        raise NoPrompts("the run has no checkpoint")
    scenario, method = parts.scenario, parts.method
    calls: list[LayerPrompts] = []

    def record(module, args, kwargs):
        prompts = kwargs.get("prompts", args[1] if len(args) > 1 else None)
        if isinstance(prompts, LayerPrompts) and prompts.kinds() - {"hook"}:
            calls.append(prompts)

    handle = method.backbone.register_forward_pre_hook(record, with_kwargs=True)
    vectors, tasks, classes = [], [], []
    try:
        for t in range(scenario.num_tasks):
            view = scenario.test_view(t)
            picked: dict[int, list[int]] = {}
            for i, y in enumerate(view.targets):
                if len(picked.setdefault(y, [])) < per_class:
                    picked[y].append(i)
            items = [view[i] for members in picked.values() for i in members]
            x = torch.stack([item[0] for item in items])
            calls.clear()
            with torch.no_grad():
                method.predict(x)
            if not calls:
                raise NoPrompts("the method gives its backbone no prompts")
            flat = _per_sample(calls[-1], len(x))
            if flat is None:
                raise NoPrompts("its prompts are the same for every sample")
            vectors.append(flat)
            tasks += [t] * len(items)
            classes += [int(item[1]) for item in items]
    finally:
        handle.remove()
    return torch.cat(vectors).numpy(), np.array(tasks), np.array(classes)


def embed(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, int]:
    """2-D points for the samples and the number of distinct prompts among them.

    A t-SNE (scikit-learn) of the distinct vectors after a PCA to at most 50 dimensions (with
    fewer than 6 distinct vectors, their first two principal components). Methods that pick one
    of a few prompts per sample (DualPrompt's or HiDe-Prompt's task prompts) give many samples
    the same vector: those samples are spread in a small ring around their vector's point, so
    that how many chose it, and from which tasks, stays visible."""
    unique, inverse = np.unique(vectors.round(6), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    x = unique - unique.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    x = u[:, :50] * s[:50]
    if len(unique) >= 6:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(unique) - 1) / 3)
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    else:
        points = np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    points = points[inverse].astype(float)
    counts = np.bincount(inverse)
    if (counts > 1).any():
        span = float(np.ptp(points, axis=0).max()) or 1.0
        rng = np.random.default_rng(seed)
        shared = counts[inverse] > 1
        angle = rng.uniform(0, 2 * np.pi, shared.sum())
        radius = 0.03 * span * np.sqrt(rng.uniform(0, 1, shared.sum()))
        points[shared] += np.stack([np.cos(angle), np.sin(angle)], 1) * radius[:, None]
    return points, len(unique)


def tsne_plot(label: str, run_dir: Path, seed: int | None) -> Plot:
    vectors, tasks, classes = instance_prompts(run_dir)
    points, distinct = embed(vectors)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    by_task, by_class = fig.subplots(1, 2)
    T = int(tasks.max()) + 1
    for t, color in zip(range(T), _colors(T), strict=True):
        at = tasks == t
        by_task.scatter(*points[at].T, s=9, color=color, label=f"task {t + 1}")
    by_task.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    scatter = by_class.scatter(*points.T, s=9, c=classes, cmap="turbo")
    fig.colorbar(scatter, ax=by_class, label="class (in the order learned)")
    by_task.set_title("coloured by task")
    by_class.set_title("coloured by class")
    for ax in (by_task, by_class):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{label}: instance prompts of {len(points)} test samples (t-SNE)")
    shared = (
        f" They hold {distinct} distinct prompts: the samples that share one are spread around "
        "its point."
        if distinct < len(points)
        else ""
    )
    return Plot(
        f"tsne_{slug(label)}",
        f"Instance prompts (t-SNE): {label}",
        fig,
        f"The prompts the final model gives the backbone for {PER_CLASS} test samples per class "
        f"({vectors.shape[1]} numbers each; run {run_dir.name}, seed {seed}).{shared}",
    )
