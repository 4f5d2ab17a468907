"""The run directory: one writer owns it (process 0 writes; every process checks).

config.yaml           the resolved config the run was started with
log.jsonl             one line per epoch of every phase: task, phase, epoch, lr, losses, ...
accuracy_matrix.csv   A[i, t] (%) so far, rows = test task, columns = after task
metrics.json          the metrics of the matrix so far, and the evaluation protocol
predictions/          after_task_<t>.safetensors: predicted and true labels of the seen tests
checkpoint.pt         the last checkpoint (``engine.checkpoint``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from promptcl import collectives
from promptcl.config import RunConfig
from promptcl.engine import checkpoint
from promptcl.errors import ConfigError

CHECKPOINT = "checkpoint.pt"


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.method.name}-{config.data.name}-seed{config.seed}"


class RunWriter:
    def __init__(self, config: RunConfig):
        self.config = config
        self.dir = config.output.dir or default_run_dir(config)
        self.main = collectives.is_main()

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    def start(self) -> None:
        """A new run: refuse a directory that holds one, else clear stale outputs and write the
        config. Every process checks (so all raise the same error); process 0 writes."""
        if self.checkpoint_path.exists() and not self.config.output.overwrite:
            raise ConfigError(
                f"{self.dir} already holds a run: resume it with `promptcl run --resume {self.dir}`, "
                "or set output.overwrite=true, or choose another output.dir"
            )
        collectives.barrier()
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in ("log.jsonl", "accuracy_matrix.csv", "metrics.json", CHECKPOINT):
                (self.dir / stale).unlink(missing_ok=True)
            (self.dir / "config.yaml").write_text(self.config.to_yaml())
        collectives.barrier()

    def log(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def predictions(self, t: int, preds: torch.Tensor, targets: torch.Tensor) -> None:
        if self.main:
            out = self.dir / "predictions"
            out.mkdir(exist_ok=True)
            save_file(
                {"predictions": preds, "targets": targets}, str(out / f"after_task_{t}.safetensors")
            )

    def results(self, accuracy: np.ndarray, summary: dict[str, Any]) -> None:
        """The accuracy matrix so far and its metrics (``summary``)."""
        if not self.main:
            return
        T = len(accuracy)
        header = "task," + ",".join(f"after_task_{j}" for j in range(T))
        rows = [
            f"{i}," + ",".join("" if np.isnan(a) else f"{a:.4f}" for a in accuracy[i])
            for i in range(T)
        ]
        (self.dir / "accuracy_matrix.csv").write_text("\n".join([header, *rows]) + "\n")
        (self.dir / "metrics.json").write_text(json.dumps(summary, indent=2))

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        if self.main and self.config.output.checkpoint:
            checkpoint.save(self.checkpoint_path, payload)
