"""The continual-learning loop: tasks -> phases -> epochs -> steps, evaluation after every task.

The run's parts come from ``promptcl.build.build_run``; the run directory belongs to a
``RunWriter``. For each task the trainer calls ``begin_task``, runs every phase the method
declares (``Method.phases``: prepare, epochs of steps, finish), then ``end_task``, evaluates the
seen test sets and checkpoints.

Resume is exact on CPU: a checkpoint after each epoch of each phase holds the method, the
phase's optimiser, schedule and the RNG states; data order comes from a generator seeded by
(seed, task, epoch) for a task's first phase and (seed, task, phase, epoch) for the others. The
position is (task, phase, epochs done). On resume the method is rebuilt, ``begin_task`` is
replayed for tasks 0..t (so parameters of the right shapes exist), the saved state is loaded over
it, and the interrupted phase runs its ``prepare`` again (caches only) before continuing.

Several processes (``torchrun``, see ``promptcl.engine.distributed``) train one run together:
each reads its slice of every global batch of the task's data (``promptcl.engine.sharding``),
gradients are averaged by DistributedDataParallel, batches a method makes itself are the same on
every process, end-of-task statistics are computed on each process's block of the data and
reduced by the methods (``promptcl.collectives``), predictions are gathered, and only process 0
writes the run directory. ``method.batch_size`` is the global batch: W processes with B/W
samples each take the steps one process takes with B. A checkpoint holds one copy of the state,
so a run may be resumed with another number of processes.

Randomness with several processes: the shared RNG streams (python, numpy, torch: seeded by
``seed``, saved in checkpoints, restored on every process) drive everything outside the epochs
over the task's data, identically on every process. Inside such an epoch each process draws
from its own torch stream seeded by (seed, task, [phase,] epoch, rank) (data augmentation,
dropout), forked off the shared one, which is left untouched; with one process there is no fork.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from promptcl import collectives, metrics
from promptcl.build import build_run
from promptcl.config import RunConfig
from promptcl.engine import checkpoint, distributed
from promptcl.engine.evaluate import predict, task_accuracies
from promptcl.engine.optim import build_optimizer, build_schedule
from promptcl.engine.progress import Console
from promptcl.engine.run_dir import CHECKPOINT, RunWriter
from promptcl.engine.seeding import derive_seed
from promptcl.engine.sharding import ShardedBatches, contiguous_shard, shuffled_order
from promptcl.engine.step import Stepper, compile_backbone
from promptcl.errors import ConfigError
from promptcl.frozen_cache import FrozenCache, KeyedLoader
from promptcl.methods.base import Batch, Phase, Task, trainable

__all__ = ["CHECKPOINT", "RunResult", "Trainer", "protocol"]

FINISHED = -1  # position["phase"] of a task whose evaluation is done
# Where a run's time goes: the epochs of its phases, the evaluations, statistics over the
# task's data (end_task and the phases' prepare/finish), and checkpoint writing.
TIMED = ("train", "evaluate", "end_task", "checkpoint")


@dataclass
class RunResult:
    """What a finished (or resumed) run produced."""

    run_dir: Path
    accuracy: np.ndarray  # (T, T): A[i, t] = accuracy (%) on task i after task t; NaN for i > t
    metrics: dict[str, float]
    config: RunConfig
    class_order: list[int] = field(default_factory=list)
    # The same metrics on the held-out validation samples (``data.val_fraction``), else empty.
    validation: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Position:
    """Where a run stands: phase ``phase`` of ``task`` has ``epochs_done`` epochs behind it
    (``phase == len(phases)``: end_task and evaluation are next; FINISHED: the task is done)."""

    task: int
    phase: int
    epochs_done: int


def protocol(config: RunConfig) -> str:
    """The evaluation protocol, written into every report: batch-wise prompt voting at test time
    lets a batch's majority pick the prompt, which acts as a task oracle (specs/peer-frameworks.md
    §7.3), so such runs are labelled and never mistaken for class-incremental results. A run that
    reproduces a released code base's bug on purpose (``MethodConfig.released_bugs``) says so too."""
    if config.method.task_oracle:
        label = "task-oracle (batch-wise prompt voting at test time)"
    else:
        label = "class-incremental (no task identity at test time)"
    bugs = config.method.released_bugs
    return label + "".join(f"; reproduces the released code's bug: {bug}" for bug in bugs)


