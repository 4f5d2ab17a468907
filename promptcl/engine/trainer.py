"""The continual-learning loop: tasks -> epochs -> steps, evaluation after every task, checkpoints.

Resume is exact on CPU: the checkpoint after each epoch holds the method, optimiser, schedule and
RNG states; data order comes from a generator seeded by (seed, task, epoch). On resume the method
is rebuilt, ``begin_task`` is replayed for tasks 0..t (so parameters of the right shapes exist),
then the saved state is loaded over it.

Several processes (``torchrun``, see ``promptcl.engine.distributed``) train one run together:
each reads its slice of every global batch (``promptcl.engine.sharding``), gradients are averaged
by DistributedDataParallel, each process computes end-of-task statistics on its block of the
task's data and the methods reduce them, predictions are gathered, and only process 0 writes the
run directory. ``method.batch_size`` is the global batch: W processes with B/W samples each take
the steps one process takes with B. A checkpoint holds the position (task, epoch) and one copy of
the state, so a run may be resumed with another number of processes.

Randomness with several processes: the shared RNG streams (python, numpy, torch: seeded by
``seed``, saved in checkpoints, restored on every process) drive everything outside the training
epochs, identically on every process. Inside a training epoch each process draws from its own
torch stream seeded by (seed, task, epoch, rank) (data augmentation, dropout), forked off the
shared one, which is left untouched; with one process there is no fork.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset

from promptcl import metrics
from promptcl.components import backbones, datasets, methods
from promptcl.config import RunConfig
from promptcl.data.base import image_transforms
from promptcl.data.scenario import Scenario
from promptcl.engine import checkpoint, distributed
from promptcl.engine.evaluate import predict, task_accuracies
from promptcl.engine.optim import build_optimizer, build_schedule
from promptcl.engine.progress import Console
from promptcl.engine.sharding import ShardedBatches, contiguous_shard, shuffled_order
from promptcl.engine.step import Stepper, compile_backbone
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Method, Task

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunResult:
    """What a finished (or resumed) run produced."""

    run_dir: Path
    accuracy: np.ndarray  # (T, T): A[i, t] = accuracy (%) on task i after task t; NaN for i > t
    metrics: dict[str, float]
    config: RunConfig
    class_order: list[int] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A stable seed for one (seed, task, epoch, ...) position."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def protocol(config: RunConfig) -> str:
    """The evaluation protocol, written into every report: batch-wise prompt voting at test time
    lets a batch's majority pick the prompt, which acts as a task oracle (specs/peer-frameworks.md
    §7.3), so such runs are labelled and never mistaken for class-incremental results."""
    if getattr(config.method, "task_oracle_voting", False):
        return "task-oracle (batch-wise prompt voting at test time)"
    return "class-incremental (no task identity at test time)"


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.method.name}-{config.data.name}-seed{config.seed}"


class Trainer:
    def __init__(self, config: RunConfig, console: Console | None = None):
        self.config = config
        self.run_dir = config.output.dir or default_run_dir(config)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        if config.method.batch_size % self.world:
            raise ConfigError(
                f"method.batch_size={config.method.batch_size} is the global batch and must split "
                f"evenly among the {self.world} processes: set it to a multiple of {self.world} "
                f"(e.g. {config.method.batch_size // self.world * self.world or self.world}), or "
                "change --nproc-per-node"
            )
        self.device = distributed.device_for(config.train.device)
        self.console = console or Console()
        seed_everything(config.seed)

        backbone = backbones.get(config.backbone.name)(config.backbone)
        tf = image_transforms(
            backbone.image_size, backbone.mean, backbone.std, config.data.augment, config.data.crop_scale
        )
        build_data = datasets.get(config.data.name)
        data = build_data(config.data, tf, config.seed)
        plain = build_data(config.data, type(tf)(train=tf.test, test=tf.test), config.seed)
        self.scenario = Scenario.from_config(data, config.data, config.seed, train_eval=plain.train)
        method_cls = methods.get(config.method.name)
        self.method: Method = method_cls(config.method, backbone, self.scenario.class_names()).to(
            self.device
        )
        if config.train.compile:
            compile_backbone(self.method)
        T = self.scenario.num_tasks
        self.accuracy = np.full((T, T), np.nan)
        self.fingerprint = checkpoint.config_fingerprint(config)
        self.test_sizes = [len(self.scenario.test_view(i)) for i in range(T)]

    # -- the stream ---------------------------------------------------------------------------
    def task(self, t: int) -> Task:
        return Task(t, *self.scenario.class_range(t), self.scenario.num_tasks)

    def run(self, resume: bool = False) -> RunResult:
        start_task, start_epoch, saved = 0, 0, None
        if resume:
            saved = checkpoint.load(
                self.run_dir / CHECKPOINT, self.config.method.name, self.fingerprint
            )
            start_task, start_epoch = self._restore(saved)
        else:
            self._prepare_run_dir()
        self.console.header(
            self.config,
            self.scenario,
            resumed_at=(start_task, start_epoch) if resume else None,
            world=(self.world, distributed.backend()),
        )
        for t in range(start_task, self.scenario.num_tasks):
            task = self.task(t)
            mid_task = saved is not None and "optimizer" in saved and t == start_task
            if not mid_task:  # resuming mid-task, begin_task was replayed by _restore
                self.method.begin_task(task)
            self._train_task(
                task, start_epoch if t == start_task else 0, saved if mid_task else None
            )
            self.method.eval()
            self.method.end_task(task, self._shard_loader(self.scenario.train_eval_view(t)))
            distributed.check_same(self._method_state(), f"after end_task of task {t}")
            self._evaluate(t)
            self._save(t, None)
            self.console.task_summary(t, self.accuracy, self._metrics(t))
        return self.result()

    def _train_task(self, task: Task, first_epoch: int, saved: dict[str, Any] | None) -> None:
        cfg = self.config.method
        groups = self.method.param_groups()
        if cfg.epochs == 0 or not groups:
            return
        optimizer = build_optimizer(groups, cfg)
        schedule = build_schedule(optimizer, cfg)
        stepper = Stepper(self.method, optimizer, self.config, self.device)
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            stepper.load_state_dict(saved.get("scaler", {}))
        dataset = self.scenario.train_view(task.index, cumulative=self.method.cumulative_data)
        for epoch in range(first_epoch, cfg.epochs):
            self.method.train()
            seed = derive_seed(self.config.seed, task.index, epoch)
            batches = ShardedBatches(
                shuffled_order(len(dataset), seed), cfg.batch_size, self.world, self.rank, True
            )
            shares = batches.shares()
            loader = self._batch_loader(dataset, batches, seed)
            totals: dict[str, float] = {}
            seen, began = 0, time.perf_counter()
            with (
                self._rank_rng(task.index, epoch),
                self.console.epoch(task.index, epoch, cfg.epochs, len(loader)) as bar,
            ):
                for step, (x, y, index) in enumerate(loader):
                    if step == self.config.train.max_steps_per_epoch:
                        break
                    batch = Batch(x.to(self.device), y.to(self.device), index.to(self.device))
                    losses = stepper(batch, shares[step])
                    real = len(y) if shares[step] > 0 else 0  # a filler sample counts for nothing
                    seen += real
                    for k, v in losses.items():
                        totals[k] = totals.get(k, 0.0) + float(v.detach()) * real
                    bar.update(
                        loss=float(losses["loss"].detach()),
                        lr=optimizer.param_groups[0]["lr"],
                        rate=seen * self.world / (time.perf_counter() - began),
                    )
            seen, totals = self._sum_over_processes(seen, totals)
            record = {
                "task": task.index,
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "samples": seen,
                "seconds": round(time.perf_counter() - began, 3),
                **{k: v / max(seen, 1) for k, v in totals.items()},
            }
            schedule.step()
            self._log(record)
            self._save(task.index, epoch + 1, optimizer, schedule, stepper.state_dict())

    @contextlib.contextmanager
    def _rank_rng(self, task: int, epoch: int):
        """With several processes, a torch RNG stream of this process's own for the epoch."""
        if self.world == 1:
            yield
            return
        devices = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(self.config.seed, task, epoch, self.rank))
            yield

    def _sum_over_processes(
        self, seen: int, totals: dict[str, float]
    ) -> tuple[int, dict[str, float]]:
        """The epoch's sample count and loss sums over every process (for the log)."""
        if self.world == 1:
            return seen, totals
        keys = sorted(totals)
        summed = distributed.all_reduce_sum(
            torch.tensor([seen, *(totals[k] for k in keys)], dtype=torch.float64)
        ).tolist()
        return int(summed[0]), dict(zip(keys, summed[1:], strict=True))

    def _evaluate(self, t: int) -> None:
        _, seen = self.scenario.class_range(t)
        preds, targets = predict(
            self.method.predict,
            self.scenario.test_seen(t),
            seen,
            self.config.train.eval_batch_size,
            derive_seed(self.config.seed, t, 10**6),
            self.device,
            self.config.train.num_workers,
            self.config.train.precision,
        )
        ends = [self.scenario.class_range(i)[1] for i in range(t + 1)]
        self.accuracy[: t + 1, t] = task_accuracies(preds, targets, ends)
        if not distributed.is_main():
            return
        out = self.run_dir / "predictions"
        out.mkdir(exist_ok=True)
        save_file(
            {"predictions": preds, "targets": targets}, str(out / f"after_task_{t}.safetensors")
        )
        self._write_results(t)

    # -- outputs ------------------------------------------------------------------------------
    def _metrics(self, t: int) -> dict[str, float]:
        A = self.accuracy[: t + 1, : t + 1]
        return metrics.summary(
            A, test_sizes=self.test_sizes[: t + 1], classes_per_task=self.scenario.task_sizes[: t + 1]
        )

    def _write_results(self, t: int) -> None:
        T = self.scenario.num_tasks
        header = "task," + ",".join(f"after_task_{j}" for j in range(T))
        rows = [
            f"{i}," + ",".join("" if np.isnan(a) else f"{a:.4f}" for a in self.accuracy[i])
            for i in range(T)
        ]
        (self.run_dir / "accuracy_matrix.csv").write_text("\n".join([header, *rows]) + "\n")
        summary = {"after_task": t, "protocol": protocol(self.config), **self._metrics(t)}
        (self.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))

    def _log(self, record: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _prepare_run_dir(self) -> None:
        """Every process checks (so that all raise the same error); process 0 writes."""
        if (self.run_dir / CHECKPOINT).exists() and not self.config.output.overwrite:
            raise ConfigError(
                f"{self.run_dir} already holds a run: resume it with `promptcl run --resume {self.run_dir}`, "
                "or set output.overwrite=true, or choose another output.dir"
            )
        distributed.barrier()
        if distributed.is_main():
            self._clear_run_dir()
        distributed.barrier()

    def _clear_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("log.jsonl", "accuracy_matrix.csv", "metrics.json", CHECKPOINT):
            (self.run_dir / stale).unlink(missing_ok=True)
        (self.run_dir / "config.yaml").write_text(self.config.to_yaml())

    def result(self) -> RunResult:
        done = int((~np.isnan(self.accuracy)).any(axis=0).sum())
        summary = self._metrics(done - 1) if done else {}
        return RunResult(
            self.run_dir, self.accuracy.copy(), summary, self.config, self.scenario.class_order
        )

    # -- checkpoints --------------------------------------------------------------------------
    def _method_state(self) -> dict[str, torch.Tensor]:
        """The method's state; a frozen backbone is rebuilt from its preset, not saved."""
        state = self.method.state_dict()
        if self.method.backbone.frozen:
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return state

    def _save(
        self,
        task: int,
        epochs_done: int | None,
        optimizer=None,
        schedule=None,
        scaler: dict[str, Any] | None = None,
    ) -> None:
        """``epochs_done=None`` marks the task finished (end_task and evaluation done). Process 0
        writes; the state is the same on every process."""
        if not self.config.output.checkpoint or not distributed.is_main():
            return
        payload: dict[str, Any] = {
            "method_name": self.config.method.name,
            "fingerprint": self.fingerprint,
            "position": {"task": task, "epochs_done": -1 if epochs_done is None else epochs_done},
            "method": self._method_state(),
            "accuracy": torch.from_numpy(self.accuracy),
            "rng": checkpoint.rng_state(),
        }
        if optimizer is not None:
            payload["optimizer"] = optimizer.state_dict()
            payload["schedule"] = schedule.state_dict()
            if scaler:
                payload["scaler"] = scaler
        checkpoint.save(self.run_dir / CHECKPOINT, payload)

    def _restore(self, saved: dict[str, Any]) -> tuple[int, int]:
        """Rebuild the method at the saved position; returns (task, first epoch) to continue at."""
        task, epochs_done = saved["position"]["task"], saved["position"]["epochs_done"]
        for t in range(task + 1):
            self.method.begin_task(self.task(t))
        missing, unexpected = self.method.load_state_dict(saved["method"], strict=False)
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise checkpoint.CheckpointError(
                f"checkpoint does not fit {self.config.method.name}: missing {missing}, unexpected {unexpected}"
            )
        self.accuracy = saved["accuracy"].numpy().copy()
        checkpoint.set_rng_state(saved["rng"])
        if epochs_done == -1:  # the task was finished: continue with the next one
            return task + 1, 0
        return task, epochs_done

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

    def _shard_loader(self, dataset: Dataset) -> DataLoader:
        """This process's contiguous block of ``dataset``, in order (end-of-task statistics)."""
        if self.world > 1:
            dataset = Subset(dataset, contiguous_shard(len(dataset), self.world, self.rank))
        return DataLoader(
            dataset,
            batch_size=self.config.train.eval_batch_size,
            generator=torch.Generator().manual_seed(0),
            num_workers=self.config.train.num_workers,
        )
