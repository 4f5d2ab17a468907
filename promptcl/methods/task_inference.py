"""Task-identity inference (TII) and task-adaptive prediction (TAP), shared by HiDe-Prompt and Hash.

HiDe-Prompt (Wang et al., NeurIPS 2023; thu-ml/HiDe-Prompt) splits class-incremental prediction
into three parts; see ``hide_prompt.py`` for the sources of every value:

- WTP (within-task prediction): the prompted backbone, trained with the true task id. Subclasses
  say how a task's prompted features are computed (``task_features``).
- TII: the frozen backbone's feature q(x) goes through ``MlpMapping`` and a linear head over all
  classes, trained per task on the task's classes; at test time t^ = task(argmax over seen
  classes), per sample.
- TAP: after each task, Gaussian statistics (``ClassStats``) of the task's classes are stored for
  q(x) and for the WTP features; for t > 0 the WTP head and the TII classifier are re-aligned on
  samples drawn from the statistics of all seen classes (``replay_batches``).

The phases of a task (``phases``), run by the engine with one stepper, log and checkpoints:

    prompts     WTP training on the task's data; its finish fits both class statistics and
                keeps the task's q(x) for the TII (``fit_statistics``)
    tii         the TII classifier on those features (batches made here)
    align-tii   t > 0: TAP of the TII classifier on replayed q(x) features
    align-head  t > 0: TAP of the WTP head on replayed WTP features

One generator, seeded from the run's RNG when the prompts phase finishes, draws the k-means
seeds, the TII's shuffles and the replayed features in that order; its state is a buffer
(``replay_rng``), so a run killed in any phase resumes exactly.

Hash (specs/image-methods.md §4.2) has no public code; its spec builds on this layout to pick a
task router without task identity, so the machinery lives here, once, for both.

WTP loss: CE over the current task's classes + reg * L_cr, with HiDe's ``orth_loss``
    L_cr = CE( M M^T / 0.8, arange ),  M = [mu_old; f]                         ((P + B), F)
where mu_old are the stored prototypes (every centroid of every old class) and f the batch's
features; on task 0 M = f.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl import collectives
from promptcl.backbones.base import Backbone
from promptcl.methods.base import Batch, Optim, Phase, Task, gather_features
from promptcl.methods.prompt_base import PromptConfig, PromptMethod
from promptcl.prompts.gaussian import (
    ClassStats,
    Mode,
    masked_cross_entropy,
    replay_batches,
    stored_generator,
)

CR_TEMPERATURE = 0.8  # official ``orth_loss``: ``torch.matmul(M, M.t()) / 0.8``
CA_MOMENTUM = 0.9  # official ``optim.SGD(..., momentum=0.9)`` in the alignment


class TaskInferenceConfig(PromptConfig):
    """HiDe-Prompt's CIFAR-100 values (``train_cifar100_vit.sh``, effective learning rates)."""

    larger_prompt_lr: bool = Field(
        True, description="head lr = 0.1 * lr unless head_lr is set (--larger_prompt_lr)"
    )
    reg: float = Field(0.1, ge=0, description="weight of the contrastive regulariser L_cr")
    ca_storage: Mode = Field(
        "multi-centroid", description="class statistics (ca_storage_efficient_method)"
    )
    n_centroids: int = Field(10, ge=1, description="k-means centroids per class (multi-centroid)")
    crct_epochs: int = Field(30, ge=0, description="alignment epochs (WTP head and TII)")
    ca_lr: float = Field(0.005, ge=0, description="WTP head alignment lr (SGD)")
    ca_weight_decay: float = Field(
        0.0, ge=0, description="alignment weight decay (effective official value)"
    )
    tii_epochs: int = Field(20, ge=0, description="TII epochs per task (TII stage of the script)")
    tii_lr: float = Field(4.6875e-5, ge=0, description="TII lr: 5e-4 * 24/256 (Adam)")
    tii_ca_lr: float = Field(4.6875e-4, ge=0, description="TII alignment lr: 0.005 * 24/256 (SGD)")
    tii_mlp_structure: list[int] = Field(
        [2], description="hidden widths of the TII MlpMapping, in multiples of D ([] = none)"
    )


