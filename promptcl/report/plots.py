"""The report's figures (matplotlib's object API, no display needed), from run directories.

- ``accuracy_curves``: the average accuracy after each task (task-balanced, a_t = mean_{i<=t}
  A[i, t]) of every method on one figure per benchmark, the mean over seeds with a band of one
  standard deviation.
- ``accuracy_matrices``: each method's accuracy matrix (mean over seeds) as a heatmap.
- ``old_new``: accuracy on the earlier tasks (task-balanced mean of A[i, t], i < t) and on the
  newest task (A[t, t]) after each task.
- ``expert_activation``: Hash's share of each task's Top-K choices per expert, from the counts its
  final checkpoint keeps (``history``: the counts before each task; ``counts``: after the last).

Only complete runs are drawn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from promptcl import metrics
from promptcl.report.table import Row


@dataclass
class Plot:
    name: str  # file stem
    title: str
    figure: Figure
    caption: str = ""


def slug(text: str) -> str:
    """A file-name-safe form of a label: ``hash (method.hdr=none)`` -> ``hash_method.hdr-none``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("=", "-")).strip("_")


def _complete_matrices(row: Row) -> list[np.ndarray]:
    return [r.accuracy for r in row.complete if r.accuracy is not None]


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def accuracy_curves(table: list[Row]) -> list[Plot]:
    plots = []
    for benchmark in dict.fromkeys(row.benchmark for row in table):
        drawn = [r for r in table if r.benchmark == benchmark and _complete_matrices(r)]
        if not drawn:
            continue
        fig = Figure(figsize=(7.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for row, color in zip(drawn, _colors(len(drawn)), strict=True):
            curves = np.array([metrics.average_accuracies(A) for A in _complete_matrices(row)])
            x = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(0)
            std = curves.std(0, ddof=1) if len(curves) > 1 else None
            if len(x) == 1:  # one task (joint training on every class): a level, not a curve
                ax.axhline(mean[0], color=color, ls="--", lw=1.5, label=f"{row.method} (one task)")
                if std is not None:
                    ax.axhspan(mean[0] - std[0], mean[0] + std[0], color=color, alpha=0.12, lw=0)
                continue
            ax.plot(x, mean, color=color, label=row.method, lw=1.8)
            if std is not None:
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, lw=0)
        T = max(len(_complete_matrices(r)[0]) for r in drawn)
        ax.set_xticks(range(1, T + 1))
        ax.set_xlabel("after task")
        ax.set_ylabel("average accuracy on the tasks seen (%)")
        ax.set_title(benchmark)
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
        plots.append(
            Plot(
                f"accuracy_curves_{slug(benchmark)}",
                f"Accuracy after each task: {benchmark}",
                fig,
                "a_t = mean over the seen tasks i <= t of A[i, t]; the band is one standard "
                "deviation over seeds.",
            )
        )
    return plots


def accuracy_matrices(table: list[Row]) -> list[Plot]:
    plots = []
    for benchmark in dict.fromkeys(row.benchmark for row in table):
        drawn = [r for r in table if r.benchmark == benchmark and _complete_matrices(r)]
        drawn = [r for r in drawn if len(_complete_matrices(r)[0]) > 1]  # (one task: no matrix)
        if not drawn:
            continue
        cols = min(4, len(drawn))
        rows_ = -(-len(drawn) // cols)
        fig = Figure(figsize=(3.3 * cols, 3.1 * rows_), layout="constrained")
        axes = fig.subplots(rows_, cols, squeeze=False)
        image = None
        for ax, row in zip(axes.flat, drawn, strict=False):
            A = np.mean(np.stack(_complete_matrices(row)), axis=0)
            A = np.where(np.triu(np.ones_like(A, dtype=bool)), A, np.nan)
            image = ax.imshow(A, vmin=0, vmax=100, cmap="viridis")
            T = len(A)
            if T <= 10:
                for i in range(T):
                    for t in range(i, T):
                        color = "white" if A[i, t] < 50 else "black"
                        ax.text(t, i, f"{A[i, t]:.0f}", ha="center", va="center", fontsize=6.5,
                                color=color)  # fmt: skip
            ax.set_xticks(range(T), [str(t + 1) for t in range(T)])
            ax.set_yticks(range(T), [str(t + 1) for t in range(T)])
            ax.set_title(row.method, fontsize=10)
            ax.set_xlabel("after task", fontsize=8)
            ax.set_ylabel("test task", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(drawn) :]:
            ax.set_axis_off()
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy (%)")
        plots.append(
            Plot(
                f"accuracy_matrices_{slug(benchmark)}",
                f"Accuracy matrices: {benchmark}",
                fig,
                "A[i, t]: accuracy on task i's test set after training task t (mean over seeds).",
            )
        )
    return plots


def old_new(table: list[Row]) -> list[Plot]:
    plots = []
    for benchmark in dict.fromkeys(row.benchmark for row in table):
        drawn = [r for r in table if r.benchmark == benchmark and _complete_matrices(r)]
        drawn = [r for r in drawn if len(_complete_matrices(r)[0]) > 1]
        if not drawn:
            continue
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        old_ax, new_ax = fig.subplots(1, 2, sharey=True)
        for row, color in zip(drawn, _colors(len(drawn)), strict=True):
            olds, news = [], []
            for A in _complete_matrices(row):
                T = len(A)
                olds.append([np.mean(A[:t, t]) for t in range(1, T)])
                news.append([A[t, t] for t in range(T)])
            old_ax.plot(range(2, T + 1), np.mean(olds, 0), color=color, label=row.method)
            new_ax.plot(range(1, T + 1), np.mean(news, 0), color=color, label=row.method)
        old_ax.set_title("old tasks: mean of A[i, t] over i < t")
        new_ax.set_title("newest task: A[t, t]")
        for ax in (old_ax, new_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("after task")
            ax.grid(alpha=0.3)
        old_ax.set_ylabel("accuracy (%)")
        new_ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
        plots.append(
            Plot(
                f"old_new_{slug(benchmark)}",
                f"Old and new accuracy per task: {benchmark}",
                fig,
                "Mean over seeds. Stability (old tasks) against plasticity (the newest task).",
            )
        )
    return plots


def expert_counts(run_dir) -> np.ndarray | None:
    """Hash's Top-K selections per task and expert, (T, E), from the run's final checkpoint;
    None without one."""
    from promptcl.report.checkpoints import load_method_state

    state = load_method_state(run_dir)
    if state is None or "history" not in state or "counts" not in state:
        return None
    history = state["history"].long().numpy()  # (T, E): the counts before task t
    after = np.concatenate([history, state["counts"].long().numpy()[None]])  # (T + 1, E)
    return np.diff(after, axis=0)


def expert_activation(table: list[Row]) -> list[Plot]:
    plots = []
    for row in table:
        runs = [r for r in row.complete if r.method == "hash"]
        per_run = [c for c in (expert_counts(r.path) for r in runs) if c is not None]
        if not per_run:
            continue
        counts = np.sum(per_run, axis=0).astype(float)  # (T, E), summed over seeds
        share = 100 * counts / counts.sum(1, keepdims=True).clip(min=1)
        T, E = share.shape
        fig = Figure(figsize=(7.5, 4), layout="constrained")
        ax = fig.add_subplot()
        bottom = np.zeros(T)
        for e, color in zip(range(E), _colors(E), strict=True):
            ax.bar(range(1, T + 1), share[:, e], bottom=bottom, color=color, label=f"expert {e}")
            bottom += share[:, e]
        ax.set_xticks(range(1, T + 1))
        ax.set_xlabel("task")
        ax.set_ylabel("share of the task's Top-K choices (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{row.method} on {row.benchmark}: expert activation per task")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
        plots.append(
            Plot(
                f"expert_activation_{slug(row.label)}_{slug(row.benchmark)}",
                f"Expert activation: {row.method}, {row.benchmark}",
                fig,
                f"Counts of the training steps' Top-K selections, over {len(per_run)} seed(s).",
            )
        )
    return plots
