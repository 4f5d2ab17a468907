"""TPPT: textual-prototype-guided prompt tuning on CLIP (TPPT-V and TPPT-VT).

Lu, Zhang, Moore, Xue, Yao, van den Hengel, Gong, "Textual Prototype-guided Prompt Tuning for
continual learning" (TMLR; arXiv 2505.20680). Official code: jeff024/tppt, which could not be read
(nor the paper's equations, hyper-parameters or tables): this file follows the seed document
(../shared/seeds/004_*) and the reconstruction of ../shared/specs/image-methods.md §3.2. Every
choice marked [inferred] is such a reconstruction, and each is a config field.

Both CLIP towers stay frozen. The class prototypes (anchors) are CLIP text embeddings of the
class captions, w_c = normalize(E_t("a photo of a {c}.")), and they are the classifier: with
z(x) = normalize(E_v(x; p(x))) the prompted image embedding and s = exp(logit_scale),

    logits_c(x) = s cos(z(x), w_c)                                   (image -> text)

Visual prompts (TPPT-V): an incremental pool of prompt components, composed per instance with
weights given by the frozen query q(x) = E_v(x) (CODA-Prompt's attention-weighted composition,
``prompts.components.ComponentPool``, read as "a weighted combination" [inferred]); each task
adds its components, earlier ones are frozen; the composed prompt is a prefix (L_p / 2 keys and
L_p / 2 values) in the first vision blocks [inferred: layers 0-4, L_p 8, M 100].

Losses per batch of N samples (past classes' logits masked in the CE [inferred], as the
baselines do):

    L_CE   = CE(logits(x_i) over the current classes, y_i)
    L_TPCL = (1/N) sum_i -log [ exp(s cos(w_{y_i}, z_i)) / sum_{i'} exp(s cos(w_{y_i}, z_{i'})) ]

L_TPCL is the seed's textual prototypical contrastive loss (text -> image): each sample's anchor
must find that sample among the batch. The seed writes it (1/C)(1/N) sum_c sum_i with an
indicator 1(y_i = c) inside the log; read as the sum over the positive pairs (i, y_i), it is
(1/C) times the mean above, so the 1/C is left to lambda_tpcl [inferred]. tau = 1 / s, CLIP's
own temperature [inferred].

TPPT-VT (``variant: VT``) also learns deep text prompts: each task has its own prefix (L_t / 2
keys and values) in the first text blocks, used for the captions of that task's classes, trained
with the task and frozen after it, so the anchors of new classes move while old anchors stay
[inferred: per-task prompts, prefix in text blocks 0-1, L_t 4]. The relational diversity
regulariser acts on the seen anchors W (the current ones learnable), in one of the spec's two
readings (``rdr``) [inferred]:

    relational: mean_{c, c'} (cos(w_c, w_c') - cos(w0_c, w0_c'))^2   w0 = the frozen CLIP anchors
    diversity:  mean_{c != c'} relu(cos(w_c, w_c') - margin)^2

    L = L_CE + lambda_tpcl L_TPCL (+ lambda_rdr L_RDR for TPPT-VT)

Prediction: cos(z(x), w_c) over every class (the engine masks unseen ones); no task identity.
Optimiser and schedule (Adam, lr 1e-3, batch 128, CODA's cosine, no clipping) are
[inferred].
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.backbones.clip import CAPTION_TEMPLATE
from promptcl.config import MethodConfig, Schedule
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Method, Task
from promptcl.methods.prompt_base import check_layers
from promptcl.prompts.components import ComponentPool
from promptcl.prompts.prefix import halves
from promptcl.registry import methods


class TpptConfig(MethodConfig):
    """Every value is [inferred] (see the module docstring): the paper's were not readable."""

    name: str = "tppt"
    variant: Literal["V", "VT"] = Field("V", description="V: visual prompts; VT: also text")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimiser")
    lr: float = Field(1e-3, ge=0, description="learning rate of the prompts")
    schedule: Schedule = Field("coda-cosine", description="lr schedule, stepped per epoch")
    epochs: int = Field(20, ge=0, description="epochs per task")
    grad_clip: float | None = Field(None, description="max gradient norm; None = no clipping")
    template: str = Field(CAPTION_TEMPLATE, description="caption of a class; {} is its name")
    layers: list[int] = Field([0, 1, 2, 3, 4], description="vision blocks with prefix prompts")
    num_components: int = Field(100, ge=1, description="M, visual components of the stream")
    prompt_length: int = Field(8, ge=2, description="L_p: L_p/2 prefix keys + L_p/2 values")
    lambda_tpcl: float = Field(1.0, ge=0, description="weight of the text->image contrastive loss")
    text_layers: list[int] = Field([0, 1], description="VT: text blocks with prefix prompts")
    text_prompt_length: int = Field(4, ge=2, description="VT: L_t, prefix keys + values")
    rdr: Literal["relational", "diversity"] = Field(
        "relational", description="VT: reading of the relational diversity regulariser"
    )
    lambda_rdr: float = Field(1.0, ge=0, description="VT: weight of the regulariser")
    rdr_margin: float = Field(0.0, description="VT, diversity reading: allowed cosine")
    freeze_prompts: bool = Field(
        False, description="ablation: visual and text prompts stay at initialisation"
    )