def init_linear(layer: nn.Linear) -> nn.Linear:
    """timm's ViT init of linear layers (``init_weights_vit_timm``)."""
    nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class MlpMapping(nn.Module):
    """HiDe's TII feature mapping: LN(x + MLP(x)) with hidden widths ``dim * hidden[i]``.

    Layer i of the MLP is Linear -> GELU, except the last (Linear only) and, for deeper
    structures, the middle one (Linear -> LayerNorm). Dropout is 0 in the official runs.
    """

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        widths = [dim, *(dim * h for h in hidden), dim]
        layers: list[nn.Module] = []
        for i in range(len(hidden) + 1):
            linear = init_linear(nn.Linear(widths[i], widths[i + 1]))
            if i == len(hidden):
                layers.append(nn.Sequential(linear))
            elif i == len(hidden) // 2 and i != 0:
                layers.append(nn.Sequential(linear, nn.LayerNorm(widths[i + 1])))
            else:
                layers.append(nn.Sequential(linear, nn.GELU()))
        self.net = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))  # (B, D)


class TaskInference(nn.Module):
    """The TII classifier on frozen features: MlpMapping (or nothing) + a head over all classes."""

    def __init__(self, dim: int, num_classes: int, hidden: list[int]):
        super().__init__()
        self.mlp = MlpMapping(dim, hidden) if hidden else nn.Identity()
        self.head = init_linear(nn.Linear(dim, num_classes))

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.mlp(features))  # (B, C)


def contrastive_regulariser(features: Tensor, prototypes: Tensor) -> Tensor:
    """Official ``orth_loss`` without its weight: CE(M M^T / 0.8, arange), M = [prototypes; f]."""
    M = torch.cat([prototypes.to(features), features])  # (P + B, F)
    sim = M @ M.T / CR_TEMPERATURE  # (P + B, P + B)
    return F.cross_entropy(sim, torch.arange(len(M), device=M.device))


