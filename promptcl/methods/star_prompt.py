"""STAR-Prompt: two-level prompts, CLIP class keys, semantic residuals, mixture-of-Gaussians replay.

Menabue, Frascaroli, Boschini, Sangineto, Bonicelli, Porrello, Calderara, "Semantic Residual
Prompts for Continual Learning" (ECCV 2024, arXiv 2403.06870). Official code: aimagelab/mammoth
``models/starprompt.py`` and ``models/star_prompt_utils/`` (end-to-end model); tuned values in
``docs/how_to_run/starprompt.rst``. Spec: ../shared/specs/image-methods.md §2.

A frozen CLIP (the auxiliary backbone ``clip_backbone``, default ViT-L/14) and a frozen ViT (the
run's backbone) learn in two levels; q(x) is CLIP's (unnormalised) image embedding.

First level (``prompts.class_context``): one learnable context token v_c per class in CLIP's text
tower gives the class key k_c = normalize(E_txt([SOS, v_c, name_c, ".", EOS])). Per task t with
current classes C_t and past classes P_t, phase ``first-stage`` (the task's images through the
test transforms, as the official code swaps in CLIP's preprocessing):

    L_1 = CE(exp(s_CLIP) cos(q(x), k_c) over C_t, y) + lambda_1 mean_{c in C_t, c' in P_t} (v_c . v_c')^2

(past logits masked, past vectors detached: only C_t's vectors learn). Then its first-level
generative replay: a diagonal mixture of 5 Gaussians per new class on q(x) (``prompts.mixture``:
k-means initialisation, EM in float64), and phase ``first-replay``: SGD on exp(s_CLIP)
cos(z, k_c) over every seen class, z drawn from the mixtures (256 per class, batches of 128,
fresh draws each epoch), past keys fixed. Its end sets the keys of C_t, which never change again.

Second level (``prompts.semantic_residual``): in every ViT block l, each class has a residual
prompt p_{l,c} and a modulation vector a_{l,c}; s_{l,c} = 5 cos(q(x) * softmax(a_{l,c}), k_c)
picks c*_l = argmax_c s_{l,c} per layer and r_l = s_{l,c*} p_{l,c*} (paper Eq. 5) is added to the
block's attention values, i.e. h <- h + MSA(LN(h)) + W_o r_l (the ``value`` prompt kind). Phase
``train`` (the task's augmented images):

    L_2 = CE(head(CLS) over C_t, y) + lambda_2 mean_l [mean_{c in C_t} (||p_{l,c}||^2 - 1)^2
                                                     + mean_{c in C_t, c' in P_t} (p_{l,c} . p_{l,c'})^2]

with Adam and mammoth's ``CosineSchedule`` (``coda-cosine``); the head, p and a train, past
classes' p and a detached. At its end a mixture per new class is fitted on the prompted CLS
features and the head is backed up; for t > 0 phase ``second-replay`` trains the head with SGD
for 10 + 5t epochs on features drawn for every seen class, with cross-entropy on logits
normalised as z / (0.1 ||z||). That aligned head is evaluated; the next task restores the backup
and trains from the unaligned head (official ``recall_classifier_second_stage``).

Prediction: q(x), the per-layer retrieval over every seen class, head(CLS).

Ablation switches (``config``): ``prompt_mode: prefix`` (the official ``concat``: per-class
prefix tuning of length 5 instead of the value residual), ``confidence_modulation: false``
(r_l = p_{l,c*}), ``first_stage_replay`` / ``second_stage_replay`` (the official ``enable_gr``
switches both), ``replay_model: gaussian`` (one diagonal Gaussian per class), ``freeze_prompts``
(p and a stay at their initialisation; the head and the first level train as usual).

Departures from the official code:
- The second-level statistics are read from the task's images through the test transforms (the
  engine's convention for statistics), the official code reads the augmented training images
  ``num_monte_carlo_gr_second_stage`` times; identical without augmentation
  (``data.augment: false``). The first level's Monte-Carlo passes are left out: its images are
  not augmented, so repeated passes add copies of the same features.
- First-stage images are the test transforms (bilinear resize, centre crop at the ViT's input
  size) normalised with CLIP's statistics, where CLIP's own preprocessing resizes bicubically.
- CLIP runs in the run's precision; the official code casts it to fp16 for the first stage.
- The single-Gaussian ablation is ``ClassStats``' ``variance`` mode (unbiased variance + 1e-4),
  where the official ``Gaussian`` uses the unbiased standard deviation without the 1e-4.
- The official seeds torch's global generator with the run seed before every head alignment;
  here one generator, whose state is a buffer (``replay_rng``), draws the k-means seeds and every
  replayed feature, so a run killed in any phase resumes exactly.
- The keys of past classes come from the stored keys (they are the official values: past
  context vectors receive no gradient, so recomputing them gives the same keys).
- ``query_cache: true`` caches q(x) per training sample for both stages; the first stage reads
  the plain view, the second the training view, so the cache is exact only without augmentation
  (as for the other key-query methods).
- ``virtual_bs_n`` (gradient accumulation) and ``ortho_split_val`` (their defaults: none) are
  not offered.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone
from promptcl.config import AuxiliaryBackbone, BackboneConfig, Schedule
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Optim, Phase, Task, gather_features
from promptcl.methods.prompt_base import PromptConfig, PromptMethod
from promptcl.methods.task_inference import init_linear
from promptcl.prompts.class_context import ClassContext
from promptcl.prompts.gaussian import ClassStats, stored_generator
from promptcl.prompts.mixture import Likelihood
from promptcl.prompts.semantic_residual import PromptMode, SemanticResidualPrompts
from promptcl.registry import methods

LOGIT_NORM = 0.1  # second-level alignment: logits / (0.1 ||logits||) (``train_alignment_epoch``)


class StarPromptConfig(PromptConfig):
    """The official end-to-end defaults (``models/starprompt.py``)."""

    name: str = "star_prompt"
    clip_backbone: AuxiliaryBackbone = Field(
        default_factory=lambda: BackboneConfig(name="clip-vit-l14"),
        description="frozen CLIP of the first level and the queries (official ViT-L/14)",
    )
    # second stage (the run's main phase)
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="second-stage optimiser")
    lr: float = Field(1e-3, ge=0, description="second-stage learning rate")
    schedule: Schedule = Field("coda-cosine", description="mammoth's CosineSchedule, per epoch")
    epochs: int = Field(5, ge=0, description="second-stage epochs per task (mammoth: n_epochs)")
    grad_clip: float | None = Field(None, description="max gradient norm (official: none)")
    lambda_second: float = Field(10.0, ge=0, description="lambda_2: second-stage ortho weight")
    prompt_mode: PromptMode = Field(
        "value", description="value: semantic residual; prefix: per-class prefix tuning (concat)"
    )
    prefix_length: int = Field(5, ge=1, description="prefix mode: key (and value) tokens")
    confidence_modulation: bool = Field(True, description="scale r by the similarity (Eq. 5)")
    layers: list[int] | None = Field(None, description="prompted ViT blocks; None = all")
    # first stage
    first_stage_epochs: int | None = Field(None, ge=0, description="None = epochs")
    first_stage_optimizer: Literal["sgd", "adam"] = Field("sgd", description="first-stage optim")
    first_stage_lr: float = Field(0.002, ge=0, description="first-stage learning rate")
    first_stage_momentum: float = Field(0.0, ge=0, description="first-stage SGD momentum")
    first_stage_weight_decay: float = Field(0.0, ge=0, description="first-stage weight decay")
    lambda_first: float = Field(30.0, ge=0, description="lambda_1: first-stage ortho weight")
    # generative replay
    first_stage_replay: bool = Field(True, description="first-level replay and alignment")
    second_stage_replay: bool = Field(True, description="second-level replay, head alignment")
    replay_model: Literal["mixture", "gaussian"] = Field(
        "mixture", description="per-class feature model (gr_model: mog / gaussian)"
    )
    mixture_components: int = Field(5, ge=1, description="components per class (mog)")
    mixture_likelihood: Likelihood = Field(
        "official", description="E-step: official (gmm-torch, variance read as sigma) or exact"
    )
    first_em_iters: int = Field(200, ge=0, description="EM iterations, first level")
    second_em_iters: int = Field(500, ge=0, description="EM iterations, second level")
    replay_samples: int = Field(256, ge=1, description="replayed features per class and epoch")
    replay_batch_size: int = Field(128, ge=1, description="batch size of both alignments")
    first_replay_epochs: int = Field(10, ge=0, description="first-level alignment epochs")
    first_replay_lr: float = Field(0.05, ge=0, description="first-level alignment lr (SGD)")
    second_replay_epochs: int = Field(10, ge=0, description="head alignment epochs (+ 5 t)")
    second_replay_epochs_per_task: int = Field(5, ge=0, description="extra epochs per task index")
    second_replay_lr: float = Field(0.001, ge=0, description="head alignment lr (SGD)")


@methods.register("star_prompt")
class StarPrompt(PromptMethod):
    """Two-level prompting: CLIP class keys pick per-class residual prompts of a frozen ViT."""

    Config = StarPromptConfig
    config: StarPromptConfig
    auxiliary_backbones = ("clip_backbone",)
    modalities = frozenset({"image"})

    def __init__(
        self,
        config: StarPromptConfig,
        backbone: Backbone,
        class_names: list[str],
        auxiliary: Mapping[str, Backbone],
    ):
        super().__init__(config, backbone, class_names, auxiliary)
        clip = self.clip
        if not clip.supports_text:
            raise ConfigError(
                f"method.clip_backbone must be a CLIP (with a text tower), not "
                f"{config.clip_backbone.name!r}"
            )
        kind = config.prompt_mode
        if kind not in backbone.prompt_kinds:
            raise ConfigError(
                f"star_prompt's {kind!r} prompts are not supported by {type(backbone).__name__}"
            )
        layers = list(range(backbone.depth)) if config.layers is None else config.layers
        C = self.num_classes
        init_linear(self.head)  # mammoth's ViT init, re-applied to the new head
        self.context = ClassContext(clip, class_names)
        self.prompts = SemanticResidualPrompts(
            layers, C, backbone.embed_dim, clip.feature_dim, kind, config.prefix_length
        )
        stats = dict(mode="mixture", n_centroids=config.mixture_components)
        if config.replay_model == "gaussian":
            stats = dict(mode="variance")
        like = config.mixture_likelihood
        self.first_stats = ClassStats(
            C, clip.feature_dim, **stats, em_iters=config.first_em_iters, likelihood=like
        )
        self.second_stats = ClassStats(
            C, backbone.feature_dim, **stats, em_iters=config.second_em_iters, likelihood=like
        )
        self.register_buffer("head_backup", torch.zeros(C, backbone.feature_dim + 1))
        self.register_buffer("replay_rng", torch.Generator().get_state())
        # Without confidence modulation the modulation vectors get no gradient.
        self.ddp_find_unused = not config.confidence_modulation

    @property
    def clip(self) -> Backbone:
        return self.auxiliary["clip_backbone"]

    # -- the forward --------------------------------------------------------------------------
    @torch.no_grad()
    def query(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """q(x): CLIP's image embedding, (B, F)."""
        if self.query_cache is not None and index is not None and self.training:
            return self.query_cache(x, index, self.clip.encode)
        return self.frozen(x, self.clip.encode, "clip")

    def features(self, x: Tensor, query: Tensor, past: int) -> Tensor:
        """The ViT's CLS feature with the retrieved prompts (classes < past detached): (B, D)."""
        assert self.task is not None, "begin_task was not called"
        prompts = self.prompts.prompts(
            query, self.task.end, past, self.config.confidence_modulation
        )
        return self.backbone.encode(x, prompts)

    def predict(self, x: Tensor) -> Tensor:
        assert self.task is not None, "begin_task was not called"
        return self.head(self.features(x, self.query(x), self.task.end))  # (B, C)

    def logit_scale(self) -> Tensor:
        return self.clip.model.logit_scale.exp()  # type: ignore[attr-defined]

    # -- the phases ---------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.index > 0 and self.config.second_stage_replay:
            # train on from the head as it was before the last alignment
            self.head.weight.data.copy_(self.head_backup[:, :-1])
            self.head.bias.data.copy_(self.head_backup[:, -1])

    def phases(self, task: Task) -> list[Phase]:
        cfg = self.config
        first_epochs = cfg.epochs if cfg.first_stage_epochs is None else cfg.first_stage_epochs
        first_optim = Optim(
            cfg.first_stage_optimizer,
            cfg.first_stage_lr,
            momentum=cfg.first_stage_momentum,
            weight_decay=cfg.first_stage_weight_decay,
            grad_clip=None,
        )
        context = lambda: [{"params": [self.context.context]}]  # noqa: E731
        phases = [
            Phase(
                "first-stage",
                first_epochs,
                context,
                self.first_stage_step,
                first_optim,
                data="plain",
                batch_size=cfg.batch_size,
                finish=self.fit_first_level,
            ),
            Phase(
                "first-replay",
                cfg.first_replay_epochs if cfg.first_stage_replay else 0,
                context,
                self.first_replay_step,
                Optim("sgd", cfg.first_replay_lr, momentum=0.0),
                data="method",
                batches=lambda epoch: self.replay(self.first_stats),
                finish=self.update_keys,
            ),
            replace(super().phases(task)[0], finish=self.fit_second_level),  # "train"
        ]
        if task.index > 0 and cfg.second_stage_replay:
            epochs = cfg.second_replay_epochs + cfg.second_replay_epochs_per_task * task.index
            phases.append(
                Phase(
                    "second-replay",
                    epochs,
                    lambda: [{"params": list(self.head.parameters())}],
                    self.second_replay_step,
                    Optim("sgd", cfg.second_replay_lr, momentum=0.0),
                    data="method",
                    batches=lambda epoch: self.replay(self.second_stats),
                )
            )
        return phases

    def first_stage_step(self, batch: Batch) -> dict[str, Tensor]:
        """L_1 on the task's images: only the current classes compete (past logits masked)."""
        assert self.task is not None, "begin_task was not called"
        start, end = self.task.start, self.task.end
        keys = self.context.keys(self.clip, start, end)  # (n, F)
        query = F.normalize(self.query(batch.x, batch.index), dim=-1)  # (B, F)
        ce = F.cross_entropy(self.logit_scale() * query @ keys.T, batch.y - start)
        ortho = self.context.orthogonality(start, end)
        loss = ce + self.config.lambda_first * ortho
        return {"loss": loss, "ce": ce.detach(), "ortho": ortho.detach()}

    def fit_first_level(self, loader: DataLoader) -> None:
        """After the first stage: the new classes' mixtures of q(x)."""
        g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))  # from the run's RNG
        if self.config.first_stage_replay:
            queries, labels = gather_features(loader, self.query, self.head.weight.device)
            self.first_stats.fit(queries, labels, g)
        self.replay_rng.copy_(g.get_state())

    def replay(self, stats: ClassStats) -> Iterator[Batch]:
        """One alignment epoch: ``replay_samples`` features per seen class, shuffled, batched."""
        assert self.task is not None, "begin_task was not called"
        with stored_generator(self.replay_rng) as g:
            x, y = stats.sample(range(self.task.end), self.config.replay_samples, g)
            order = torch.randperm(len(y), generator=g).to(y.device)
        for rows in order.split(self.config.replay_batch_size):
            yield Batch(x[rows], y[rows], rows)

    def first_replay_step(self, batch: Batch) -> dict[str, Tensor]:
        """CE of replayed CLIP features against every seen key; past keys fixed."""
        assert self.task is not None, "begin_task was not called"
        start, end = self.task.start, self.task.end
        keys = torch.cat([self.prompts.keys[:start], self.context.keys(self.clip, start, end)])
        logits = self.logit_scale() * F.normalize(batch.x, dim=-1) @ keys.T  # (B, seen)
        return {"loss": F.cross_entropy(logits, batch.y)}

    def update_keys(self, loader: DataLoader) -> None:
        """The new classes' keys, final for good (official ``update_keys``)."""
        assert self.task is not None, "begin_task was not called"
        start, end = self.task.start, self.task.end
        self.prompts.set_keys(start, self.context.keys(self.clip, start, end))

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.prompts]  # the second level's p and a; the first level's context trains

    def param_groups(self) -> list[dict[str, Any]]:
        """Second stage: the residual prompts, the modulation vectors and the head."""
        groups = [{"params": [p for p in self.prompts.parameters() if p.requires_grad]}]
        head: dict[str, Any] = {"params": list(self.head.parameters())}
        if self.config.head_lr is not None:
            head["lr"] = self.config.head_lr
        return [g for g in (*groups, head) if g["params"]]

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """L_2 on the task's (augmented) images."""
        assert self.task is not None, "begin_task was not called"
        start, end = self.task.start, self.task.end
        features = self.features(batch.x, self.query(batch.x, batch.index), start)
        ce = F.cross_entropy(self.mask_for_training(self.head(features)), batch.y)
        ortho = self.prompts.orthogonality(end, start)
        loss = ce + self.config.lambda_second * ortho
        return {"loss": loss, "ce": ce.detach(), "ortho": ortho.detach()}

    def fit_second_level(self, loader: DataLoader) -> None:
        """After the second stage: the new classes' mixtures of prompted CLS features, and the
        head's backup (official ``update_statistics`` and ``backup``)."""
        assert self.task is not None, "begin_task was not called"
        if not self.config.second_stage_replay:
            return
        past = self.task.start
        features, labels = gather_features(
            loader, lambda x: self.features(x, self.query(x), past), self.head.weight.device
        )
        with stored_generator(self.replay_rng) as g:
            self.second_stats.fit(features, labels, g)
        self.head_backup.copy_(torch.cat([self.head.weight, self.head.bias[:, None]], dim=1))

    def second_replay_step(self, batch: Batch) -> dict[str, Tensor]:
        """CE on normalised logits z / (0.1 ||z||) of the seen classes."""
        assert self.task is not None, "begin_task was not called"
        logits = self.head(batch.x)[:, : self.task.end]  # (B, seen)
        logits = logits / (LOGIT_NORM * (logits.norm(dim=-1, keepdim=True) + 1e-7))
        return {"loss": F.cross_entropy(logits, batch.y)}