def contrastive_text_to_image(anchors: Tensor, images: Tensor, scale: Tensor | float) -> Tensor:
    """L_TPCL: anchors (N, F) = w_{y_i}, images (N, F) = z_i, both normalised: the mean over i
    of -log softmax_{i'}(scale cos(w_{y_i}, z_{i'}))[i]."""
    logits = scale * anchors @ images.T  # (N, N): row i, the anchor of sample i against the batch
    return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))


def relational_regulariser(anchors: Tensor, reference: Tensor) -> Tensor:
    """mean over pairs of (cos(w_c, w_c') - cos(w0_c, w0_c'))^2; anchors, reference (C, F)."""
    a, r = F.normalize(anchors, dim=-1), F.normalize(reference, dim=-1)
    return (a @ a.T - r @ r.T).pow(2).mean()


def diversity_regulariser(anchors: Tensor, margin: float = 0.0) -> Tensor:
    """mean over c != c' of relu(cos(w_c, w_c') - margin)^2; anchors (C, F)."""
    a = F.normalize(anchors, dim=-1)
    cos = a @ a.T  # (C, C)
    off = ~torch.eye(len(a), dtype=torch.bool, device=a.device)
    return F.relu(cos[off] - margin).pow(2).mean() if off.any() else cos.new_zeros(())


