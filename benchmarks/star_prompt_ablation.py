"""STAR-Prompt on synth-shapes-10 against its baselines and with its parts switched off.

Runs configs/star_prompt_synth-shapes-10.yaml and, on the same stream and seed, zero-shot
tiny-synth-clip, fine-tuning, L2P (its synth config) and the STAR-Prompt ablations:

- prefix:             per-class prefix tuning instead of the value residual (official ``concat``)
- no-confidence:      r = p_{c*} (no similarity scaling, paper Eq. 5 off)
- no-first-replay:    keys straight from the first stage, without the first-level alignment
- no-second-replay:   no head alignment on replayed ViT features
- gaussian:           one diagonal Gaussian per class instead of the 5-component mixture
- prompts-frozen:     residual prompts and modulation vectors kept at their initialisation
- no-prompts:         no second-level prompts at all (the ViT, its head and the replay)
- no-first-stage:     first-level context vectors never trained (keys of random context)

Prints a Markdown table of FAA, CAA, FM and seconds; ``--workers`` runs share the CPU cores (one
thread each). Run on an otherwise idle machine.

    python benchmarks/star_prompt_ablation.py [--only star prefix ...] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import run_grid

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STAR = CONFIGS / "star_prompt_synth-shapes-10.yaml"
ABLATIONS: dict[str, list[str]] = {
    "star": [],
    "prefix": ["method.prompt_mode=prefix"],
    "no-confidence": ["method.confidence_modulation=false"],
    "no-first-replay": ["method.first_stage_replay=false"],
    "no-second-replay": ["method.second_stage_replay=false"],
    "gaussian": ["method.replay_model=gaussian"],
    "prompts-frozen": ["method.freeze_prompts=true"],
    "no-prompts": ["method.layers=[]"],
    "no-first-stage": ["method.first_stage_epochs=0", "method.first_stage_replay=false"],
}
BASELINES = {
    "clip_zeroshot": ({"name": "clip_zeroshot"}, "tiny-synth-clip"),
    "finetune": ({"name": "finetune", "epochs": 3, "batch_size": 64, "lr": 1e-4}, "tiny-synth-vit"),
}


def make_config(name: str, seed: int, out: str):
    from promptcl.config import build_config, load_config

    common = [f"output.dir={out}", "output.overwrite=true", f"seed={seed}"]
    if name in BASELINES:
        method, backbone = BASELINES[name]
        data = {"name": "synth-shapes-10", "augment": False}
        config = build_config(
            {"seed": seed, "data": data, "backbone": {"name": backbone}, "method": method,
             "output": {"dir": out, "overwrite": True}}
        )  # fmt: skip
    elif name == "l2p":
        config = load_config(CONFIGS / "l2p_synth-shapes-10.yaml", common)
    else:
        config = load_config(STAR, common + ABLATIONS[name])
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [*BASELINES, "l2p", *ABLATIONS]
    parser.add_argument("--only", nargs="+", default=names, choices=names)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run_grid(make_config, args.only, args.workers, args.seed, "synth-shapes-10")


if __name__ == "__main__":
    main()
