"""TPPT-V and TPPT-VT on synth-shapes-10 against their baselines on the same CLIP, and without
each loss term.

Runs configs/tppt-v_synth-shapes-10.yaml and configs/tppt-vt_synth-shapes-10.yaml and, on the
same stream, seed and tiny-synth-clip: zero-shot CLIP, fine-tuning (the image tower and a linear
head), CODA-Prompt (its synth settings, with as many components as CLIP's 64-wide query allows),
and the ablations:

- V without TPCL:               lambda_tpcl 0 (image -> text cross-entropy only)
- VT without TPCL / without RDR: lambda_tpcl 0 / lambda_rdr 0
- VT diversity:                 the other reading of the regulariser
- prompts frozen:               lr 0 (visual components, keys, attention vectors and text prompts
                                stay at their initialisation)

Prints a Markdown table of FAA, CAA, FM and seconds; ``--workers`` runs share the CPU cores (one
thread each). Run on an otherwise idle machine.

    python benchmarks/tppt_ablation.py [--only tppt-v tppt-vt ...] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import run_grid

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RUNS: dict[str, tuple[str, list[str]]] = {
    "tppt-v": ("tppt-v", []),
    "tppt-v without TPCL": ("tppt-v", ["method.lambda_tpcl=0"]),
    "tppt-v prompts frozen": ("tppt-v", ["method.lr=0"]),
    "tppt-vt": ("tppt-vt", []),
    "tppt-vt without TPCL": ("tppt-vt", ["method.lambda_tpcl=0"]),
    "tppt-vt without RDR": ("tppt-vt", ["method.lambda_rdr=0"]),
    "tppt-vt diversity RDR": ("tppt-vt", ["method.rdr=diversity"]),
    "tppt-vt prompts frozen": ("tppt-vt", ["method.lr=0"]),
}
BASELINES = {
    "clip_zeroshot": {"name": "clip_zeroshot"},
    "finetune": {"name": "finetune", "epochs": 3, "batch_size": 64, "lr": 1e-4},
    "coda_prompt": ["method.num_components=60"],  # its synth config on CLIP: M <= 64
}


def make_config(name: str, seed: int, out: str):
    from promptcl.config import build_config, load_config

    common = [f"output.dir={out}", "output.overwrite=true", f"seed={seed}"]
    if name == "coda_prompt":
        backbone = ["backbone.name=tiny-synth-clip"]
        config = load_config(
            CONFIGS / "coda_prompt_synth-shapes-10.yaml", common + backbone + BASELINES[name]
        )
    elif name in BASELINES:
        config = build_config(
            {"seed": seed, "data": {"name": "synth-shapes-10", "augment": False},
             "backbone": {"name": "tiny-synth-clip"}, "method": BASELINES[name],
             "output": {"dir": out, "overwrite": True}}
        )  # fmt: skip
    else:
        file, overrides = RUNS[name]
        config = load_config(CONFIGS / f"{file}_synth-shapes-10.yaml", common + overrides)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [*BASELINES, *RUNS]
    parser.add_argument("--only", nargs="+", default=names, choices=names)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run_grid(make_config, args.only, args.workers, args.seed, "synth-shapes-10, tiny-synth-clip")


if __name__ == "__main__":
    main()
