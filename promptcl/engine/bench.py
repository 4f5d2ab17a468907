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

The structural floor is the floor with the method's own prompt structure: at the layers where
the method's prompted forward inserts tokens, prefixes, residuals or values, trainable prompts
of the same lengths, shared by every sample (recorded from one call of the method's training
step and one of its ``predict``; ``hook`` prompts are not reproduced). L2P's 25 inserted tokens
lengthen every block's sequence: that is what prompting costs, not overhead, and the ratio to
the structural floor leaves it out. What remains is the method's own work: its frozen query,
prompt selection, extra losses.

Evaluation is measured twice: as the method runs without the run's frozen-pass cache, and with
it (``promptcl.frozen_cache``), filled with the timed test batches first, as after the
evaluation that first reads them: from the second evaluation of a run on, a test image's
frozen query is read, not recomputed.

Timing interleaves the contenders (``rounds`` times ``steps`` steps of each, after ``warmup``
steps of each), so that a machine whose load changes slows all alike; a ratio is the median over
rounds of one's time / the other's. With ``method.query_cache: true`` the query cache is filled
with the queries of the timed training batches before timing (as after a task's first epoch).
"""

from __future__ import annotations

import contextlib
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
from promptcl.frozen_cache import FrozenCache
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


def prompt_structure(prompts: list[LayerPrompts]) -> dict[str, Any]:
    """Per kind, the layers a method's prompted forwards inject into and the lengths: tokens and
    prefix as {layer: length}, residual and value as sorted layers, hook as a flag."""
    shape: dict[str, Any] = {"tokens": {}, "prefix": {}, "residual": [], "value": [], "hook": False}
    for p in prompts:
        for layer, tokens in p.tokens.items():
            shape["tokens"][layer] = max(shape["tokens"].get(layer, 0), tokens.shape[-2])
        for layer, (key, _) in p.prefix.items():
            shape["prefix"][layer] = max(shape["prefix"].get(layer, 0), key.shape[-2])
        for kind in ("residual", "value"):
            shape[kind] = sorted(set(shape[kind]) | set(getattr(p, kind)))
        shape["hook"] |= p.hook is not None
    return shape


def record_prompts(backbone: Backbone, run: Callable[[], Any]) -> list[LayerPrompts]:
    """The prompts of every prompted forward of ``backbone`` during ``run()``."""
    seen: list[LayerPrompts] = []

    def hook(_module, args, kwargs):
        prompts = kwargs.get("prompts", args[1] if len(args) > 1 else None)
        if prompts is not None:
            seen.append(prompts)

    handle = backbone.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


class StructuralFloor(Floor):
    """The floor with a method's prompt structure (``prompt_structure``), one prompt per
    injection point shared by every sample; without tokens at block 0 it inserts none there."""

    def __init__(self, backbone: Backbone, num_classes: int, structure: dict[str, Any]):
        super().__init__(backbone, num_classes)
        D = backbone.embed_dim

        def zeros(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape))

        self.tokens = nn.ParameterDict(
            {str(i): zeros(1, n, D) for i, n in structure["tokens"].items()}
        )
        self.prefix = nn.ParameterDict(
            {f"{i}_{kv}": zeros(1, n, D) for i, n in structure["prefix"].items() for kv in "kv"}
        )
        self.residual = nn.ParameterDict({str(i): zeros(1, D) for i in structure["residual"]})
        self.value = nn.ParameterDict({str(i): zeros(1, D) for i in structure["value"]})

    def prompts(self, batch_size: int) -> LayerPrompts:
        def each(p: nn.Parameter) -> Tensor:
            return p.expand(batch_size, *p.shape[1:])

        return LayerPrompts(
            tokens={int(i): p for i, p in self.tokens.items()},
            prefix={
                int(i): (each(self.prefix[f"{i}_k"]), each(self.prefix[f"{i}_v"]))
                for i in {k.split("_")[0] for k in self.prefix}
            },
            residual={int(i): each(p) for i, p in self.residual.items()},
            value={int(i): each(p) for i, p in self.value.items()},
        )

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        features = self.backbone.encode(batch.x, self.prompts(len(batch.x)))
        return {"loss": F.cross_entropy(self.head(features), batch.y)}

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.encode(x, self.prompts(len(x))))  # (B, C)

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad and p is not self.prompt]
        return [{"params": params}]


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
    contenders: dict[str, Callable[[Batch], Any]],
    batches: list[Batch],
    steps: int,
    warmup: int,
    rounds: int,
    cuda: bool,
) -> tuple[dict[str, float], Callable[[str, str], float]]:
    """Interleaved timing of the contenders: samples/s of each, and ``ratio(a, b)``, the median
    over rounds of a's time / b's."""
    for run in contenders.values():
        _timed(run, batches, warmup, cuda)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            times[name].append(_timed(run, batches, steps, cuda))
    samples = steps * len(batches[0].y)
    rates = {name: samples / statistics.median(t) for name, t in times.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    return rates, ratio


def _peak(run: Callable[[Batch], Any], batches: list[Batch], memory: Memory) -> float:
    memory.reset()
    _timed(run, batches, 2, memory.cuda)
    return memory.peak_mb()


def bench(
    config: RunConfig, steps: int = 10, warmup: int = 3, rounds: int = 5, max_batches: int = 4
) -> dict[str, Any]:
    """Measure the run ``config`` describes against its floors; returns a JSON-ready dict."""
    device = distributed.device_for(config.train.device)
    parts = build_run(config, device)
    method, scenario = parts.method, parts.scenario
    if config.train.compile:
        compile_backbone(method)
    task = Task(0, *scenario.class_range(0), scenario.num_tasks)
    method.begin_task(task)
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

    def stepper(step, groups: list[dict[str, Any]], optim: Optim) -> Stepper:
        return Stepper(
            step, build_optimizer(groups, optim), config.train.precision, optim.grad_clip, device
        )

    def predictor(m: Method, cache: FrozenCache | None = None) -> Callable[[Batch], Tensor]:
        def run(b: Batch) -> Tensor:
            keys = cache.bind("test", b.index) if cache is not None else contextlib.nullcontext()
            with torch.no_grad(), autocast(config.train.precision, device), keys:
                return m.predict(b.x)

        return run

    step_method = stepper(phase.step, groups, phase.optim) if groups else None
    cache = method.query_cache
    method.train()
    if cache is not None:
        with torch.no_grad(), autocast(config.train.precision, device):
            for b in train:  # as after a task's first epoch: every timed sample is cached
                method.query(b.x, b.index)

    # The method's prompt structure, from one training step and one prediction (outside timing).
    method.eval()
    seen = record_prompts(method.backbone, lambda: predictor(method)(test[0]))
    if step_method is not None:
        method.train()
        seen += record_prompts(method.backbone, lambda: phase.step(train[0]))
    structure = prompt_structure(seen)
    floors = {
        "floor": Floor(method.backbone, method.num_classes).to(device),
        "structural": StructuralFloor(method.backbone, method.num_classes, structure).to(device),
    }
    for floor in floors.values():
        floor.begin_task(task)

    rows: dict[str, dict[str, float | None]] = {
        who: dict.fromkeys(
            ("train_samples_per_s", "eval_samples_per_s", "train_peak_mb", "eval_peak_mb")
        )
        for who in (*floors, "method", "method_cached")
    }
    ratios: dict[str, float | None] = dict.fromkeys(
        ("train_ratio", "train_ratio_structural", "eval_ratio", "eval_ratio_structural",
         "eval_ratio_cached", "eval_ratio_cached_structural")
    )  # fmt: skip
    if step_method is not None:  # SimpleCIL and other training-free methods only predict
        method.train()
        contenders = {
            name: stepper(f.training_step, f.param_groups(), phase.optim)
            for name, f in floors.items()
        }
        contenders["method"] = step_method
        for f in floors.values():
            f.train()
        rates, ratio = _compare(contenders, train, steps, warmup, rounds, cuda)
        ratios["train_ratio"] = ratio("method", "floor")
        ratios["train_ratio_structural"] = ratio("method", "structural")
        for who, run in contenders.items():
            rows[who]["train_samples_per_s"] = rates[who]
            rows[who]["train_peak_mb"] = _peak(run, train, memory)

    method.eval()
    for f in floors.values():
        f.eval()
    frozen = FrozenCache({"test": len(scenario.data.test)})
    method.frozen_cache = frozen
    for b in test:  # as after the first evaluation: the timed test images were read once
        predictor(method, frozen)(b)
    filled = frozen.stats(reset=True)["misses"]["test"]
    predictors = {name: predictor(f) for name, f in floors.items()}
    predictors["method"] = predictor(method)
    predictors["method_cached"] = predictor(method, frozen)
    rates, ratio = _compare(predictors, test, steps, warmup, rounds, cuda)
    for who, run in predictors.items():
        rows[who]["eval_samples_per_s"] = rates[who]
        rows[who]["eval_peak_mb"] = _peak(run, test, memory)
    method.frozen_cache = None
    for name, who in (("eval_ratio", "method"), ("eval_ratio_cached", "method_cached")):
        ratios[name] = ratio(who, "floor")
        ratios[f"{name}_structural"] = ratio(who, "structural")
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
        "prompt_structure": {k: v for k, v in structure.items() if v},
        "results": rows,
        **ratios,
        "cache": {"hits": cache.hits, "misses": cache.misses} if cache is not None else None,
        "frozen_cache": {"filled": filled, **frozen.stats()},
    }


def table(result: dict[str, Any]) -> Table:
    """The result of ``bench`` as a rich table: a row per contender, then the ratios."""
    cache = " + query cache" if result["query_cache"] else ""
    structure = result["prompt_structure"]
    described = "; ".join(f"{k} {v}" for k, v in structure.items()) or "no prompts"
    table = Table(
        title=f"{result['method']}{cache} on {result['backbone']} / {result['data']}, "
        f"batch {result['batch_size']} (eval {result['eval_batch_size']}), {result['precision']}"
        f"{', compiled' if result['compile'] else ''}, {result['device']}",
        caption=f"structural floor: the method's prompts ({described}); peak memory: "
        f"{result['memory']}; ratio = time per sample / the floor's",
    )
    for column in ("", "train samples/s", "eval samples/s", "train peak MB", "eval peak MB"):
        table.add_column(column, justify="right" if column else "left")

    def fmt(value: float | None, spec: str) -> str:
        if value is None:
            return "n/a"
        if spec == "rate":  # three significant figures, without an exponent
            spec = ".0f" if value >= 100 else ".1f" if value >= 10 else ".2f"
        return format(value, spec)

    labels = {
        "floor": "floor (bare fwd+bwd)",
        "structural": "structural floor",
        "method": result["method"],
        "method_cached": "  with frozen passes cached",
    }
    for who, label in labels.items():
        row = result["results"][who]
        table.add_row(
            label,
            fmt(row["train_samples_per_s"], "rate"),
            fmt(row["eval_samples_per_s"], "rate"),
            fmt(row["train_peak_mb"], ".0f"),
            fmt(row["eval_peak_mb"], ".0f"),
        )
    for floor, suffix in (("floor", ""), ("structural floor", "_structural")):
        table.add_row(
            f"ratio to {floor}", fmt(result[f"train_ratio{suffix}"], ".2f") + "x",
            fmt(result[f"eval_ratio{suffix}"], ".2f") + "x"
            + f" ({fmt(result[f'eval_ratio_cached{suffix}'], '.2f')}x cached)", "", "",
            style="bold",
        )  # fmt: skip
    return table
