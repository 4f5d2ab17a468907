"""Pretraining of the small backbones shipped with promptcl, on the synthetic world's pretraining split.

The pretraining classes of SynthShapes (and SynthMotion) are disjoint from the continual ones (as
ImageNet is to CIFAR-100 for the papers' ViTs), so continual-learning runs on ``synth-shapes-10``
(``synth-motion-5``) meet new classes made of familiar attributes.

- ``tiny-synth-vit``: supervised classification of the 156 pretraining classes (a linear head on
  the class token, cross-entropy with label smoothing 0.1), AdamW with warm-up and cosine decay.
- ``tiny-synth-clip``: image-text contrastive training on the class captions ("a photo of a red
  striped triangle."). Each image is scored against the captions of *all* pretraining classes, which makes
  the loss the InfoNCE of CLIP with every caption as a negative; CLIP's in-batch form would count
  two images of one class as negatives of each other.
- ``tiny-synth-videomamba``: supervised classification of SynthMotion's 216 pretraining classes
  (clips of 8 frames; random-resized crops, no flips, which would swap left and right), as for the
  ViT; no weight decay on biases, norms, A_log, D and the position embeddings (the official
  VideoMamba recipe's exclusions); ``dt_proj`` initialised as in Mamba (``init_dt_like_mamba``)
  rather than VideoMamba's constructor, so that the class token's scan reaches the whole clip
  from the start. The test set is scored after the last epoch only. It also reports how much the
  model relies on motion: the test accuracy with each clip's frames shuffled, reversed, or
  replaced by their mean.

``promptcl pretrain vit`` / ``clip`` / ``videomamba`` reproduce the shipped weights; see the model
card beside them (promptcl/backbones/weights/README.md) for the commands, times and scores.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone
from promptcl.backbones.clip import CAPTION_TEMPLATE
from promptcl.backbones.packed import pack
from promptcl.build import build_backbone
from promptcl.config import BackboneConfig
from promptcl.data.base import Preprocessing
from promptcl.data.synthetic import ALL_MOTION_CLASSES, ALL_SHAPE_CLASSES, SynthMotion, SynthShapes
from promptcl.engine.progress import Console
from promptcl.engine.seeding import seed_everything

Kind = Literal["vit", "clip", "videomamba"]
PRESET = {"vit": "tiny-synth-vit", "clip": "tiny-synth-clip", "videomamba": "tiny-synth-videomamba"}


def pretrain(
    kind: Kind,
    out: Path,
    epochs: int = 10,
    per_class: int = 200,
    batch_size: int | None = None,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    console: Console | None = None,
) -> dict[str, float]:
    """Train a preset's architecture from scratch and save its weights to ``out`` (safetensors).

    Returns the top-1 accuracy (%) on the pretraining classes' test images (clips) and the time
    taken; for videomamba also the accuracies of the motion check (``motion_check``).
    ``batch_size``: 128 for images, 32 for clips by default.
    """
    console = console or Console()
    seed_everything(seed)
    video = kind == "videomamba"
    if video:  # the scans allocate large temporaries: let malloc reuse them (a 2x speed-up here)
        from promptcl.backbones.selective_scan import keep_freed_memory

        keep_freed_memory()
    batch_size = batch_size or (32 if video else 128)
    model = build_backbone(BackboneConfig(name=PRESET[kind], pretrained=False))
    model.frozen = False
    model.requires_grad_(True)
    if video:  # long scan memories from the start (VideoMamba's own init starts them short)
        model.init_dt_like_mamba(generator=torch.Generator().manual_seed(seed))
    pre = Preprocessing(model.image_size, augment=True, crop_scale=(0.5, 1.0))
    if video:
        tf = pre.transforms("video", flips=False)  # a mirrored clip moves the other way
        train = SynthMotion("pretrain", per_class, "train", transform=tf.train)
        test = SynthMotion("pretrain", 10, "test", transform=tf.test)
    else:
        tf = pre.transforms("image")
        train = SynthShapes("pretrain", per_class, "train", transform=tf.train)
        test = SynthShapes("pretrain", 20, "test", transform=tf.test)
    captions = [CAPTION_TEMPLATE.format(name) for name in train.class_names]
    classify = _Classifier(model, len(train.classes), captions if kind == "clip" else None)

    loader = DataLoader(
        train,
        batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.AdamW(
        _decay_groups(classify, weight_decay) if video else classify.parameters(),
        lr=lr,
        weight_decay=weight_decay,
    )
    total, warmup = epochs * len(loader), len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    began = time.perf_counter()
    for epoch in range(epochs):
        classify.train()
        with console.epoch(0, epoch, epochs, len(loader)) as bar:
            for step, (x, y) in enumerate(loader):
                loss = F.cross_entropy(classify(x), y, label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(classify.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                bar.update(
                    loss=float(loss.detach()),
                    lr=schedule.get_last_lr()[0],
                    rate=(step + 1) * batch_size / (time.perf_counter() - began + 1e-9),
                )
        if video and epoch < epochs - 1:  # a test pass costs a tenth of an epoch: at the end
            continue
        began_epoch = time.perf_counter()
        accuracy = evaluate(classify, test)
        console.rich.print(
            f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy:.1f}% "
            f"({time.perf_counter() - began_epoch:.0f}s to evaluate)"
        )
    seconds = time.perf_counter() - began
    scores = {"test_accuracy": accuracy, "seconds": seconds}
    if video:
        scores |= motion_check(classify, test)
        console.rich.print(
            "motion check, test accuracy with each clip's frames "
            + ", ".join(
                f"{k.removeprefix('frames_')} {v:.1f}%"
                for k, v in scores.items()
                if k.startswith("frames_")
            )
            + f" (in order: {accuracy:.1f}%, chance {100 / len(train.classes):.1f}%)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Stored in half precision to keep the package small; loading casts back to float32.
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in getattr(model, "model", model).state_dict().items()  # a VideoMamba is its own
    }
    if kind == "clip":  # and without the vocabulary no synthetic caption uses
        state = pack(state, synth_vocabulary(model))
    save_file(
        state,
        str(out),
        metadata={
            "preset": PRESET[kind],
            "epochs": str(epochs),
            "test_accuracy": f"{accuracy:.2f}",
            "per_class": str(per_class),
            "seconds": f"{seconds:.0f}",
        },
    )
    return scores


def _decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms, A_log, D and the embeddings of positions and the
    class token (VideoMamba's ``no_weight_decay`` and Mamba's ``_no_weight_decay`` marks)."""
    skip = ("A_log", "pos_embed", "cls_token", "temporal_pos_embed")
    decay, keep = [], []
    for name, p in module.named_parameters():
        (keep if p.ndim <= 1 or name.endswith(skip) else decay).append(p)
    return [{"params": decay}, {"params": keep, "weight_decay": 0.0}]