class Trainer:
    def __init__(self, config: RunConfig, console: Console | None = None):
        self.config = config
        self.world, self.rank = collectives.world_size(), collectives.rank()
        if config.method.batch_size % self.world:
            raise ConfigError(
                f"method.batch_size={config.method.batch_size} is the global batch and must split "
                f"evenly among the {self.world} processes: set it to a multiple of {self.world} "
                f"(e.g. {config.method.batch_size // self.world * self.world or self.world}), or "
                "change --nproc-per-node"
            )
        self.device = distributed.device_for(config.train.device)
        self.console = console or Console()
        self.writer = RunWriter(config)
        self.run_dir = self.writer.dir
        parts = build_run(config, self.device)
        self.scenario, self.method = parts.scenario, parts.method
        self.skipped = list(parts.scenario.data.skipped)  # damaged files left out (on_bad_file)
        # Where the time goes (seconds, this task and the whole run): see ``_clock``.
        self.seconds: dict[str, float] = dict.fromkeys(TIMED, 0.0)
        self.total_seconds: dict[str, float] = dict.fromkeys(TIMED, 0.0)
        self.cache_rows = {"computed": 0, "read": 0}  # the run's frozen passes (this process)
        self._inner: list[float] = []
        if config.train.compile:
            compile_backbone(self.method)
        T = self.scenario.num_tasks
        self.accuracy = np.full((T, T), np.nan)
        self.validating = config.data.val_fraction > 0
        self.val_accuracy = np.full((T, T), np.nan)
        self.identity = checkpoint.run_identity(config)
        self.fingerprint = checkpoint.config_fingerprint(config)
        self.test_sizes = [len(self.scenario.test_view(i)) for i in range(T)]
        self.val_sizes = [len(self.scenario.val_view(i)) for i in range(T)]
        self.cache = self._frozen_cache()
        self.method.frozen_cache = self.cache

    def _frozen_cache(self) -> FrozenCache | None:
        """The run's cache of frozen passes (``promptcl.frozen_cache``), or None when it is off."""
        train, data = self.config.train, self.scenario.data
        if not train.frozen_cache:
            return None
        views = self.config.data.test_clips * self.config.data.test_crops
        views = views if data.modality == "video" else 1
        plain = data.train if self.scenario.train_eval is None else self.scenario.train_eval
        capacity = {"test": len(data.test) * views, "plain": len(plain)}
        return FrozenCache(capacity, train.frozen_cache_mb, train.frozen_cache_dir)

    # -- the stream ---------------------------------------------------------------------------
    def task(self, t: int) -> Task:
        return Task(t, *self.scenario.class_range(t), self.scenario.num_tasks)

    def run(self, resume: bool = False) -> RunResult:
        try:
            return self._run(resume)
        finally:
            if self.cache is not None:
                self.cache.close()

    def _run(self, resume: bool) -> RunResult:
        at, saved = Position(0, 0, 0), None
        if resume:
            self.writer.resume()
            saved = checkpoint.load(
                self.writer.checkpoint_path,
                self.config.method.name,
                self.fingerprint,
                self.identity,
            )
            at = self._restore(saved)
        else:
            self.writer.start()
            if self.skipped:
                self.writer.log({"skipped_files": len(self.skipped), "paths": self.skipped})
        self.console.header(
            self.config,
            self.scenario,
            resumed_at=self._describe(at) if resume else None,
            world=(self.world, collectives.backend()),
        )
        for t in range(at.task, self.scenario.num_tasks):
            task = self.task(t)
            if not (t == at.task and (at.phase, at.epochs_done) != (0, 0)):
                # (resuming mid-task, _restore has replayed begin_task)
                self.method.begin_task(task)
            phases = self.method.phases(task)
            first = at.phase if t == at.task else 0
            for p in range(first, len(phases)):
                done = at.epochs_done if (t, p) == (at.task, at.phase) else 0
                self._run_phase(task, p, phases[p], done, saved if done else None)
            self.method.eval()
            with self._clock("end_task"):
                self.method.end_task(task, self._plain_loader(t))
            collectives.check_same(self._method_state(), f"after end_task of task {t}")
            with self._clock("evaluate"):
                self._evaluate(t)
            self._save(Position(t, FINISHED, 0))
            self.console.task_summary(t, self.accuracy, self._metrics(t))
            if self.validating:
                self.console.validation_summary(self._metrics(t, "val"))
            self._account(t)
        self.console.time_summary(self.total_seconds)
        if self.cache is not None:
            self.console.cache_summary(**self.cache_rows, mb=self.cache.bytes / 2**20)
        return self.result()

    @contextlib.contextmanager
    def _clock(self, kind: str):
        """Add the seconds spent inside to ``kind``, less those of clocks nested in it (a
        checkpoint written inside a training epoch counts as checkpoint time)."""
        began = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            spent, inner = time.perf_counter() - began, self._inner.pop()
            self.seconds[kind] += spent - inner
            if self._inner:
                self._inner[-1] += spent

    def _account(self, t: int) -> None:
        """Log where task t's time went (and what the frozen-pass cache held), and add it to
        the run's."""
        record: dict[str, Any] = {
            "task": t,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }
        if self.cache is not None:
            stats = record["frozen_cache"] = self.cache.stats(reset=True)  # this task's
            self.cache_rows["computed"] += sum(stats["misses"].values())
            self.cache_rows["read"] += sum(stats["hits"].values())
        self.writer.log(record)
        for kind, spent in self.seconds.items():
            self.total_seconds[kind] += spent
        self.seconds = dict.fromkeys(TIMED, 0.0)

    def _describe(self, at: Position) -> str:
        if at.task >= self.scenario.num_tasks:
            return "its end: the run is complete, nothing is left to train"
        phases = self.method.phases(self.task(at.task))
        if at.phase >= len(phases):
            return f"task {at.task}, after its phases"
        return f"task {at.task}, phase {phases[at.phase].name}, epoch {at.epochs_done}"

    def _run_phase(
        self, task: Task, p: int, phase: Phase, first_epoch: int, saved: dict[str, Any] | None
    ) -> None:
        """Epochs ``first_epoch..`` of phase ``p``, then its finish; checkpoints after each."""
        groups = phase.param_groups() if phase.epochs > first_epoch else []
        groups = trainable(groups, self.method.frozen_parameters())
        if groups:
            with self._clock("train"):
                self._train_phase(task, p, phase, groups, first_epoch, saved)
        if phase.finish is not None:
            self.method.eval()
            with torch.no_grad(), self._clock("end_task"):
                phase.finish(self._plain_loader(task.index))
            self._save(Position(task.index, p + 1, 0))

    def _train_phase(
        self,
        task: Task,
        p: int,
        phase: Phase,
        groups: list[dict[str, Any]],
        first_epoch: int,
        saved: dict[str, Any] | None,
    ) -> None:
        if phase.prepare is not None:
            self.method.eval()
            with torch.no_grad(), self._clock("end_task"):
                phase.prepare(self._plain_loader(task.index))
        optimizer = build_optimizer(groups, phase.optim)
        schedule = build_schedule(optimizer, phase.optim, phase.epochs)
        shared = phase.data != "method"  # the processes share (split) the batches
        stepper = Stepper(
            phase.step,
            optimizer,
            self.config.train.precision,
            phase.optim.grad_clip,
            self.device,
            parallel=shared and collectives.is_distributed(),
            find_unused=self.method.ddp_find_unused,
        )
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            stepper.load_state_dict(saved.get("scaler", {}))
        for epoch in range(first_epoch, phase.epochs):
            self.method.train()
            # The position of the epoch; a task's first phase keeps the seeds of single-phase runs.
            where = (task.index, *([p] if p else []), epoch)
            seed = derive_seed(self.config.seed, *where)
            if shared:
                batches, shares = self._task_batches(task, phase, seed)
            else:
                batches, shares = phase.batches(epoch), None
            totals: dict[str, float] = {}
            seen, began = 0, time.perf_counter()
            with (
                self._rank_rng(where) if shared else contextlib.nullcontext(),
                self.console.epoch(
                    task.index, epoch, phase.epochs, len_or_none(batches), phase.name
                ) as bar,
            ):
                for step, (x, y, index) in enumerate(batches):
                    if shared and step == self.config.train.max_steps_per_epoch:
                        break
                    batch = Batch(x.to(self.device), y.to(self.device), index.to(self.device))
                    share = shares[step] if shares is not None else 1.0
                    with self._keys(phase, index):
                        losses = stepper(batch, share)
                    real = len(y) if share > 0 else 0  # a filler sample counts for nothing
                    seen += real
                    for k, v in losses.items():
                        totals[k] = totals.get(k, 0.0) + float(v.detach()) * real
                    bar.update(
                        loss=float(losses["loss"].detach()),
                        lr=optimizer.param_groups[0]["lr"],
                        rate=seen * (self.world if shared else 1) / (time.perf_counter() - began),
                    )
            if shared:
                seen, totals = self._sum_over_processes(seen, totals)
            record = {
                "task": task.index,
                "phase": phase.name,
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "samples": seen,
                "seconds": round(time.perf_counter() - began, 3),
                **{k: v / max(seen, 1) for k, v in totals.items()},
            }
            schedule.step()
            self.method.end_epoch(phase)
            self.writer.log(record)
            self._save(
                Position(task.index, p, epoch + 1),
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                scaler=stepper.state_dict(),
            )

    def _keys(self, phase: Phase, index: torch.Tensor):
        """A "plain" phase reads the training set's test-time view: its frozen passes are
        cached; a "train" phase's augmented views are not (see ``promptcl.frozen_cache``)."""
        if self.cache is None or phase.data != "plain":
            return contextlib.nullcontext()
        return self.cache.bind("plain", index)

    def _task_batches(self, task: Task, phase: Phase, seed: int) -> tuple[DataLoader, list[float]]:
        """This process's slices of the shuffled global batches of the task's data."""
        if phase.data == "train":
            dataset = self.scenario.train_view(task.index, cumulative=self.method.cumulative_data)
        else:
            dataset = self.scenario.train_eval_view(task.index)
        batches = ShardedBatches(
            shuffled_order(len(dataset), seed), phase.batch_size, self.world, self.rank, True
        )
        return self._batch_loader(dataset, batches, seed), batches.shares()

    @contextlib.contextmanager
    def _rank_rng(self, where: tuple[int, ...]):
        """With several processes, a torch RNG stream of this process's own for the epoch at
        ``where`` (task, [phase,] epoch)."""
        if self.world == 1:
            yield
            return
        devices = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(self.config.seed, *where, self.rank))
            yield

    def _sum_over_processes(
        self, seen: int, totals: dict[str, float]
    ) -> tuple[int, dict[str, float]]:
        """The epoch's sample count and loss sums over every process (for the log)."""
        if self.world == 1:
            return seen, totals
        keys = sorted(totals)
        summed = collectives.all_reduce_sum(
            torch.tensor([seen, *(totals[k] for k in keys)], dtype=torch.float64)
        ).tolist()
        return int(summed[0]), dict(zip(keys, summed[1:], strict=True))

    def _evaluate(self, t: int) -> None:
        preds, targets = self._predict_seen(t, "test")
        ends = [self.scenario.class_range(i)[1] for i in range(t + 1)]
        self.accuracy[: t + 1, t] = task_accuracies(preds, targets, ends)
        self.writer.predictions(t, preds, targets)
        summary = {
            "after_task": t,
            "protocol": protocol(self.config),
            "skipped_files": len(self.skipped),
            **self._metrics(t),
        }
        if self.validating:
            self.val_accuracy[: t + 1, t] = task_accuracies(*self._predict_seen(t, "val"), ends)
            summary["validation"] = self._metrics(t, "val")
        self.writer.results(self.accuracy, summary, self.val_accuracy if self.validating else None)

    def _predict_seen(
        self, t: int, split: Literal["test", "val"]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and labels over the test (or validation) data of tasks 0..t."""
        return predict(
            self.method.predict,
            self.scenario.test_seen(t, split),
            self.scenario.class_range(t)[1],
            self.config.train.eval_batch_size,
            derive_seed(self.config.seed, t, 10**6 + (split == "val")),
            self.device,
            self.config.train.num_workers,
            self.config.train.precision,
            self.cache,
            "test" if split == "test" else "plain",  # validation samples are training samples
        )

    # -- outputs ------------------------------------------------------------------------------
    def _metrics(self, t: int, split: Literal["test", "val"] = "test") -> dict[str, float]:
        A = (self.val_accuracy if split == "val" else self.accuracy)[: t + 1, : t + 1]
        sizes = self.val_sizes if split == "val" else self.test_sizes
        return metrics.summary(
            A,
            test_sizes=sizes[: t + 1],
            classes_per_task=self.scenario.task_sizes[: t + 1],
        )

    def result(self) -> RunResult:
        done = int((~np.isnan(self.accuracy)).any(axis=0).sum())
        summary = self._metrics(done - 1) if done else {}
        validation = self._metrics(done - 1, "val") if done and self.validating else {}
        return RunResult(
            self.run_dir,
            self.accuracy.copy(),
            summary,
            self.config,
            self.scenario.class_order,
            validation,
        )

    # -- checkpoints --------------------------------------------------------------------------
    def _method_state(self) -> dict[str, torch.Tensor]:
        """The method's state; frozen backbones are rebuilt from their presets, not saved."""
        frozen = tuple(self.method.frozen_state_prefixes())
        return {k: v for k, v in self.method.state_dict().items() if not k.startswith(frozen)}

    def _save(self, at: Position, **optimizer_state: dict[str, Any]) -> None:
        """Checkpoint at ``at``; ``optimizer_state`` (optimizer, schedule, scaler) mid-phase.
        Process 0 writes; the state is the same on every process."""
        if not self.config.output.checkpoint or not collectives.is_main():
            return
        payload: dict[str, Any] = {
            "method_name": self.config.method.name,
            "fingerprint": self.fingerprint,
            "identity": json.dumps(self.identity, sort_keys=True),
            "position": {"task": at.task, "phase": at.phase, "epochs_done": at.epochs_done},
            "method": self._method_state(),
            "accuracy": torch.from_numpy(self.accuracy),
            **({"val_accuracy": torch.from_numpy(self.val_accuracy)} if self.validating else {}),
            "rng": checkpoint.rng_state(),
            **{k: v for k, v in optimizer_state.items() if v},
        }
        with self._clock("checkpoint"):
            self.writer.save_checkpoint(payload)

    def _restore(self, saved: dict[str, Any]) -> Position:
        """Rebuild the method at the saved position; returns where to continue."""
        pos = saved["position"]
        task = pos["task"]
        # Checkpoints before phases: {"task", "epochs_done"}, -1 for a finished task.
        phase = pos.get("phase", FINISHED if pos["epochs_done"] == -1 else 0)
        for t in range(task + 1):
            self.method.begin_task(self.task(t))
        missing, unexpected = self.method.load_state_dict(saved["method"], strict=False)
        frozen = tuple(self.method.frozen_state_prefixes())
        if unexpected or any(not k.startswith(frozen) for k in missing):
            raise checkpoint.CheckpointError(
                f"checkpoint does not fit {self.config.method.name}: missing {missing}, unexpected {unexpected}"
            )
        self.accuracy = saved["accuracy"].numpy().copy()
        if self.validating:
            self.val_accuracy = saved["val_accuracy"].numpy().copy()
        checkpoint.set_rng_state(saved["rng"])
        if phase == FINISHED:  # the task was finished: continue with the next one
            return Position(task + 1, 0, 0)
        return Position(task, phase, max(pos["epochs_done"], 0))

    def _batch_loader(self, dataset: Dataset, batches: ShardedBatches, seed: int) -> DataLoader:
        """``batches`` of ``dataset``; the generator seeds the loader's workers (per process)."""
        if self.rank:
            seed = derive_seed(seed, self.rank)
        return DataLoader(
            dataset,
            batch_sampler=batches,
            generator=torch.Generator().manual_seed(seed),
            num_workers=self.config.train.num_workers,
        )

    def _plain_loader(self, t: int) -> DataLoader | KeyedLoader:
        """This process's contiguous block of task t's training data through the test
        transforms, in order (end-of-task statistics, phase preparation); its frozen passes
        are read from the run's cache."""
        dataset: Dataset = self.scenario.train_eval_view(t)
        if self.world > 1:
            dataset = Subset(dataset, contiguous_shard(len(dataset), self.world, self.rank))
        loader = DataLoader(
            dataset,
            batch_size=self.config.train.eval_batch_size,
            generator=torch.Generator().manual_seed(0),
            num_workers=self.config.train.num_workers,
        )
        return loader if self.cache is None else KeyedLoader(loader, self.cache, "plain")


def len_or_none(batches: Iterable) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
