"""Video methods on the offline SynthMotion stream: L2P, DualPrompt, CODA-Prompt and CoSTEP through
frame-mean and frame-grid (CoSTEP also frame-max), DualPrompt, fine-tuning and SimpleCIL, and
CoSTEP's ablations (its generators, frozen prompts, no generator replay).

synth-motion-5: 40 classes in 5 tasks; sibling classes show the same poses in another order, so a
mean of frames cannot tell them apart (at most 25 % for a perfect appearance-and-axis classifier).
Backbone: the shipped tiny-synth-vit, frozen. The prompt baselines keep their synth-shapes-10
configs' method values; clips are not augmented, so their frozen queries are cached. Each run
trains on 20 of the 40 training clips per class (``SUBSAMPLE``) and tests on all 20.

    python benchmarks/video_methods.py [--seeds 0] [--workers 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml
from grid import timed_metrics

ROOT = Path(__file__).resolve().parent.parent
SUBSAMPLE = 20  # training clips per class (of 40), to fit 2 CPU cores


def method_of(config_file: str, **overrides) -> dict:
    method = yaml.safe_load((ROOT / "configs" / config_file).read_text())["method"]
    return {**method, **overrides}


def runs() -> dict[str, tuple[dict, str]]:
    """name -> (method config, frame encoder)."""
    costep = method_of("costep_synth-motion-5.yaml")
    l2p = method_of("l2p_synth-shapes-10.yaml", query_cache=True)
    coda = method_of("coda_prompt_synth-shapes-10.yaml")
    table: dict[str, tuple[dict, str]] = {}
    for encoder in ("frame-mean", "frame-grid"):
        short = encoder.removeprefix("frame-")
        table[f"l2p {short}"] = (l2p, encoder)
        table[f"coda_prompt {short}"] = (coda, encoder)
        table[f"costep {short}"] = (costep, encoder)
        table[f"simplecil {short}"] = ({"name": "simplecil"}, encoder)
    table["costep max"] = (costep, "frame-max")
    dualprompt = method_of("dualprompt_synth-shapes-10.yaml", query_cache=True)
    table["dualprompt grid"] = (dualprompt, "frame-grid")
    table["finetune grid"] = (
        {"name": "finetune", "epochs": 3, "batch_size": 64, "lr": 1e-4},
        "frame-grid",
    )
    for variant, change in {
        "deterministic generator": {"generator": "deterministic"},
        "VAE generator": {"generator": "vae"},
        "GAN generator": {"generator": "gan"},
        "prompts frozen": {"freeze_prompts": True},
        "no generator replay": {"replay": False},
    }.items():
        table[f"costep grid, {variant}"] = ({**costep, **change}, "frame-grid")
    return table


def config(name: str, seed: int, out: str) -> dict:
    method, encoder = runs()[name]
    return {
        "seed": seed,
        "data": {"name": "synth-motion-5", "augment": False, "subsample": SUBSAMPLE},
        "backbone": {"name": "tiny-synth-vit", "frame_encoder": encoder},
        "method": method,
        "output": {"dir": out, "checkpoint": False},
    }


def _run(name: str, seed: int, out: str) -> dict:
    return timed_metrics(config(name, seed, out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None, help="run names (see runs())")
    args = parser.parse_args()
    names = args.only or list(runs())
    out = tempfile.mkdtemp(prefix="promptcl-video-methods-")
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = {
            (name, seed): pool.submit(_run, name, seed, f"{out}/{name}-{seed}".replace(" ", "_"))
            for seed in args.seeds
            for name in names
        }
        rows: dict[str, list[dict]] = {}
        for (name, seed), job in jobs.items():
            row = job.result()
            rows.setdefault(name, []).append(row)
            print(name, seed, json.dumps(row), flush=True)

    def cell(name: str, key: str) -> str:
        values = [r[key] for r in rows[name]]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}"

    print(f"\nsynth-motion-5, tiny-synth-vit, seeds {args.seeds} (mean ± std)\n")
    print("| run | FAA | CAA | FM | seconds |\n|---|---|---|---|---|")
    for name in rows:
        faa, caa, fm, sec = (cell(name, k) for k in ("faa", "caa", "fm", "seconds"))
        print(f"| {name} | {faa} | {caa} | {fm} | {sec} |")


if __name__ == "__main__":
    main()