@torch.no_grad()
def motion_check(classify: torch.nn.Module, dataset) -> dict[str, float]:
    """Test accuracy (%) with each clip's frames shuffled (one fixed permutation per clip),
    reversed, or all replaced by the clip's mean frame: what is left without the frame order.

    SynthMotion's four orders of one appearance and axis show the same poses, so a model that
    reads motion falls towards a quarter of its accuracy on shuffled or mean clips, and reversal
    swaps the directions it has learnt.
    """
    g = torch.Generator().manual_seed(0)

    def shuffled(x: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(torch.rand(x.shape[:2], generator=g), dim=1)  # (B, T)
        return x[torch.arange(x.shape[0])[:, None], order]

    views = {
        "frames_shuffled": shuffled,
        "frames_reversed": lambda x: x.flip(1),
        "frames_mean": lambda x: x.mean(1, keepdim=True).expand_as(x),
    }
    return {name: evaluate(classify, dataset, view) for name, view in views.items()}


def synth_vocabulary(model: Backbone) -> torch.Tensor:
    """The token ids of every caption the synthetic worlds can ask for: each class name of
    SynthShapes and SynthMotion, alone, as a caption ("a red heart") and in CAPTION_TEMPLATE."""
    names = [c.name for c in (*ALL_SHAPE_CLASSES, *ALL_MOTION_CLASSES)]
    texts = [t for n in names for t in (n, f"a {n}", CAPTION_TEMPLATE.format(n))]
    return torch.unique(model.tokenize(texts))


class _Classifier(torch.nn.Module):
    """Logits over the pretraining classes: a linear head (ViT) or caption similarities (CLIP)."""

    def __init__(self, backbone: Backbone, num_classes: int, captions: list[str] | None):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.feature_dim, num_classes) if captions is None else None
        if captions is not None:
            self.register_buffer("text", backbone.tokenize(captions), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = self.backbone.encode(x)  # (B, F)
        if self.head is not None:
            return self.head(image)
        text = F.normalize(self.backbone.encode_text(self.text), dim=-1)  # (C, F)
        scale = self.backbone.model.logit_scale.exp().clamp(max=100)
        return scale * F.normalize(image, dim=-1) @ text.T  # (B, C)


@torch.no_grad()
def evaluate(classify: torch.nn.Module, dataset, view=None, batch_size: int = 128) -> float:
    """Top-1 accuracy (%); ``view`` changes each input batch first (the motion check)."""
    classify.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((classify(x if view is None else view(x)).argmax(1) == y).sum())
    return 100.0 * correct / len(dataset)
