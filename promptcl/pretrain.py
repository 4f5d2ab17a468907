"""Pretraining of the small backbones shipped with promptcl, on the synthetic world's pretraining split.

The pretraining classes of SynthShapes are disjoint from the continual ones (as ImageNet is to
CIFAR-100 for the papers' ViTs), so continual-learning runs on ``synth-shapes-10`` meet new classes
made of familiar attributes.

- ``tiny-synth-vit``: supervised classification of the 156 pretraining classes (a linear head on
  the class token, cross-entropy with label smoothing 0.1), AdamW with warm-up and cosine decay.
- ``tiny-synth-clip``: image-text contrastive training on the class captions ("a photo of a red
  striped triangle."). Each image is scored against the captions of *all* pretraining classes, which makes
  the loss the InfoNCE of CLIP with every caption as a negative; CLIP's in-batch form would count
  two images of one class as negatives of each other.

``promptcl pretrain vit`` / ``promptcl pretrain clip`` reproduce the shipped weights; see the
model card beside them (promptcl/backbones/weights/README.md) for times and scores.
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
from promptcl.data.synthetic import ALL_MOTION_CLASSES, ALL_SHAPE_CLASSES, SynthShapes
from promptcl.engine.progress import Console
from promptcl.engine.seeding import seed_everything

Kind = Literal["vit", "clip"]
PRESET = {"vit": "tiny-synth-vit", "clip": "tiny-synth-clip"}


def pretrain(
    kind: Kind,
    out: Path,
    epochs: int = 10,
    per_class: int = 200,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    console: Console | None = None,
) -> dict[str, float]:
    """Train a preset's architecture from scratch and save its weights to ``out`` (safetensors).

    Returns the top-1 accuracy (%) on the pretraining classes' test images and the time taken.
    """
    console = console or Console()
    seed_everything(seed)
    model = build_backbone(BackboneConfig(name=PRESET[kind], pretrained=False))
    model.frozen = False
    model.requires_grad_(True)
    tf = Preprocessing(model.image_size, augment=True, crop_scale=(0.5, 1.0)).transforms("image")
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
    optimizer = torch.optim.AdamW(classify.parameters(), lr=lr, weight_decay=weight_decay)
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
        began_epoch = time.perf_counter()
        accuracy = evaluate(classify, test)
        console.rich.print(
            f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy:.1f}% "
            f"({time.perf_counter() - began_epoch:.0f}s to evaluate)"
        )
    seconds = time.perf_counter() - began
    out.parent.mkdir(parents=True, exist_ok=True)
    # Stored in half precision to keep the package small; loading casts back to float32.
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in model.model.state_dict().items()
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
        },
    )
    return {"test_accuracy": accuracy, "seconds": seconds}


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
def evaluate(classify: torch.nn.Module, dataset) -> float:
    classify.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=512):
        correct += int((classify(x).argmax(1) == y).sum())
    return 100.0 * correct / len(dataset)
