"""Can a ViT read SynthMotion's temporal order from CoSTEP's frame grid at 32 pixels?

The frozen tiny-synth-vit's class token does not keep the grid's layout (offline_world.py: a
linear probe on it is level with mean pooling). This trains the whole ViT (from tiny-synth-vit's
weights) end to end through ``frame-grid`` on SynthMotion's 216 pretraining classes, whose four
temporal orders per appearance only the order tells apart, then probes synth-motion-5's frozen
features: the grid against the mean of the frames. ``--bold`` makes the motion larger (travel
0.5-0.6 of the frame, turns of 180-240 degrees, scale 0.5-1.5) in both splits.

    python benchmarks/motion_grid_pretraining.py [--epochs 10] [--bold] [--scratch]

About 11 minutes for 10 epochs on 2 idle cores.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from offline_world import linear_probe
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl.build import build_backbone
from promptcl.config import BackboneConfig
from promptcl.data.base import Preprocessing
from promptcl.data.synth_sample import MotionStyle
from promptcl.data.synthetic import SynthMotion, synth_motion_pair
from promptcl.engine.seeding import seed_everything

BOLD = MotionStyle(travel=(0.5, 0.6), turn=(180.0, 240.0), grow=(0.5, 1.5))


@torch.no_grad()
def accuracy(encoder, head, data) -> float:
    clips = torch.stack([data[i][0] for i in range(len(data))])
    return 100.0 * float(
        (head(encoder.encode(clips)).argmax(1) == torch.tensor(data.targets)).float().mean()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bold", action="store_true", help="larger motion in both splits")
    parser.add_argument("--scratch", action="store_true", help="random init, not tiny-synth-vit")
    args = parser.parse_args()
    seed_everything(0)
    style = BOLD if args.bold else MotionStyle()
    encoder = build_backbone(
        BackboneConfig(
            name="tiny-synth-vit", pretrained=not args.scratch, frame_encoder="frame-grid"
        )
    )
    encoder.frozen = False
    encoder.requires_grad_(True)
    tf = Preprocessing(encoder.image_size, augment=True, crop_scale=(0.5, 1.0)).transforms(
        "video", flips=False
    )
    train = SynthMotion("pretrain", 60, "train", transform=tf.train, style=style)
    test = SynthMotion("pretrain", 10, "test", transform=tf.test, style=style)
    head = torch.nn.Linear(encoder.feature_dim, len(train.classes))
    params = [*encoder.parameters(), *head.parameters()]
    loader = DataLoader(
        train, 128, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    total, warmup = args.epochs * len(loader), len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    began = time.perf_counter()
    for epoch in range(args.epochs):
        encoder.train()
        for x, y in loader:
            loss = F.cross_entropy(head(encoder.encode(x)), y, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
        encoder.eval()
        print(
            f"epoch {epoch + 1}: {len(train.classes)}-way pretraining test accuracy "
            f"{accuracy(encoder, head, test):.1f}% ({time.perf_counter() - began:.0f} s)",
            flush=True,
        )
    plain = Preprocessing(encoder.image_size, augment=False)
    pair = synth_motion_pair("continual", 40, 20, plain, style=style)
    features = []
    with torch.no_grad():
        for split in (pair.train, pair.test):
            clips = torch.stack([split[i][0] for i in range(len(split))])
            frames = encoder.image.encode(clips.flatten(0, 1)).view(*clips.shape[:2], -1)
            features.append((encoder.encode(clips), frames.mean(1), torch.tensor(split.targets)))
    (grid, mean, y), (grid_test, mean_test, y_test) = features
    print(
        f"synth-motion-5 linear probe, frame grid: {linear_probe(grid, y, grid_test, y_test):.1f}%"
    )
    print(
        f"synth-motion-5 linear probe, frame mean: {linear_probe(mean, y, mean_test, y_test):.1f}%"
    )
    print("chance 2.5%; knowing the appearance and axis but not the order gives at most 25%")


if __name__ == "__main__":
    main()
