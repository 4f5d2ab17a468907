"""CoSTEP's inference cost per video, as a ratio to one prompt-free forward of the same backbone
(the floor), for 1, 5 and 50 sampling steps, measured side by side in one process.

A CoSTEP prediction is one prompt-free forward (the condition Ê), ``sample_steps`` calls of the
U-Net denoiser and one prompted forward; the denoiser is small next to the backbone, so the ratio
should stay near 2 until the steps add up. Random weights (nothing is downloaded): speed does not
depend on them.

    python benchmarks/costep_cost.py [--backbone tiny-synth-vit] [--batch 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from promptcl.build import build_backbone
from promptcl.config import BackboneConfig
from promptcl.methods.base import Task
from promptcl.methods.costep import CoSTEP, CoSTEPConfig


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="tiny-synth-vit")
    parser.add_argument("--encoder", default="frame-grid")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = BackboneConfig(name=args.backbone, pretrained=False, frame_encoder=args.encoder)
    backbone = build_backbone(cfg)
    size = backbone.image_size
    clips = torch.rand(args.batch, args.frames, 3, size, size)
    floor = seconds(lambda: backbone.encode(clips), args.repeats)
    print(f"\nCoSTEP inference on {args.backbone} ({args.encoder}, {args.frames} frames, batch "
          f"{args.batch}, U-Net width {args.width}), {args.threads} threads\n")  # fmt: skip
    print("| sampling steps | s / video | ratio to one prompt-free forward |\n|---|---|---|")
    print(f"| floor (prompt-free forward) | {floor / args.batch:.4f} | 1.00 |")
    for steps in (1, 5, 50):
        config = CoSTEPConfig(width=args.width, sample_steps=steps)
        method = CoSTEP(config, backbone, [f"c{i}" for i in range(10)]).eval()
        method.begin_task(Task(0, 0, 10, 1))
        t = seconds(lambda m=method: m.predict(clips), args.repeats)
        print(f"| {steps} | {t / args.batch:.4f} | {t / floor:.2f} |")


if __name__ == "__main__":
    main()