class TaskInferenceMethod(PromptMethod):
    """WTP prompts chosen per sample by TII, with TAP head alignment on Gaussian replay."""

    Config = TaskInferenceConfig
    config: TaskInferenceConfig

    def __init__(self, config: TaskInferenceConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        C, dim = self.num_classes, backbone.feature_dim
        init_linear(self.head)
        self.tii = TaskInference(dim, C, config.tii_mlp_structure)
        self.wtp_stats = ClassStats(C, dim, config.ca_storage, config.n_centroids)
        self.tii_stats = ClassStats(C, dim, config.ca_storage, config.n_centroids)
        self.register_buffer("class_task", torch.full((C,), -1, dtype=torch.long))
        self.register_buffer("replay_rng", torch.Generator().get_state())  # see the module doc
        self._tii_data: tuple[Tensor, Tensor] | None = None  # the task's q(x) and labels

    @abstractmethod
    def task_features(self, x: Tensor, tasks: Tensor) -> Tensor:
        """f(x_i; the prompts of task tasks[i]) for each sample: (B, F)."""

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.class_task[task.start : task.end] = task.index

    def head_lr(self) -> float:
        cfg = self.config
        if cfg.head_lr is not None:
            return cfg.head_lr
        return 0.1 * cfg.lr if cfg.larger_prompt_lr else cfg.lr

    def wtp_loss(self, features: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """CE over the current task's classes + reg * L_cr on the batch's WTP features."""
        ce = F.cross_entropy(self.mask_for_training(self.head(features)), labels)
        if self.config.reg == 0:
            return {"loss": ce, "ce": ce.detach()}
        cr = contrastive_regulariser(features, self.wtp_stats.prototypes())
        return {"loss": ce + self.config.reg * cr, "ce": ce.detach(), "cr": cr.detach()}

    # -- the phases ---------------------------------------------------------------------------
    def phases(self, task: Task) -> list[Phase]:
        cfg = self.config
        tii_optim = Optim(
            "adam", cfg.tii_lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
            grad_clip=cfg.grad_clip,
        )  # fmt: skip
        phases = [
            Phase(
                "prompts",
                cfg.epochs,
                self.param_groups,
                self.training_step,
                Optim.of(cfg),
                batch_size=cfg.batch_size,
                finish=self.fit_statistics,
            ),
            Phase(
                "tii",
                cfg.tii_epochs,
                lambda: [{"params": list(self.tii.parameters())}],
                self.tii_step,
                tii_optim,
                data="method",
                batches=self.tii_batches,
                prepare=self.tii_features,
            ),
        ]
        if task.index > 0:  # TAP: re-align both classifiers on replayed features of seen classes
            phases += [
                self.alignment(task, "align-tii", self.tii, self.tii_stats, cfg.batch_size, cfg.tii_ca_lr),
                self.alignment(task, "align-head", self.head, self.wtp_stats, 5 * cfg.batch_size, cfg.ca_lr),
            ]  # fmt: skip
        return phases

    def fit_statistics(self, loader: DataLoader) -> None:
        """After the WTP epochs: class statistics of q(x) and of the WTP features."""
        assert self.task is not None, "begin_task was not called"
        plain, prompted, labels = self._task_features(self.task.index, loader)  # (N, F) x2, (N,)
        g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))  # from the run's RNG
        self.tii_stats.fit(plain, labels, g)
        self.wtp_stats.fit(prompted, labels, g)
        self.replay_rng.copy_(g.get_state())
        self._tii_data = plain, labels

    def tii_features(self, loader: DataLoader) -> None:
        """The TII's training data, q(x) of the task: kept from ``fit_statistics``, or recomputed
        (the same values) when a run resumes inside the phase."""
        if self._tii_data is None:
            self._tii_data = gather_features(loader, self.query, self.head.weight.device)

    def tii_batches(self, epoch: int) -> Iterator[Batch]:
        """The TII stage of one epoch: the task's features, shuffled, in batches."""
        assert self._tii_data is not None, "the tii phase was not prepared"
        features, labels = self._tii_data
        with self.replay_generator() as g:
            order = torch.randperm(len(features), generator=g).to(features.device)
        for rows in order.split(self.config.batch_size):
            yield Batch(features[rows], labels[rows], rows)

    def tii_step(self, batch: Batch) -> dict[str, Tensor]:
        """CE over the current task's classes of the TII classifier."""
        logits = self.mask_for_training(self.tii(batch.x))  # (b, C)
        return {"loss": F.cross_entropy(logits, batch.y)}

    def alignment(
        self, task: Task, name: str, head: nn.Module, stats: ClassStats, per_class: int, lr: float
    ) -> Phase:
        """``train_task_adaptive_prediction``: SGD with momentum and cosine annealing, as many
        batches of ``per_class`` features per epoch as there are old classes (``crct_num``)."""
        seen = torch.arange(task.end, device=self.class_task.device)

        def batches(epoch: int) -> Iterator[Batch]:
            with self.replay_generator() as g:
                drawn = list(replay_batches(stats, seen, per_class, None, task.start, g))
            return (Batch(*b) for b in drawn)

        def step(batch: Batch) -> dict[str, Tensor]:
            return {"loss": masked_cross_entropy(head(batch.x), batch.y, seen)}

        optim = Optim(
            "sgd", lr, momentum=CA_MOMENTUM, weight_decay=self.config.ca_weight_decay,
            schedule="cosine-annealing",
        )  # fmt: skip
        groups = lambda: [{"params": [p for p in head.parameters() if p.requires_grad]}]  # noqa: E731
        return Phase(name, self.config.crct_epochs, groups, step, optim, "method", batches=batches)

    def replay_generator(self) -> contextlib.AbstractContextManager[torch.Generator]:
        """The generator of ``replay_rng``; what is drawn from it is recorded back in the buffer."""
        return stored_generator(self.replay_rng)

    def end_task(self, task: Task, loader: DataLoader) -> None:
        self._tii_data = None

    def _task_features(self, t: int, loader: DataLoader) -> tuple[Tensor, Tensor, Tensor]:
        """Un-instructed q(x) and instructed f(x; task t) features of the task's training data.

        With several processes each reads its block of the data and the blocks are gathered in
        order, so every process fits the statistics and trains the TII on the same features."""
        device = self.head.weight.device
        plain, prompted, labels = [], [], []
        for x, y, *_ in loader:
            x = x.to(device)
            plain.append(self.query(x))
            prompted.append(self.task_features(x, torch.full((len(x),), t, device=device)))
            labels.append(y.to(device))
        gather = collectives.all_gather_cat
        return gather(torch.cat(plain)), gather(torch.cat(prompted)), gather(torch.cat(labels))

    @torch.no_grad()
    def infer_tasks(self, x: Tensor) -> Tensor:
        """TII: t^ = task(argmax over the seen classes of the TII logits), per sample: (B,)."""
        return self.tasks_of(self.query(x))

    @torch.no_grad()
    def tasks_of(self, query: Tensor) -> Tensor:
        """TII from precomputed frozen features q(x) (B, F): (B,)."""
        assert self.task is not None, "begin_task was not called"
        logits = self.tii(query)[:, : self.task.end]  # (B, seen)
        return self.class_task[logits.argmax(1)]

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.task_features(x, self.infer_tasks(x)))  # (B, C)