@methods.register("tppt")
class Tppt(Method):
    """CLIP's text embeddings as fixed (V) or task-prompted (VT) prototypes for a prompted
    image tower."""

    Config = TpptConfig
    config: TpptConfig
    needs_text = True
    modalities = frozenset({"image"})

    def __init__(self, config: TpptConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        if not backbone.supports_text:
            raise ConfigError(f"tppt needs a CLIP backbone, not {type(backbone).__name__}")
        check_layers("layers", config.layers, backbone)
        for key in ("prompt_length", "text_prompt_length"):
            if getattr(config, key) % 2:
                raise ConfigError(f"method.{key} must be even (prefix keys + values)")
        self.pool = ComponentPool(
            config.layers,
            config.num_components,
            config.prompt_length,
            backbone.embed_dim,
            backbone.feature_dim,
        )
        captions = [config.template.format(name) for name in class_names]
        self.register_buffer("captions", backbone.tokenize(captions), persistent=False)
        with torch.no_grad():
            zero_shot = F.normalize(backbone.encode_text(self.captions), dim=-1)  # (C, F)
        self.register_buffer("zero_shot", zero_shot, persistent=False)
        # The anchors of the classes seen so far (VT: set at each task's end); V: zero_shot.
        self.register_buffer("anchors", zero_shot.clone())
        self.text_prompts: nn.Parameter | None = None
        if config.variant == "VT":
            width = backbone.text_width  # type: ignore[attr-defined]
            bad = [i for i in config.text_layers if not 0 <= i < backbone.text_depth]  # type: ignore[attr-defined]
            if bad:
                raise ConfigError(f"method.text_layers {bad} are not blocks of the text tower")
            shape = (len(config.text_layers), config.text_prompt_length, width)
            self.text_prompts = nn.Parameter(torch.zeros(0, *shape))  # (T, j, L_t, D_text)
            self._text_shape = shape

    # -- anchors ------------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.pool.begin_task(task.index, task.num_tasks)
        if self.text_prompts is not None and len(self.text_prompts) != task.num_tasks:
            # all tasks' text prompts, allocated once: N(0, 0.02^2) as CoOp's context [inferred]
            init = torch.randn(task.num_tasks, *self._text_shape) * 0.02
            self.text_prompts = nn.Parameter(init.to(self.anchors.device))

    def task_anchors(self, task: Task) -> Tensor:
        """The normalised anchors of ``task``'s classes (TPPT-VT: through its text prompts)."""
        captions = self.captions[task.start : task.end]  # (n, L)
        if self.text_prompts is None:
            return self.zero_shot[task.start : task.end]
        prompt = self.text_prompts[task.index]  # (j, L_t, D_text)
        prefix = {
            layer: halves(prompt[i].expand(len(captions), -1, -1))
            for i, layer in enumerate(self.config.text_layers)
        }
        text = self.backbone.encode_text(captions, LayerPrompts(prefix=prefix))  # type: ignore[attr-defined]
        return F.normalize(text, dim=-1)

    def seen_anchors(self) -> Tensor:
        """(seen, F): the stored anchors of past classes and the current task's, live."""
        assert self.task is not None, "begin_task was not called"
        return torch.cat([self.anchors[: self.task.start], self.task_anchors(self.task)])

    # -- the forward --------------------------------------------------------------------------
    @torch.no_grad()
    def query(self, x: Tensor) -> Tensor:
        return self.frozen(x, self.backbone.encode)  # (B, F): the prompt-free image embedding

    def image_embedding(self, x: Tensor) -> Tensor:
        """z(x): the normalised embedding of the prompted image tower, (B, F)."""
        prefix = {layer: halves(p) for layer, p in self.pool(self.query(x)).items()}
        return F.normalize(self.backbone.encode(x, LayerPrompts(prefix=prefix)), dim=-1)

    def predict(self, x: Tensor) -> Tensor:
        return self.image_embedding(x) @ self.anchors.T  # (B, C) cosines, as zero-shot CLIP

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.pool, *([self.text_prompts] if self.text_prompts is not None else [])]

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.pool.parameters()]
        if self.text_prompts is not None:
            params.append(self.text_prompts)
        return [{"params": params}]

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        cfg = self.config
        scale = self.backbone.model.logit_scale.exp()  # type: ignore[attr-defined]
        z = self.image_embedding(batch.x)  # (B, F)
        anchors = self.seen_anchors()  # (seen, F)
        ce = F.cross_entropy(self.mask_for_training(scale * z @ anchors.T), batch.y)
        losses = {"ce": ce.detach()}
        loss = ce
        if cfg.lambda_tpcl:
            tpcl = contrastive_text_to_image(anchors[batch.y], z, scale)
            loss = loss + cfg.lambda_tpcl * tpcl
            losses["tpcl"] = tpcl.detach()
        if self.text_prompts is not None and cfg.lambda_rdr:
            reference = self.zero_shot[: len(anchors)]
            if cfg.rdr == "relational":
                rdr = relational_regulariser(anchors, reference)
            else:
                rdr = diversity_regulariser(anchors, cfg.rdr_margin)
            loss = loss + cfg.lambda_rdr * rdr
            losses["rdr"] = rdr.detach()
        return {"loss": loss, **losses}

    @torch.no_grad()
    def end_task(self, task: Task, loader) -> None:
        if self.text_prompts is not None:  # the task's anchors are final
            self.anchors[task.start : task.end] = self.task_anchors(task)
