"""SSP: State Space Prompting via Gathering and Spreading Spatio-Temporal Information.

Zhou, Zhu, Cui, Liu, Zou, Hua. NeurIPS 2025 (arXiv 2510.12160). Official code:
zhoujiahuan1991/NeurIPS2025-SSP (``models/Ours.py``, ``models/videomamba.py``, ``main_video.py``,
``sh/*.sh``); it has no licence, so this is written from the description in
../shared/specs/video-methods.md §2, nothing is copied. A frozen VideoMamba
(``backbones.videomamba``) is prompted at every block by modules shared across the blocks; the
paper's setting is single-task parameter-efficient video classification.

Per block l, on the block's hidden states h (the VideoMamba hook: the embedded clip at l = 0,
block l-1's mixer output after, which the block adds to its residual stream), with the clip's
tokens split per frame, X (B, T, N + K, D) = N patches and K prompt slots per frame:

    IFG (Intra-Frame Gathering, ``inner``): u = W1 x (Ca = 384 channels), a depthwise 1x1x1
         Conv3d, then F = W2 u (B, T, N, D) is added to the patch tokens; a second depthwise
         Conv3d with a (1, h, w) kernel over the *detached* u gathers each frame into one vector,
         G = W3 pool(u) (B, T, D).
    IFS (Inter-Frame Spreading, l > 0): s = X[:, :, N-1], each frame's last patch token (the scan
         has summarised the frame there); frame weights w = softmax_T(mean_N(1 - e / max e)) with
         e the entropy of softmax_D(F) per token (no gradient; the max over the whole tensor);
         s' = s (1 + gamma_l w); slot k of every frame becomes A_k(s') * G, where A_k is
         Linear(D, 256) -> 8-head attention across the T frames -> Linear(256, D) -> x scale_k.
    X[:, :, :N] += F; at l = 0 the K slots are appended as zeros (and stay zero there).

Trained: the SSP modules (one ``inner``, K attentions, a scalar gamma_l per block l > 0), the
head on the class token and the final norm's weight: here a per-channel scale of the pooled
feature, which equals training ``norm_f.weight`` (RMSNorm has no bias) while the backbone stays
frozen and out of checkpoints. 2.41 M parameters plus the head on VideoMamba-M (§2.3).

At initialisation the zero-initialised convolutions give F = 0 and G = 0, so the slots are zero
and the patch tokens unchanged; but the K zero slots are still tokens of the scan (a Mamba's
causal convolution has a bias and its state decays over them), so the backbone's output with
SSP's slots differs from its output without them. SSP adds nothing else at initialisation.

Training recipe (``sh/*.sh``, ``main_video.py``), as config: AdamW, betas (0.9, 0.999), weight
decay 0.05 except on 1-D parameters; cosine schedule with 5 warm-up epochs from 1e-6 and a floor
of 1e-6; Mixup 0.8 / CutMix 1.0 (every batch, switching with probability 0.5) with label
smoothing 0.1 into soft targets and a soft-target cross-entropy (timm's ``Mixup``,
``SoftTargetCrossEntropy``). The official lr scaling is lr = base_lr x global batch x
num_sample / 256 (``num_sample`` 2: repeated augmentation); the configs give the scaled value.

Departures from the official code:
- The schedule is stepped per epoch (promptcl's schedules are), not per iteration.
- CutMix boxes cover (H, W) of every frame. The official pipeline hands timm's Mixup clips laid
  out (B, C, T, H, W), whose box indexing ``x[:, :, y0:y1, x0:x1]`` then cuts along (T, H).
- Not reproduced: repeated augmentation, RandAugment, random erasing, drop path 0.4 inside the
  frozen blocks (promptcl's frozen backbones stay in eval mode), DeepSpeed bf16, layer decay
  (which gives every trained parameter scale 1 in the official grouping anyway).
- Odd-sized batches (a task's last) are not mixed: timm's Mixup needs an even batch.

Class-incremental use [inferred: SSP has no continual-learning mechanism; specs §2.7, §5].
Training is the same in every task: one linear head over all classes, trained with
``train_mask`` (only the current task's logits; mixed targets over the current task's classes).
``adapt`` says what becomes of the shared SSP modules after the first task: ``every_task`` keeps
training them (they drift towards the newest task), ``first_task`` freezes them after task 0.
``classifier`` says what scores a clip: the trained head (``linear``, the paper's), or the
cosine similarity to each class's mean feature over its task's training clips, taken at the end
of the task (``prototypes``, as SimpleCIL and APER do: Zhou et al., IJCV 2024);
``prototypes+frozen`` puts the frozen backbone's own features (without SSP's slots) before the
prompted ones, APER's concatenation. With ``first_task`` and prototypes nothing trains after task
0 (the head and the feature scale stop too: they would move the features the old prototypes were
taken from): APER's "adapt once, then merge" in SSP's terms. That is the continual recipe of
``configs/ssp_synth-motion-5.yaml``. On ``synth-motion-5`` (``benchmarks/ssp_synth.py``, FAA,
seeds 0-2): first_task + prototypes 44.5 (FM 17.1), its modules frozen at initialisation 38.9, a
linear probe of the frozen backbone 30.6; the trained head forgets (seed 0: every_task 27.9 with
FM 35.2, first_task 32.0; every_task with prototypes 40.9 with FM 40.8, stale prototypes).
SimpleCIL on the backbone without slots reaches 47.9: the K zero slots cost this 16-patch
backbone's features 9 points (K = 1: 4), more than the modules earn back; prototypes+frozen
recovers it and ties SimpleCIL (47.6).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.config import MethodConfig
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Method, Task, class_means, parameters_of
from promptcl.registry import methods


class SSPConfig(MethodConfig):
    name: str = "ssp"
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1.25e-3, ge=0, description="UCF101: base 5e-3 x 8 x 4 GPUs x 2 / 256")
    weight_decay: float = Field(0.05, ge=0, description="AdamW, not on 1-D parameters")
    schedule: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    epochs: int = Field(10, ge=0, description="epochs per task (UCF101, HMDB51: 10)")
    batch_size: int = Field(32, ge=1, description="8 per GPU x 4 GPUs")
    grad_clip: float | None = None
    num_slots: int = Field(3, ge=0, description="K, prompt slots per frame (ours_num)")
    inner_dim: int = Field(384, ge=1, description="Ca, IFG's hidden channels (ours_inner_dim)")
    attn_dim: int = Field(256, ge=1, description="IFS attention width (ours_attn_dim)")
    attn_heads: int = Field(8, ge=1, description="IFS attention heads")
    ifg: bool = Field(True, description="ablation: add IFG's F to the patch tokens")
    ifs: bool = Field(True, description="ablation: write IFS's slots at blocks l > 0")
    mixup: float = Field(0.8, ge=0, description="Mixup alpha (0 = off)")
    cutmix: float = Field(1.0, ge=0, description="CutMix alpha (0 = off)")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="P(CutMix) when both are on")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="folded into the soft targets")
    freeze_prompts: bool = Field(
        False, description="ablation: the SSP modules stay at initialisation (head and scale train)"
    )
    adapt: Literal["every_task", "first_task"] = Field(
        "every_task",
        description="class-incremental [inferred]: train the shared SSP modules on every task, "
        "or only on the first",
    )
    classifier: Literal["linear", "prototypes", "prototypes+frozen"] = Field(
        "linear",
        description="class-incremental [inferred]: the trained head, or the cosine similarity to "
        "each class's mean feature, taken at the end of its task (SimpleCIL, APER)",
    )


class GatherConv(nn.Module):
    """IFG's low-rank adapter F and the per-frame gathered vector G (see the module docstring)."""

    def __init__(self, dim: int, hidden: int, side: int):
        super().__init__()
        self.side = side
        self.down = nn.Linear(dim, hidden)
        self.local = nn.Conv3d(hidden, hidden, kernel_size=1, groups=hidden)
        self.up = nn.Linear(hidden, dim)
        self.frame = nn.Conv3d(hidden, hidden, kernel_size=(1, side, side), groups=hidden)
        self.gathered = nn.Linear(hidden, dim)
        for zeroed in (self.local.weight, self.local.bias, self.frame.weight, self.frame.bias):
            nn.init.zeros_(zeroed)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)
        nn.init.xavier_normal_(self.gathered.weight)
        nn.init.zeros_(self.gathered.bias)

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, N, D) patch tokens -> F (B, T, N, D), G (B, T, D)."""
        B, T, N, _ = patches.shape
        u = self.down(patches)  # (B, T, N, Ca)
        grid = u.permute(0, 3, 1, 2).unflatten(3, (self.side, self.side))  # (B, Ca, T, h, w)
        u = self.local(grid)
        frames = self.frame(u.detach()).flatten(2)  # (B, Ca, T): each frame gathered to 1 x 1
        local = u.flatten(3).permute(0, 2, 3, 1)  # (B, T, N, Ca)
        return self.up(local), self.gathered(frames.transpose(1, 2))


class FrameAttention(nn.Module):
    """IFS's attention across frames for one slot: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, width: int, heads: int):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.up = nn.Linear(width, dim)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, s: Tensor) -> Tensor:
        q = self.down(s)
        return self.up(self.attn(q, q, q, need_weights=False)[0]) * self.scale


