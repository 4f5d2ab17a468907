"""``promptcl bench``: how fast a method trains and predicts, next to the floor of its backbone.

What is measured, for the run a config describes (method, backbone, benchmark, precision,
compile), on the first task, in one process:

- training samples/s: the trainer's own step (``Stepper``: forward under the run's precision,
  backward, clipping, optimiser step) of the method's first phase (its prompt training) on
  batches of ``method.batch_size`` read from the task's training data. The batches are loaded once before timing: data loading is not measured.
- evaluation samples/s: ``method.predict`` on batches of ``train.eval_batch_size`` of the task's
  test data, without gradients.
- peak memory of each phase (two steps, after the timing): on CUDA
  ``torch.cuda.max_memory_allocated`` (every tensor, weights included; reset before the phase).
  On Linux CPUs, where torch keeps no allocator statistics, how far the process's resident set
  rose above its size at the start of the phase (``VmHWM`` after a reset through
  /proc/self/clear_refs, minus ``VmRSS`` after ``malloc_trim`` returned freed memory): the
  activations, gradients and workspace the phase adds, within ~10 MB. Elsewhere the peak RSS
  of the process so far (``ru_maxrss``, not reset). The JSON names the kind.

The floor, measured in the same run on the same backbone and batches, is the least work any
prompt method must do per step: one forward of the frozen trunk with a single trainable prompt
token (1, D) inserted at the input of block 0 and shared by every sample, the pooled feature
through a linear head, cross-entropy, and the backward from the loss to that token (through
every block, since the token enters at the first one) and the head, then the optimiser step.
Its evaluation floor is the same forward without gradients. A key-query method does more: its
frozen query is a second forward (unless the query cache holds it), and its prompts lengthen
the sequence (L2P: N x L_p tokens) or the attention keys (prefix methods).

Timing interleaves the floor and the method (``rounds`` times ``steps`` steps of each, after
``warmup`` steps of each), so that a machine whose load changes slows both alike; the ratio is
the median over rounds of method time / floor time. With ``method.query_cache: true`` the cache
is filled with the queries of the timed batches before timing (as after a task's first epoch).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.build import build_run
from promptcl.config import MethodConfig, RunConfig
from promptcl.engine import distributed
from promptcl.engine.optim import build_optimizer
from promptcl.engine.step import Stepper, autocast, compile_backbone
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Method, Optim, Task, trainable


class Floor(Method):
    """The bare prompted forward + backward (see the module docstring): one input prompt token."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__(MethodConfig(name="floor"), backbone, ["class"] * num_classes)
        self.prompt = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))  # (1, 1, D)
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        tokens = self.backbone(batch.x, LayerPrompts(tokens={0: self.prompt}))  # (B, 1 + 1 + P, D)
        return {"loss": F.cross_entropy(self.head(self.backbone.pool(tokens)), batch.y)}

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.encode(x))  # (B, C)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.prompt, *self.head.parameters()]}]


