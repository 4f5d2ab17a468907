"""Hash: History-Aware prompt-SHaring, a shared prompt pool routed like a mixture of experts.

Li, Ding, Dong, Wang, Zhao, He, Gong. "Is Parameter Isolation Better for Prompt-Based Continual
Learning?" (CVPR 2026, arXiv 2601.20894). No code is public ("Code: TBD"); this file implements
the seed document's description (../shared/seeds/002_ec6be0d7fe235721.txt, cited as [seed]) and
../shared/specs/image-methods.md §4. Every choice the seed leaves open is marked [inferred] and is
a config field.

Equations [seed]:
- Pool. E experts p_e in R^{L_p x d}, shared by all tasks, at the blocks ``prompt_layers``
  (the seed's "layers 1-4", read 1-indexed: blocks 0..3 [inferred]; one prompt per block).
- Task router R_t (one per task; older routers frozen): s~ = x W_r / sqrt(d), averaged over the
  sequence, gives s in R^E. Here x is the frozen backbone's final token sequence, so s is the mean
  token times W_r / sqrt(d) (``router_input: tokens``) [inferred: the seed does not say which
  layer's tokens; every key-query method routes on the frozen model's output].
- Sparse gating. K(s) = Top-K(s), w_k = exp(s_k) / sum_{j in K(s)} exp(s_j), instance prompt
  p~ = sum_{k in K(s)} w_k p_k, split into p_K / p_V and prepended to the keys and values
  (``prefix: halves`` [seed: "split into p_K / p_V"]).
- Activation entropy H(w) = -sum_k w_k log w_k, logged per epoch as ``entropy``; the share of
  the Top-K choices that fall on A_t (below) as ``hot_share``.
- HDR. H_e^t counts the Top-K selections of expert e during the training of tasks < t (kept in
  ``counts``; the counts of task t are added when it ends, so the history is fixed while a task
  trains [inferred]). s~_e = s_e - phi(H_e^t); default phi = delta on A_t, the "Top-K
  high-frequency experts" (``hot_experts`` = top_k), 0 elsewhere (``prompts/history.py``).
  Selection and weights both use s~. The penalty a router was trained with is kept with it and
  applied at test time too (``hdr_at_test``) [inferred: the spec suggested plain scores at test,
  but a router learned under the penalty routes differently without it].
- HGM. g~_e = psi(H_e^t) g_e with psi = beta on A_t, 1 elsewhere; the seed calls this "equivalent
  to reducing the learning rate for high-frequency experts", i.e. the regulariser
  R_e = 1/2 H_e^t ||theta_e - theta_e^t||^2. Under Adam, the seed's optimiser, a constant gradient
  scale cancels out of the update (m / sqrt(v) is scale-free), so scaling gradients would change
  nothing but epsilon's share. The default (``hgm_mode: lr``) therefore applies psi to each
  expert's learning rate, which is the stated equivalence; ``hgm_mode: grad`` scales the
  gradients literally (exact with SGD) [inferred].
- Loss: CE over the current task's classes [seed: "supervised classification loss L_cls"];
  HiDe's L_cr is available (``reg``) but off.

Task identity at test time [inferred, spec §4.2]: routers are per task, and test samples carry
no task id. ``router_choice: tii`` (default) uses HiDe-Prompt's task-identity inference on frozen
features to pick R_t^ per sample, and HiDe's task-adaptive prediction (head alignment on Gaussian
replay of class statistics), as in ``task_inference.py``; ``router_choice: mean`` averages the
scores of all seen routers instead (no task inference for routing).

Measured on synth-shapes-10 (``benchmarks/hash_ablation.py``, seed 0; the figures are in the
header of ``configs/hash_synth-shapes-10.yaml``). HGM touches only A_t's experts, so when delta
exceeds the spread of a router's scores HDR never selects them and HGM has nothing left to
modulate. At that config's lr, 0.001 (chosen on validation data), the routers stay small, A_t's
experts get 0 % of a new task's choices, and the full method equals + HDR (57.8 / 13.9; pool only
56.35 / 14.8, + HGM 56.6 / 14.3). At the former lr 0.01 the routers grow past delta = 0.25 and
the four rows order as in the paper (pool only 36.7, + HDR 42.45, + HGM 41.15, full 44.8).

Penalty scale (``hdr_scale``) [inferred]. A new router starts at std 0.02, so its scores are far
below delta = 0.25 and A_t's experts are shut out of the new task's routing (``hot_share`` in
``log.jsonl`` is their share of the Top-K choices; even use would be 25 %). ``hdr_scale: spread``
measures delta in units of each sample's score spread instead, so the penalty means the same
while the router grows. Measured (seed 0, ``hash_ablation.py --rows full --set
method.hdr_scale=spread method.hdr_delta=D``), full method FAA / FM and A_t's share of the choices
in a task's first / last epoch:

    lr      penalty          FAA / FM       A_t share
    0.001   absolute 0.25    57.8 / 13.9    0 % / 0 %       (the config)
    0.001   spread 0.25      57.9 / 13.7    22 % / 20 %
    0.001   spread 1         56.7 / 14.1    5.5 % / 4.1 %
    0.01    absolute 0.25    44.8 / 32.6    0.1 % / 3.4 %
    0.01    spread 0.25      43.8 / 33.7    20 % / 22 %     (+ HDR alone 37.45 / 43.3)
    0.01    spread 1         40.6 / 37.2    11 % / 7 %
    0.01    spread 3         41.35 / 35.1   0 % / 0 %

At lr 0.001 the form of the penalty changes the result by about a point. At lr 0.01 letting the
hot experts in freely raises forgetting, and shutting them out entirely leaves HGM idle (the full
method falls to the + HDR row). The seed's absolute penalty stays the default.
A test shows that Adam steps with ``hgm_mode: grad`` equal those without HGM when epsilon is
negligible; in practice the scale leaks through only via epsilon and gradient-norm clipping.

Drift, measured (``benchmarks/frozen_prompts.py``, synth-shapes-10, seed 0): the old classes'
Gaussian statistics are fitted once, when their task ends, but the shared experts keep training,
so TAP re-aligns the head on features the model no longer produces. At the config's former lr,
0.01, training the pool cost 12 points (FAA 44.8, FM 32.6; with ``freeze_prompts`` 57.1, FM
13.9), and not through task inference: with every test image routed by its true task's router,
the trained pool gave 56.5 % over all classes and the frozen one 58.6 %. ``drift_compensation:
true`` [inferred] shifts each old task's stored means, when a task ends, by the mean change its
router's features show on the new task's data between the pool as the task began and as it ended
(``compensate_drift``); it recovered little (FAA 46.5, FM 30.7), so the drift is more than a shift
of the means, and it stays off by default. The remedy was the learning rate: tuned on validation
data (``benchmarks/tune_on_validation.py``), lr 0.001 gives FAA 57.8 / FM 13.9 with the pool
trained and 57.4 / 13.7 with it frozen (seed 1: 56.0 / 15.3 and 57.15 / 14.4). The pool no
longer costs 12 points, and earns nothing either (-0.4 on the mean of two seeds): on this
benchmark the frozen tiny backbone's features, task inference and TAP carry Hash's result, as
they carry HiDe-Prompt's.

Learning rate [inferred]. The seed gives none; the default is HiDe-Prompt's effective prompt lr,
0.0028125. HiDe computes it as 0.03 x 24/256 from the per-device batch (``unscale_lr``), but uses
it at a global batch of 192 (8 devices x 24, DDP averaging the gradients), close to the seed's
128; it is not scaled to 128 because for Adam neither rule is established (linear: x 0.67,
square root: x 0.82), both are small beside the sensitivity the validation search measures on
synth-shapes-10 (FAA 44.8 at lr 0.01 against 57.8 at 0.001, a factor of 10; header of the synth
config), and the HiDe-Prompt baseline it is compared with runs at the same lr.

Defaults. [seed]: ViT-B/16 Sup-21K, Adam (0.9, 0.999), batch 128, instance-level selection in
training and inference. [inferred]: E = 8 experts, Top-2, L_p = 10 (5 key + 5 value tokens, the
prefix size of HiDe's L = 5; with 8 experts the pool plus routers stays smaller than HiDe's ten
task prompts, as the seed says Hash's parameters do), delta = 0.25 (see above), beta = 0.5,
routers initialised like timm's linear layers (trunc-normal, std 0.02), and the rest from
HiDe-Prompt's CIFAR-100 script (effective lr 0.0028125, head lr 0.1 lr, 50 epochs, step schedule,
grad clip 1.0, TII and TAP values).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.collectives import all_reduce_sum
from promptcl.config import Schedule
from promptcl.methods.base import Batch, Phase, Task
from promptcl.methods.prompt_base import check_layers
from promptcl.methods.task_inference import TaskInferenceConfig, TaskInferenceMethod
from promptcl.prompts.history import DECAYS, PENALTIES, most_activated, scale_gradient
from promptcl.prompts.prefix import halves, per_kv
from promptcl.registry import methods

ROUTER_STD = 0.02  # timm's init of linear layers [inferred]


class HashConfig(TaskInferenceConfig):
    name: str = "hash"
    lr: float = Field(0.0028125, ge=0, description="prompt and router lr (HiDe's effective lr)")
    epochs: int = Field(50, ge=0, description="epochs per task (HiDe's CIFAR-100) [inferred]")
    schedule: Schedule = Field("step", description="x0.1 after 30 epochs (HiDe's CIFAR-100)")
    batch_size: int = Field(128, ge=1, description="batch size [seed]")
    reg: float = Field(
        0.0, ge=0, description="weight of HiDe's L_cr (the seed trains with CE only)"
    )
    pool_size: int = Field(8, ge=1, description="E, experts in the shared pool [inferred]")
    top_k: int = Field(2, ge=1, description="experts per sample [inferred]")
    prompt_length: int = Field(10, ge=1, description="L_p tokens per expert and block [inferred]")
    prefix: Literal["halves", "per_kv"] = Field(
        "halves", description="halves: L_p/2 key + L_p/2 value tokens; per_kv: L_p of each"
    )
    prompt_layers: list[int] = Field([0, 1, 2, 3], description="blocks with prefixes (layers 1-4)")
    router_input: Literal["tokens", "class"] = Field(
        "tokens", description="frozen final tokens averaged over the sequence, or the class feature"
    )
    router_init: Literal["fresh", "previous"] = Field(
        "fresh", description="a new task's router: trunc-normal init, or a copy of the last one"
    )
    router_choice: Literal["tii", "mean"] = Field(
        "tii", description="router at test time: TII's task, or the mean of all seen routers"
    )
    hdr: str = Field("top-k", description=f"routing penalty phi: {', '.join(PENALTIES)}")
    hdr_delta: float = Field(
        0.25, ge=0, description="delta of the routing penalty, below the score spread [inferred]"
    )
    hdr_at_test: bool = Field(True, description="apply each router's penalty at test time too")
    hdr_scale: Literal["absolute", "spread"] = Field(
        "absolute",
        description="absolute: s - phi(H) [seed]; spread: s - phi(H) * std_e(s) per sample, "
        "delta in units of the router's score spread [inferred]",
    )
    drift_compensation: bool = Field(
        False,
        description="shift old classes' stored feature means by the drift the shared pool caused "
        "on the current task's data [inferred]",
    )
    hgm: str = Field("top-k", description=f"gradient decay psi: {', '.join(DECAYS)}")
    hgm_beta: float = Field(0.5, gt=0, le=1, description="beta of the gradient decay [inferred]")
    hgm_mode: Literal["lr", "grad"] = Field(
        "lr", description="apply psi to each expert's lr (Adam-proof) or to its gradient"
    )
    hot_experts: int | None = Field(
        None, ge=1, description="size of the most-activated set A_t; None = top_k"
    )

    @model_validator(mode="after")
    def _check(self) -> HashConfig:
        if self.hdr not in PENALTIES:
            raise ValueError(f"hdr {self.hdr!r} is not one of {sorted(PENALTIES)}")
        if self.hgm not in DECAYS:
            raise ValueError(f"hgm {self.hgm!r} is not one of {sorted(DECAYS)}")
        if self.top_k > self.pool_size:
            raise ValueError(f"top_k {self.top_k} exceeds pool_size {self.pool_size}")
        if self.prefix == "halves" and self.prompt_length % 2:
            raise ValueError(
                f"prefix 'halves' needs an even prompt_length, got {self.prompt_length}"
            )
        return self


def activation_entropy(weights: Tensor) -> Tensor:
    """H(w) = -sum_k w_k log w_k per sample over the selected experts: (B, K) -> (B,)."""
    return -(weights * weights.clamp_min(1e-12).log()).sum(1)


@methods.register("hash")
class Hash(TaskInferenceMethod):
    """A shared pool of prompt experts, task routers with Top-K gating, HDR and HGM."""

    Config = HashConfig
    config: HashConfig
    ddp_find_unused = True  # experts outside every sample's Top-K get no gradient in a step

    def __init__(self, config: HashConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        check_layers("prompt_layers", config.prompt_layers, backbone)
        E, layers, L, D = (
            config.pool_size,
            len(config.prompt_layers),
            config.prompt_length,
            backbone.embed_dim,
        )
        shape = (layers, L, D) if config.prefix == "halves" else (layers, 2, L, D)
        # The HiDe/CODA prompt init, uniform(-1, 1) [inferred].
        self.experts = nn.ParameterList(
            nn.Parameter(torch.empty(shape).uniform_(-1, 1)) for _ in range(E)
        )
        self.routers = nn.ParameterList()  # router t: (D, E), created at begin_task(t)
        self.register_buffer("counts", torch.zeros(E, dtype=torch.long))  # H after the last task
        self.register_buffer("task_counts", torch.zeros(E, dtype=torch.long))  # this task's
        # This epoch's, on this process alone; summed over processes into task_counts when the
        # epoch ends (so that the checkpoint after it holds the same counts on every process).
        self.register_buffer("epoch_counts", torch.zeros(E, dtype=torch.long), persistent=False)
        self.register_buffer("history", torch.zeros(0, E, dtype=torch.long))  # row t: H^t
        if config.drift_compensation:  # the pool as the current task found it, checkpointed
            self.register_buffer("start_experts", torch.stack(list(self.experts)).detach().clone())

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.experts, self.routers]

    @property
    def hot_size(self) -> int:
        return self.config.hot_experts or self.config.top_k

    def penalty(self, t: int) -> Tensor:
        """phi(H^t): the HDR penalty router t is trained (and tested) with, (E,)."""
        return PENALTIES[self.config.hdr](self.history[t], self.hot_size, self.config.hdr_delta)

    def decay(self, t: int) -> Tensor:
        """psi(H^t): the HGM factor of each expert while task t trains, (E,)."""
        return DECAYS[self.config.hgm](self.history[t], self.hot_size, self.config.hgm_beta)

    # -- routing ------------------------------------------------------------------------------
    def summarise(self, tokens: Tensor) -> Tensor:
        """What the routers read from the frozen final tokens (B, N, D): (B, D)."""
        return tokens.mean(1) if self.config.router_input == "tokens" else tokens[:, 0]

    def router_input(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The frozen router input of a batch, from the query cache when it is on: (B, D)."""

        def compute(images: Tensor) -> Tensor:
            with torch.no_grad():
                return self.summarise(self.backbone(images))

        if self.query_cache is not None and index is not None and self.training:
            return self.query_cache(x, index, compute)
        return self.frozen(x, compute, "router")

    def scores(self, u: Tensor, tasks: Tensor | None, penalised: bool = True) -> Tensor:
        """s~ = u W_t / sqrt(d) - phi(H^t) [x std_e(s), ``hdr_scale: spread``] with router
        t = tasks[i] per sample, or (None) the mean over all seen routers: (B, E)."""
        W = torch.stack(list(self.routers))  # (T, D, E)
        T = len(W)
        penalty = torch.stack([self.penalty(t) for t in range(T)]).to(u)  # (T, E)
        if not penalised:
            penalty = torch.zeros_like(penalty)
        if tasks is None:
            s = torch.einsum("bd,tde->bte", u, W) / math.sqrt(u.shape[1])  # (B, T, E)
            return (s - penalty * self.penalty_unit(s)).mean(1)
        s = torch.einsum("bd,bde->be", u, W[tasks]) / math.sqrt(u.shape[1])  # (B, E)
        return s - penalty[tasks] * self.penalty_unit(s)

    def penalty_unit(self, s: Tensor) -> Tensor | float:
        """What delta is measured in: 1 (``hdr_scale: absolute``), or each sample's spread of
        the router's scores over the experts, std_e(s), held constant in the backward
        (``spread``: a new router's scores are of order 0.02 |u|, far below delta, and grow as
        it trains; in units of their spread the penalty means the same throughout)."""
        if self.config.hdr_scale == "absolute":
            return 1.0
        return s.detach().std(-1, keepdim=True)

    def select(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Top-K experts (B, K) and their softmax weights (B, K)."""
        top, idx = scores.topk(self.config.top_k, dim=1)
        return idx, top.softmax(1)

    def instance_prompts(self, idx: Tensor, weights: Tensor, decay: Tensor | None = None) -> Tensor:
        """p~ = sum_k w_k p_k per sample: (B, layers, [2,] L, D); ``decay`` scales the experts'
        gradients (HGM, grad mode)."""
        pool = torch.stack(list(self.experts))  # (E, ...)
        if decay is not None:
            pool = scale_gradient(pool, decay.view(-1, *[1] * (pool.dim() - 1)).to(pool))
        chosen = pool[idx]  # (B, K, ...)
        return torch.einsum("bk,bk...->b...", weights, chosen)

    def layer_prompts(self, prompts: Tensor) -> LayerPrompts:
        split = halves if self.config.prefix == "halves" else per_kv
        return LayerPrompts(
            prefix={
                layer: split(prompts[:, j]) for j, layer in enumerate(self.config.prompt_layers)
            }
        )

    def routed_features(
        self, x: Tensor, u: Tensor, tasks: Tensor | None, train: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Features of x with its routed prompt, the chosen experts (B, K) and weights (B, K).
        ``train``: the training step's routing (always penalised; HGM in grad mode)."""
        idx, weights = self.select(self.scores(u, tasks, train or self.config.hdr_at_test))
        decay = None
        if train and self.config.hgm_mode == "grad":
            assert self.task is not None, "begin_task was not called"
            decay = self.decay(self.task.index)
        prompts = self.instance_prompts(idx, weights, decay)
        return self.backbone.encode(x, self.layer_prompts(prompts)), idx, weights

    def task_features(self, x: Tensor, tasks: Tensor) -> Tensor:
        return self.routed_features(x, self.router_input(x), tasks)[0]

    # -- the contract -------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        t, D, E = task.index, self.backbone.embed_dim, self.config.pool_size
        device = self.counts.device
        while len(self.routers) <= t:
            router = nn.Parameter(torch.empty(D, E, device=device))
            if self.config.router_init == "previous" and len(self.routers) > 0:
                router.data.copy_(self.routers[-1])
            else:
                nn.init.trunc_normal_(router, std=ROUTER_STD)
            self.routers.append(router)
        self.history = torch.cat([self.history[:t], self.counts[None]])  # H^t
        if self.config.drift_compensation:
            with torch.no_grad():
                self.start_experts.copy_(torch.stack(list(self.experts)))
        for i, router in enumerate(self.routers):
            router.requires_grad_(i == t)

    def param_groups(self) -> list[dict[str, Any]]:
        assert self.task is not None, "begin_task was not called"
        lr = self.config.lr
        groups: list[dict[str, Any]] = [{"params": [self.routers[self.task.index]], "lr": lr}]
        by_factor: dict[float, list[nn.Parameter]] = defaultdict(list)
        scaled = self.config.hgm_mode == "lr"
        for expert, factor in zip(self.experts, self.decay(self.task.index).tolist(), strict=True):
            by_factor[factor if scaled else 1.0].append(expert)
        groups += [{"params": params, "lr": lr * f} for f, params in sorted(by_factor.items())]
        groups.append({"params": list(self.head.parameters()), "lr": self.head_lr()})
        return groups

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        assert self.task is not None, "begin_task was not called"
        u = self.router_input(batch.x, batch.index)  # (B, D)
        tasks = torch.full((len(u),), self.task.index, device=u.device)
        features, idx, weights = self.routed_features(batch.x, u, tasks, train=True)
        with torch.no_grad():
            self.epoch_counts += torch.bincount(idx.flatten(), minlength=self.config.pool_size)
        out = self.wtp_loss(features, batch.y)
        out["entropy"] = activation_entropy(weights.detach()).mean()
        # The share of the Top-K choices that fall on A_t (HDR's penalised experts).
        hot = most_activated(self.history[self.task.index], self.hot_size)
        out["hot_share"] = hot[idx].float().mean()
        return out

    @torch.no_grad()
    def end_epoch(self, phase: Phase) -> None:
        """The epoch's activation counts, summed over processes, join the task's."""
        super().end_epoch(phase)
        if phase.name == "prompts":
            self.task_counts += all_reduce_sum(self.epoch_counts)
            self.epoch_counts.zero_()

    def fit_statistics(self, loader: DataLoader) -> None:
        self.counts += self.task_counts  # the task's counts join the history (H^{t+1})
        self.task_counts.zero_()
        super().fit_statistics(loader)
        assert self.task is not None, "begin_task was not called"
        if self.config.drift_compensation and self.task.index > 0:
            self.compensate_drift(loader)

    @torch.no_grad()
    def compensate_drift(self, loader: DataLoader) -> None:
        """[inferred] Shift each old task's stored WTP means by the mean drift of its router's
        features on this task's data: mean over x of f(x; router tau, pool now) minus f(x;
        router tau, pool as this task began). A task-level form of semantic drift compensation
        (Yu et al., CVPR 2020); the seed stores the statistics once and says nothing of drift."""
        assert self.task is not None, "begin_task was not called"
        t, device = self.task.index, self.head.weight.device
        trained = torch.stack(list(self.experts)).clone()
        drift = torch.zeros(t, self.backbone.feature_dim, device=device, dtype=torch.float64)
        count = torch.zeros((), device=device, dtype=torch.float64)
        for x, *_ in loader:
            x = x.to(device)
            u = self.router_input(x)  # one frozen pass serves both pools
            for sign, pool in ((1.0, trained), (-1.0, self.start_experts)):
                for expert, value in zip(self.experts, pool, strict=True):
                    expert.copy_(value)
                for tau in range(t):
                    tasks = torch.full((len(x),), tau, device=device)
                    drift[tau] += sign * self.routed_features(x, u, tasks)[0].double().sum(0)
            count += len(x)
        for expert, value in zip(self.experts, trained, strict=True):
            expert.copy_(value)
        drift = (all_reduce_sum(drift) / all_reduce_sum(count)).float()  # (t, F)
        for tau in range(t):
            classes = self.class_task == tau
            self.wtp_stats.means[classes] += drift[tau]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        query, u = self.query_and_router_input(x)
        tasks = self.tasks_of(query) if self.config.router_choice == "tii" else None
        return self.head(self.routed_features(x, u, tasks)[0])

    def query_and_router_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(x) for TII (B, F) and the routers' input (B, D), from one frozen pass."""

        def compute(images: Tensor) -> Tensor:
            tokens = self.backbone(images)
            return torch.cat([self.backbone.pool(tokens), self.summarise(tokens)], dim=1)

        both = self.frozen(x, compute, "query+router")
        return both.split([self.backbone.feature_dim, self.backbone.embed_dim], dim=1)
