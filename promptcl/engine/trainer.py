"""The continual-learning loop: tasks -> epochs -> steps, evaluation after every task, checkpoints.

Resume is exact on CPU: the checkpoint after each epoch holds the method, optimiser, schedule and
RNG states; data order comes from a generator seeded by (seed, task, epoch). On resume the method
is rebuilt, ``begin_task`` is replayed for tasks 0..t (so parameters of the right shapes exist),
then the saved state is loaded over it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from promptcl import metrics
from promptcl.components import backbones, datasets, methods
from promptcl.config import RunConfig
from promptcl.data.base import image_transforms
from promptcl.data.scenario import Scenario
from promptcl.engine import checkpoint
from promptcl.engine.evaluate import predict, task_accuracies
from promptcl.engine.optim import build_optimizer, build_schedule
from promptcl.engine.progress import Console
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
        self.device = torch.device(config.train.device)
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
            self.config, self.scenario, resumed_at=(start_task, start_epoch) if resume else None
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
            self.method.end_task(
                task, self._loader(self.scenario.train_eval_view(t), shuffle=False)
            )
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
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
        dataset = self.scenario.train_view(task.index, cumulative=self.method.cumulative_data)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for epoch in range(first_epoch, cfg.epochs):
            self.method.train()
            loader = self._loader(
                dataset,
                shuffle=True,
                seed=derive_seed(self.config.seed, task.index, epoch),
                batch_size=cfg.batch_size,
            )
            totals: dict[str, float] = {}
            seen, began = 0, time.perf_counter()
            with self.console.epoch(task.index, epoch, cfg.epochs, len(loader)) as bar:
                for step, (x, y, index) in enumerate(loader):
                    if step == self.config.train.max_steps_per_epoch:
                        break
                    losses = self.method.training_step(
                        Batch(x.to(self.device), y.to(self.device), index.to(self.device))
                    )
                    optimizer.zero_grad(set_to_none=True)
                    losses["loss"].backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    seen += len(y)
                    for k, v in losses.items():
                        totals[k] = totals.get(k, 0.0) + float(v.detach()) * len(y)
                    bar.update(
                        loss=float(losses["loss"].detach()),
                        lr=optimizer.param_groups[0]["lr"],
                        rate=seen / (time.perf_counter() - began),
                    )
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
            self._save(task.index, epoch + 1, optimizer, schedule)

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
        )
        ends = [self.scenario.class_range(i)[1] for i in range(t + 1)]
        self.accuracy[: t + 1, t] = task_accuracies(preds, targets, ends)
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
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _prepare_run_dir(self) -> None:
        if (self.run_dir / CHECKPOINT).exists() and not self.config.output.overwrite:
            raise ConfigError(
                f"{self.run_dir} already holds a run: resume it with `promptcl run --resume {self.run_dir}`, "
                "or set output.overwrite=true, or choose another output.dir"
            )
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

    def _save(self, task: int, epochs_done: int | None, optimizer=None, schedule=None) -> None:
        """``epochs_done=None`` marks the task finished (end_task and evaluation done)."""
        if not self.config.output.checkpoint:
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

    def _loader(
        self, dataset, shuffle: bool, seed: int = 0, batch_size: int | None = None
    ) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.config.train.eval_batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.config.train.num_workers,
        )
