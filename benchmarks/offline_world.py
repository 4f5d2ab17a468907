"""Is the offline world a fair stand-in for CIFAR-100 on an ImageNet ViT? Measures, on 2 CPU cores:

1. SimpleCIL FAA on synth-shapes-10 with tiny-synth-vit, and with the same architecture at random
   weights (pretraining should help: at least 3x);
2. the joint-training upper bound (the pretrained ViT fine-tuned on all 100 classes at once, with
   configs/joint_synth-shapes-10.yaml), which SimpleCIL should trail by at least 5 points (room for
   adaptation), against a linear probe of the frozen features on all 100 classes (the room that
   adapting the features, by prompts or fine-tuning, has beyond a trained head); and the same two
   on the tests' reduced stream (tests/synth_stream.py: 30 classes, 20 images each);
3. zero-shot tiny-synth-clip on the continual classes' captions, against chance (1%);
4. on synth-motion-5, a linear classifier on mean-pooled frame features against one on the frame
   sequence (concatenated features): motion classes need the order of the frames; and one on the
   frozen frame grid (2 x 2 frames in one image, CoSTEP's): its class token against all its
   tokens, i.e. whether the frozen ViT's pooled feature keeps the order that the grid shows.

    python benchmarks/offline_world.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import promptcl
from promptcl.build import build_backbone
from promptcl.config import BackboneConfig, DataConfig, load_config
from promptcl.data.base import Preprocessing
from promptcl.registry import datasets

JOINT = Path(__file__).resolve().parent.parent / "configs" / "joint_synth-shapes-10.yaml"


def run(method: dict, backbone: dict, data: dict, out: str) -> float:
    config = {
        "data": {"name": "synth-shapes-10", **data},
        "backbone": backbone,
        "method": method,
        "output": {"dir": out, "overwrite": True},
    }
    return promptcl.run(config, quiet=True).metrics["faa"]


def joint_probe(out: str, classes: int, per_class: int | None, finetune: bool) -> float:
    """All ``classes`` classes learned at once: a linear probe of the frozen tiny-synth-vit, or
    the whole ViT fine-tuned (the better of the recipes tried: backbone lr 3e-4)."""
    method = (
        {"name": "finetune", "epochs": 6, "batch_size": 32, "lr": 3e-4}
        if finetune
        else {"name": "linear_probe", "epochs": 10, "batch_size": 32, "lr": 3e-3}
    )
    data = {"task_sizes": [classes], "subsample": per_class, "augment": False}
    return run(method, {"name": "tiny-synth-vit"}, data, out)


def joint(out: str, epochs: int | None) -> float:
    """FAA of configs/joint_synth-shapes-10.yaml, optionally with fewer epochs."""
    overrides = [f"output.dir={out}", "output.overwrite=true"]
    overrides += [f"method.epochs={epochs}"] if epochs else []
    return promptcl.run(load_config(JOINT, overrides), quiet=True).metrics["faa"]


@torch.no_grad()
def frame_features(name: str) -> tuple[torch.Tensor, ...]:
    """(N, T, F) per-frame tiny-synth-vit features of synth-motion-5's train and test clips."""
    vit = build_backbone(BackboneConfig(name="tiny-synth-vit"))
    plain = Preprocessing(vit.image_size, augment=False)
    pair = datasets.get(name)(DataConfig(name=name), plain, 0)
    out = []
    for split in (pair.train, pair.test):
        clips = torch.stack([split[i][0] for i in range(len(split))])  # (N, T, 3, H, W)
        feats = vit.encode(clips.flatten(0, 1)).view(*clips.shape[:2], -1)
        out += [feats, torch.tensor(split.targets)]
    return tuple(out)


@torch.no_grad()
def grid_features(name: str) -> tuple[torch.Tensor, ...]:
    """The frozen frame grid of each clip (tiny-synth-vit, frame-grid with no full frames): its
    class token (N, F) and all its final tokens (N, L * D), for train and test."""
    grid = build_backbone(
        BackboneConfig(name="tiny-synth-vit", frame_encoder="frame-grid", spatial_frames=0)
    )
    plain = Preprocessing(grid.image_size, augment=False)
    pair = datasets.get(name)(DataConfig(name=name), plain, 0)
    out = []
    for split in (pair.train, pair.test):
        clips = torch.stack([split[i][0] for i in range(len(split))])  # (N, T, 3, H, W)
        tokens = grid(clips)  # (N, L, D)
        out += [grid.pool(tokens), tokens.flatten(1), torch.tensor(split.targets)]
    return tuple(out)


def linear_probe(train_x, train_y, test_x, test_y, epochs: int = 300) -> float:
    torch.manual_seed(0)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    head = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head((train_x - mean) / std), train_y).backward()
        opt.step()
    return 100.0 * float((head((test_x - mean) / std).argmax(1) == test_y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 joint-training epochs, not 10")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    began = time.perf_counter()
    results = {
        "simplecil_pretrained": run(
            {"name": "simplecil"}, {"name": "tiny-synth-vit"}, {}, f"{tmp}/a"
        ),
        "simplecil_random": run(
            {"name": "simplecil"}, {"name": "tiny-synth-vit", "pretrained": False}, {}, f"{tmp}/b"
        ),
        "joint_upper_bound": joint(f"{tmp}/c", 3 if args.quick else None),
        "linear_probe_all_classes": joint_probe(f"{tmp}/e", 100, None, finetune=False),
        "test_stream_linear_probe": joint_probe(f"{tmp}/f", 30, 20, finetune=False),
        "test_stream_finetune": joint_probe(f"{tmp}/g", 30, 20, finetune=True),
        "clip_zeroshot": run(
            {"name": "clip_zeroshot"}, {"name": "tiny-synth-clip"}, {}, f"{tmp}/d"
        ),
        "chance": 1.0,
    }
    train_x, train_y, test_x, test_y = frame_features("synth-motion-5")
    results["motion_mean_pooled"] = linear_probe(train_x.mean(1), train_y, test_x.mean(1), test_y)
    results["motion_frame_order"] = linear_probe(
        train_x.flatten(1), train_y, test_x.flatten(1), test_y
    )
    cls_train, tok_train, train_y, cls_test, tok_test, test_y = grid_features("synth-motion-5")
    results["motion_grid_class_token"] = linear_probe(cls_train, train_y, cls_test, test_y)
    results["motion_grid_all_tokens"] = linear_probe(tok_train, train_y, tok_test, test_y)
    results["motion_chance"] = 100.0 / (int(train_y.max()) + 1)
    results["seconds"] = round(time.perf_counter() - began, 1)
    ratio = results["simplecil_pretrained"] / max(results["simplecil_random"], 1e-9)
    print(json.dumps(results, indent=2))
    print(
        f"pretrained / random SimpleCIL FAA: {ratio:.1f}x (want >= 3); "
        f"joint - SimpleCIL: {results['joint_upper_bound'] - results['simplecil_pretrained']:.1f} "
        f"points (want >= 5); zero-shot CLIP / chance: {results['clip_zeroshot'] / 1.0:.1f}x (want >= 5)"
    )


if __name__ == "__main__":
    main()