def frame_weights(f: Tensor) -> Tensor:
    """(B, T, N, D) intra-frame prompts -> (B, T) frame weights: the softmax over frames of the
    mean token importance 1 - e / max(e), e the entropy of softmax_D(f) (max over the batch)."""
    p = f.softmax(dim=-1)
    entropy = -(p * torch.log(p + 1e-10)).sum(dim=-1)  # (B, T, N)
    importance = 1 - entropy / entropy.max()
    return importance.mean(dim=-1).softmax(dim=-1)


@methods.register("ssp")
class SSP(Method):
    """Gathering within frames and spreading across them, at every block of a frozen VideoMamba."""

    Config = SSPConfig
    config: SSPConfig
    modalities = frozenset({"video"})

    def __init__(self, config: SSPConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        if "hook" not in backbone.prompt_kinds or not hasattr(backbone, "split_frames"):
            raise ConfigError(
                f"SSP prompts a VideoMamba (its per-block hook and frame layout); backbone "
                f"{type(backbone).__name__} is not one: choose a videomamba-* preset"
            )
        side = math.isqrt(backbone.patches_per_frame)
        D = backbone.embed_dim
        self.inner = GatherConv(D, config.inner_dim, side)
        self.spread = nn.ModuleList(
            FrameAttention(D, config.attn_dim, config.attn_heads) for _ in range(config.num_slots)
        )
        self.gammas = nn.Parameter(torch.zeros(max(backbone.depth - 1, 0)))
        self.feature_scale = nn.Parameter(torch.ones(backbone.feature_dim))  # norm_f's weight
        self.head = nn.Linear(backbone.feature_dim, self.num_classes)
        if config.classifier != "linear":
            width = backbone.feature_dim * (2 if config.classifier == "prototypes+frozen" else 1)
            self.register_buffer("prototypes", torch.zeros(self.num_classes, width))
        mixing = config.mixup > 0 or config.cutmix > 0
        self.mix = (
            Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                switch_prob=config.mix_switch_prob,
                label_smoothing=config.label_smoothing,
            )
            if mixing
            else None
        )

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.inner, self.spread, self.gammas]

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if self.config.adapt == "first_task":
            # With prototypes, the head and feature scale stop too: they would move old features.
            stop = [self.inner, self.spread, self.gammas]
            if self.config.classifier != "linear":
                stop += [self.head, self.feature_scale]
            for p in parameters_of(stop):
                p.requires_grad_(task.index == 0)

    def param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on the matrices only (the official ``get_parameter_groups``)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() > 1]
        plain = [p for p in params if p.dim() <= 1]
        return [
            g for g in ({"params": decay}, {"params": plain, "weight_decay": 0.0}) if g["params"]
        ]

    # -- the forward --------------------------------------------------------------------------
    def hook(self, frames: int):
        """The per-block hook for clips of ``frames`` frames (see the module docstring)."""
        N, K = self.backbone.patches_per_frame, self.config.num_slots

        def ssp(layer: int, h: Tensor) -> Tensor:
            head, x = self.backbone.split_frames(h, frames)  # (B, 1, D), (B, T, M, D)
            if layer == 0:
                x = torch.cat([x, x.new_zeros(*x.shape[:2], K, x.shape[3])], dim=2)
            patches, slots = x[:, :, :N], x[:, :, N:]
            f, g = self.inner(patches)
            if layer > 0 and self.config.ifs and K:
                with torch.no_grad():
                    w = frame_weights(f)  # (B, T)
                s = patches[:, :, N - 1] * (1 + self.gammas[layer - 1] * w[..., None])
                slots = torch.stack([attend(s) * g for attend in self.spread], dim=2)
            if self.config.ifg:
                patches = patches + f
            return self.backbone.join_frames(head, torch.cat([patches, slots], dim=2))

        return ssp

    def features(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) clips -> (B, F) class-token features of the SSP-prompted backbone."""
        tokens = self.backbone(x, LayerPrompts(hook=self.hook(x.shape[1])))
        return self.backbone.pool(tokens) * self.feature_scale

    def prototype_features(self, x: Tensor) -> Tensor:
        """What the prototypes average: the prompted features, after the frozen backbone's own
        (without SSP's slots) with ``prototypes+frozen`` (APER's concatenation)."""
        features = self.features(x)
        if self.config.classifier == "prototypes+frozen":
            features = torch.cat([self.frozen(x, self.backbone.encode), features], dim=-1)
        return features

    def predict(self, x: Tensor) -> Tensor:
        if self.config.classifier != "linear":
            features = F.normalize(self.prototype_features(x), dim=-1)  # (B, F)
            return features @ F.normalize(self.prototypes, dim=-1).T  # (B, C)
        return self.head(self.features(x))  # (B, C)

    @torch.no_grad()
    def end_task(self, task: Task, loader: DataLoader) -> None:
        """With prototypes: the task's class means of the prompted features (``class_means``)."""
        if self.config.classifier != "linear":
            device = self.head.weight.device
            means, seen = class_means(loader, self.prototype_features, self.num_classes, device)
            self.prototypes[seen] = means[seen].to(self.prototypes.dtype)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Soft-target cross-entropy over the current task's classes, on mixed clips."""
        assert self.task is not None, "begin_task was not called"
        start, end = (
            (self.task.start, self.task.end) if self.config.train_mask else (0, self.task.end)
        )
        x, y = batch.x, batch.y - start
        if self.mix is not None and len(x) % 2 == 0:
            self.mix.num_classes = end - start
            flat = x.flatten(1, 2).clone()  # (B, T C, H, W): a CutMix box spans every frame
            flat, targets = self.mix(flat, y)
            x = flat.view_as(batch.x)
        else:
            targets = F.one_hot(y, end - start).float()
            smoothing = self.config.label_smoothing
            targets = targets * (1 - smoothing) + smoothing / (end - start)
        logits = self.head(self.features(x))[:, start:end]  # the head trains with prototypes too
        loss = SoftTargetCrossEntropy()(logits, targets)
        return {"loss": loss}