class Memory:
    """Peak memory of a phase, in MB (see the module docstring for what each kind means)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.start = 0.0
        self.libc = None
        if self.cuda:
            self.kind = "cuda_max_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self.kind = "cpu_peak_rss_increase"
        except (OSError, AttributeError):
            self.kind = "cpu_peak_rss_since_start"

    @staticmethod
    def _status(key: str) -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.libc is not None:
            self.libc.malloc_trim(0)  # hand freed memory back, so that RSS is what is in use
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.start = self._status("VmRSS")

    def peak_mb(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        if self.libc is not None:
            return self._status("VmHWM") - self.start
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batches(dataset, batch_size: int, count: int, device: torch.device) -> list[Batch]:
    """Up to ``count`` full batches of ``dataset`` (one smaller batch if it is all there is)."""
    batch_size = min(batch_size, len(dataset))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    out = []
    for x, y, index in loader:
        if len(y) < batch_size or len(out) == count:  # equal batches only
            break
        out.append(Batch(x.to(device), y.to(device), index.to(device)))
    return out


def _timed(run: Callable[[Batch], Any], batches: list[Batch], steps: int, cuda: bool) -> float:
    """Seconds for ``steps`` calls of ``run`` over ``batches`` (cycled)."""
    if cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    for i in range(steps):
        run(batches[i % len(batches)])
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - began


def _compare(
    floor: Callable[[Batch], Any],
    method: Callable[[Batch], Any],
    batches: list[Batch],
    steps: int,
    warmup: int,
    rounds: int,
    cuda: bool,
) -> dict[str, float]:
    """Interleaved timing of the floor and the method: samples/s of each, and their ratio."""
    _timed(floor, batches, warmup, cuda)
    _timed(method, batches, warmup, cuda)
    times: dict[str, list[float]] = {"floor": [], "method": []}
    for _ in range(rounds):
        times["floor"].append(_timed(floor, batches, steps, cuda))
        times["method"].append(_timed(method, batches, steps, cuda))
    samples = steps * len(batches[0].y)
    return {
        "floor": samples / statistics.median(times["floor"]),
        "method": samples / statistics.median(times["method"]),
        "ratio": statistics.median(
            m / f for m, f in zip(times["method"], times["floor"], strict=True)
        ),
    }


def _peak(run: Callable[[Batch], Any], batches: list[Batch], memory: Memory) -> float:
    memory.reset()
    _timed(run, batches, 2, memory.cuda)
    return memory.peak_mb()


def bench(
    config: RunConfig, steps: int = 10, warmup: int = 3, rounds: int = 5, max_batches: int = 4
) -> dict[str, Any]:
    """Measure the run ``config`` describes against its floor; returns a JSON-ready dict."""
    device = distributed.device_for(config.train.device)
    parts = build_run(config, device)
    method, scenario = parts.method, parts.scenario
    if config.train.compile:
        compile_backbone(method)
    task = Task(0, *scenario.class_range(0), scenario.num_tasks)
    method.begin_task(task)
    floor = Floor(method.backbone, method.num_classes).to(device)
    floor.begin_task(task)
    train = _batches(scenario.train_view(0), config.method.batch_size, max_batches, device)
    test = _batches(scenario.test_view(0), config.train.eval_batch_size, max_batches, device)
    cuda = device.type == "cuda"
    memory = Memory(device)
    phase = method.phases(task)[0]
    groups = phase.param_groups() if phase.epochs > 0 else []
    groups = trainable(groups, method.frozen_parameters())
    if groups and len(train[0].y) < config.method.batch_size:
        raise ConfigError(
            f"the first task has {len(train[0].y)} training samples, fewer than one batch of "
            f"method.batch_size={config.method.batch_size}: lower the batch size"
        )

    cache = method.query_cache
    method.train()
    floor.train()
    if cache is not None:
        with torch.no_grad(), autocast(config.train.precision, device):
            for b in train:  # as after a task's first epoch: every timed sample is cached
                method.query(b.x, b.index)

    def stepper(step, groups: list[dict[str, Any]], optim: Optim) -> Stepper:
        return Stepper(
            step, build_optimizer(groups, optim), config.train.precision, optim.grad_clip, device
        )

    step_floor = stepper(floor.training_step, floor.param_groups(), phase.optim)
    training: dict[str, float | None] = {"floor": None, "method": None, "ratio": None}
    train_peak: dict[str, float | None] = {"floor": None, "method": None}
    if groups:  # SimpleCIL and other training-free methods only predict
        step_method = stepper(phase.step, groups, phase.optim)
        training = _compare(step_floor, step_method, train, steps, warmup, rounds, cuda)  # type: ignore[assignment]
        train_peak = {
            "floor": _peak(step_floor, train, memory),
            "method": _peak(step_method, train, memory),
        }

    method.eval()
    floor.eval()

    def predictor(m: Method) -> Callable[[Batch], Tensor]:
        def run(b: Batch) -> Tensor:
            with torch.no_grad(), autocast(config.train.precision, device):
                return m.predict(b.x)

        return run

    evaluation = _compare(predictor(floor), predictor(method), test, steps, warmup, rounds, cuda)
    eval_peak = {
        "floor": _peak(predictor(floor), test, memory),
        "method": _peak(predictor(method), test, memory),
    }
    rows = {
        who: {
            "train_samples_per_s": training[who],
            "eval_samples_per_s": evaluation[who],
            "train_peak_mb": train_peak[who],
            "eval_peak_mb": eval_peak[who],
        }
        for who in ("floor", "method")
    }
    return {
        "method": config.method.name,
        "backbone": config.backbone.name,
        "data": config.data.name,
        "query_cache": cache is not None,
        "precision": config.train.precision,
        "compile": config.train.compile,
        "device": str(device),
        "batch_size": config.method.batch_size,
        "eval_batch_size": len(test[0].y),
        "steps": steps,
        "rounds": rounds,
        "memory": memory.kind,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "results": rows,
        "train_ratio": training["ratio"],
        "eval_ratio": evaluation["ratio"],
        "cache": {"hits": cache.hits, "misses": cache.misses} if cache is not None else None,
    }


def table(result: dict[str, Any]) -> Table:
    """The result of ``bench`` as a rich table: one row for the floor, one for the method."""
    cache = " + query cache" if result["query_cache"] else ""
    table = Table(
        title=f"{result['method']}{cache} on {result['backbone']} / {result['data']}, "
        f"batch {result['batch_size']} (eval {result['eval_batch_size']}), {result['precision']}"
        f"{', compiled' if result['compile'] else ''}, {result['device']}",
        caption=f"peak memory: {result['memory']}; ratio = time per sample / the floor's",
    )
    for column in ("", "train samples/s", "eval samples/s", "train peak MB", "eval peak MB"):
        table.add_column(column, justify="right" if column else "left")

    def fmt(value: float | None, spec: str) -> str:
        if value is None:
            return "n/a"
        if spec == "rate":  # three significant figures, without an exponent
            spec = ".0f" if value >= 100 else ".1f" if value >= 10 else ".2f"
        return format(value, spec)

    for who, label in (("floor", "floor (bare fwd+bwd)"), ("method", result["method"])):
        row = result["results"][who]
        table.add_row(
            label,
            fmt(row["train_samples_per_s"], "rate"),
            fmt(row["eval_samples_per_s"], "rate"),
            fmt(row["train_peak_mb"], ".0f"),
            fmt(row["eval_peak_mb"], ".0f"),
        )
    table.add_row(
        "ratio to floor", fmt(result["train_ratio"], ".2f") + "x",
        fmt(result["eval_ratio"], ".2f") + "x", "", "", style="bold",
    )  # fmt: skip
    return table
