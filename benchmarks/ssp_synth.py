"""SSP on the offline SynthMotion world, single-task and class-incremental, with its parts switched
off in turn, against linear probes, SimpleCIL and L2P on the same frozen tiny-synth-videomamba.

synth-motion-5: 40 classes (5 tasks in the continual setting, one task of 40 in the single-task
setting, SSP's paper setting); sibling classes show the same poses in another order, so the
frame order matters. Clips are not augmented; each run trains on all 40 training clips per
class (``--subsample N``: N of them) and tests on all 20. SSP keeps its config's method values
(``configs/ssp_synth-motion-5.yaml``); its first-task + prototypes rows run in the continual
setting only. CODA-Prompt does not apply: its prompts are attention
prefixes, and a VideoMamba has no attention. One run takes up to 15 minutes on one thread.

    python benchmarks/ssp_synth.py [--setting single continual] [--workers 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import yaml
from grid import run_grid

ROOT = Path(__file__).resolve().parent.parent


OFF = {
    "": {},
    ", IFG off": {"ifg": False},
    ", IFS off": {"ifs": False},
    ", prompts frozen": {"freeze_prompts": True},
}


def runs() -> dict[str, dict]:
    """name -> method config. The config's SSP is the continual recipe (first-task adaptation,
    prototypes); its paper's own (the trained head, modules trained on every task) is "ssp"."""
    recipe = yaml.safe_load((ROOT / "configs" / "ssp_synth-motion-5.yaml").read_text())["method"]
    paper = {**recipe, "adapt": "every_task", "classifier": "linear"}
    l2p = yaml.safe_load((ROOT / "configs" / "l2p_synth-shapes-10.yaml").read_text())["method"]
    probe = {"name": "linear_probe", "epochs": recipe["epochs"], "batch_size": 32}
    return {
        **{f"ssp{part}": {**paper, **off} for part, off in OFF.items()},
        "ssp, adapt first_task": {**paper, "adapt": "first_task"},
        **{f"ssp, first_task + prototypes{part}": {**recipe, **off} for part, off in OFF.items()},
        "ssp, first_task + prototypes+frozen": {**recipe, "classifier": "prototypes+frozen"},
        "linear probe": probe,
        "linear probe, lr 0.01": {**probe, "lr": 0.01},
        "l2p": {**l2p, "query_cache": True},
        "simplecil": {"name": "simplecil"},
    }


def config(name: str, seed: int, out: str, setting: str, subsample: int | None) -> dict:
    """The run of ``name`` (a module-level function: worker processes unpickle it)."""
    data = {"name": "synth-motion-5", "augment": False, "subsample": subsample}
    if setting == "single":
        data["num_tasks"] = 1
    return {
        "seed": seed,
        "data": data,
        "backbone": {"name": "tiny-synth-videomamba"},
        "method": runs()[name],
        "output": {"dir": out, "checkpoint": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", nargs="+", default=["single", "continual"])
    parser.add_argument("--subsample", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=None)
    args = parser.parse_args()
    for setting in args.setting:
        names = [
            n for n in (args.only or runs()) if setting == "continual" or "first_task" not in n
        ]

        clips = args.subsample or 40
        title = f"synth-motion-5 {setting}, tiny-synth-videomamba, {clips} training clips a class"
        make = partial(config, setting=setting, subsample=args.subsample)
        run_grid(make, names, args.workers, args.seed, title)


if __name__ == "__main__":
    main()
