"""SSP's cost per training step and per prediction, as a ratio to its VideoMamba's bare
forward + backward (``promptcl bench``'s floor: the frozen backbone with one shared trainable
token at block 0 and a linear head), measured side by side in one process, at three widths:
the shipped ``tiny-synth-videomamba`` with the synthetic config's SSP, and VideoMamba-Ti and -M
(random weights, 224 px, 8 frames: 1,569 tokens a clip) with the paper's SSP (K = 3 slots,
Ca = 384, attention width 256 with 8 heads).

SSP's K slots lengthen every frame (1 + 8 x 199 = 1,593 tokens at 224 px, 1.5 % more; on the
tiny backbone 1 + 8 x (16 + 3) = 153 against 129, 19 % more), and its shared modules run at
every block.

    python benchmarks/ssp_cost.py [--only tiny ti m] [--rounds 3] [--threads 2]

Measured (2026-12-02, one thread, a machine shared with other runs): tiny, batch 32: training
1.33x, prediction 1.60x, training memory 1.24x; Ti, batch 2 (3 rounds for tiny, 2 for Ti):
training 1.20x, prediction 1.19x, memory 1.05x. M at batch 1 takes over 25 minutes here; not
measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from promptcl.config import build_config
from promptcl.engine.bench import bench

ROOT = Path(__file__).resolve().parent.parent
PAPER = {"inner_dim": 384, "attn_dim": 256, "attn_heads": 8}

# name -> (backbone preset, batch size, SSP settings beyond the synthetic config's)
CASES = {
    "tiny": ("tiny-synth-videomamba", 32, {}),
    "ti": ("videomamba-ti", 2, PAPER),
    "m": ("videomamba-m", 1, PAPER),
}


def config(backbone: str, batch: int, ssp: dict) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "ssp_synth-motion-5.yaml").read_text())
    cfg["backbone"] = {"name": backbone, "pretrained": backbone.startswith("tiny-synth")}
    cfg["method"] |= {"batch_size": batch, "classifier": "linear", **ssp}  # the paper's head
    cfg["train"] = {"eval_batch_size": batch}
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="tiny only; Ti and M time 1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"\nSSP against its backbone's bare forward + backward, {args.threads} threads, "
          f"{args.rounds} rounds of {args.steps} steps\n")  # fmt: skip
    print(
        "| backbone | batch | floor train clips/s | SSP train clips/s | train ratio "
        "| eval ratio | train memory ratio |\n|---|---|---|---|---|---|---|"
    )
    results = {}
    for name in args.only:
        backbone, batch, ssp = CASES[name]
        steps = args.steps if name == "tiny" else 1
        r = bench(build_config(config(backbone, batch, ssp)), steps, 1, args.rounds, 1)
        results[name] = r
        floor, method = r["results"]["floor"], r["results"]["method"]
        memory = (
            f"{method['train_peak_mb'] / floor['train_peak_mb']:.2f}"
            if floor["train_peak_mb"]
            else "-"
        )
        print(
            f"| {backbone} | {batch} | {floor['train_samples_per_s']:.2f} "
            f"| {method['train_samples_per_s']:.2f} | {r['train_ratio']:.2f}x "
            f"| {r['eval_ratio']:.2f}x | {memory} |",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
