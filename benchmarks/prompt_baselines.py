"""The prompt baselines against the bounds on synth-shapes-10 with tiny-synth-vit (2 CPU cores).

Each prompt method (and joint, the upper bound) runs with its `configs/<method>_synth-shapes-10.yaml`;
the other bounds with the settings below. Prints a table of FAA, CAA, FM (and CODA's F_N) and the wall time of each run.

    python benchmarks/prompt_baselines.py [--methods l2p coda_prompt ...] [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import promptcl
from promptcl.config import build_config, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BOUNDS = {
    "finetune": {"name": "finetune", "epochs": 3, "batch_size": 64, "lr": 1e-4},
    "linear_probe": {"name": "linear_probe", "epochs": 3, "batch_size": 64},
    "simplecil": {"name": "simplecil"},
}
CONFIGURED = ["l2p", "dualprompt", "coda_prompt", "hide_prompt", "hash", "joint"]


def config_for(name: str, out: Path, epochs: int | None, seed: int):
    overrides = [f"output.dir={out}", "output.overwrite=true", f"seed={seed}"]
    if name in BOUNDS:
        return build_config(
            {
                "seed": seed,
                "data": {"name": "synth-shapes-10"},
                "backbone": {"name": "tiny-synth-vit"},
                "method": BOUNDS[name],
                "output": {"dir": str(out), "overwrite": True},
            }
        )
    if epochs is not None:
        overrides.append(f"method.epochs={epochs}")
    return load_config(CONFIGS / f"{name}_synth-shapes-10.yaml", overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=[*BOUNDS, *CONFIGURED])
    parser.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rows = {}
    for name in args.methods:
        began = time.perf_counter()
        result = promptcl.run(config_for(name, tmp / name, args.epochs, args.seed), quiet=True)
        rows[name] = {k: round(result.metrics[k], 2) for k in ("faa", "caa", "fm", "coda_fn")}
        rows[name]["seconds"] = round(time.perf_counter() - began, 1)
        print(name, json.dumps(rows[name]), flush=True)
    print("\n| method | FAA | CAA | FM | CODA F_N | seconds |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['faa']} | {r['caa']} | {r['fm']} | {r['coda_fn']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
