"""What a run shows a person: a header, a progress bar per epoch, and a table after every task."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import rich.console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class EpochBar:
    def __init__(self, progress: Progress, task_id):
        self.progress, self.task_id = progress, task_id

    def update(self, loss: float, lr: float, rate: float) -> None:
        self.progress.update(
            self.task_id, advance=1, stats=f"loss {loss:.4f}  lr {lr:.2e}  {rate:.0f} samples/s"
        )


class Console:
    def __init__(self, quiet: bool = False):
        self.rich = rich.console.Console(stderr=True, quiet=quiet)

    def header(
        self,
        config,
        scenario,
        resumed_at: str | None = None,
        world: tuple[int, str | None] = (1, None),
    ) -> None:
        sizes = scenario.task_sizes
        split = (
            f"{sizes[0]} + {len(sizes) - 1}x{sizes[1]}"
            if len(set(sizes[1:])) == 1 and len(sizes) > 1
            else str(sizes)
        )
        self.rich.print(
            f"[bold]promptcl[/] {config.method.name} on {config.data.name} with {config.backbone.name}: "
            f"{scenario.num_tasks} tasks ({split} classes), seed {config.seed}"
        )
        if config.method.task_oracle:
            self.rich.print(
                "[bold red]TASK-ORACLE:[/] batch-wise prompt voting at test time uses the batch's "
                "majority task; these numbers are not class-incremental results"
            )
        for bug in config.method.released_bugs:
            self.rich.print(f"[bold red]RELEASED BUG REPRODUCED:[/] {bug}")
        processes, backend = world
        if processes > 1:
            batch = config.method.batch_size
            self.rich.print(
                f"{processes} processes ({backend}): global batch {batch} = "
                f"{processes} x {batch // processes}"
            )
        if config.train.precision != "fp32" or config.train.compile:
            compiled = ", backbone compiled" if config.train.compile else ""
            self.rich.print(f"precision {config.train.precision}{compiled}")
        if resumed_at is not None:
            self.rich.print(f"resuming at {resumed_at}")
        skipped = scenario.data.skipped
        if skipped:
            self.rich.print(
                f"[yellow]left out {len(skipped)} damaged files (data.on_bad_file: skip)[/], "
                f"e.g. {skipped[0]}; the run log lists them"
            )

    @contextmanager
    def epoch(
        self, task: int, epoch: int, epochs: int, steps: int | None, phase: str = "train"
    ) -> Iterator[EpochBar]:
        progress = Progress(
            TextColumn(f"task {task} {phase} epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self.rich,
            transient=True,
        )
        with progress:
            yield EpochBar(progress, progress.add_task("train", total=steps, stats=""))

    def time_summary(self, seconds: dict[str, float]) -> None:
        """Where the run's time went (this process, since it started or resumed)."""
        total = sum(seconds.values())
        parts = ", ".join(
            f"{k} {v:.1f} s ({100 * v / max(total, 1e-9):.0f}%)" for k, v in seconds.items()
        )
        self.rich.print(f"time: {total:.1f} s = {parts}")

    def cache_summary(self, computed: int, read: int, mb: float) -> None:
        """What the frozen-pass cache saved (``promptcl.frozen_cache``)."""
        self.rich.print(
            f"frozen passes: {computed} samples computed, {read} read from the cache ({mb:.1f} MB)"
        )

    def task_summary(self, t: int, accuracy: np.ndarray, metrics: dict[str, float]) -> None:
        table = Table(title=f"accuracy (%) after task {t}: rows = test task, columns = after task")
        table.add_column("task")
        for j in range(t + 1):
            table.add_column(str(j), justify="right")
        for i in range(t + 1):
            table.add_row(
                str(i), *("" if np.isnan(a) else f"{a:.1f}" for a in accuracy[i, : t + 1])
            )
        self.rich.print(table)
        self.rich.print("  ".join(f"{k.upper()} {v:.2f}" for k, v in metrics.items()))

    def validation_summary(self, metrics: dict[str, float]) -> None:
        """The metrics on the held-out validation samples (``data.val_fraction``)."""
        self.rich.print(
            "validation: " + "  ".join(f"{k.upper()} {v:.2f}" for k, v in metrics.items())
        )
