"""Key-query prompt methods against the bare forward + backward of their backbone (``promptcl bench``).

For L2P and CODA-Prompt on synth-shapes-10 with tiny-synth-vit (their configs in ``configs/``,
augmentation off so that the query cache is exact), with and without the query cache: training
and evaluation samples/s, the ratio of each to the floor and to the method's structural floor
(its own prompt tokens or prefixes) measured in the same process (``promptcl.engine.bench``), the
evaluation ratio with the run's frozen-pass cache (as from a run's second evaluation on), and
the peak memory a training step adds (``bench``'s docstring). Prints a markdown table;
``--json`` writes every measurement.

    python benchmarks/bench_prompt_methods.py [--methods l2p coda_prompt] [--steps 10]
        [--rounds 5] [--json bench.json] [--set train.precision=bf16 ...]

The same measurement for one configuration from the command line:

    promptcl bench configs/l2p_synth-shapes-10.yaml --set data.augment=false \\
        --set method.query_cache=true --json l2p-cache.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from promptcl.config import load_config
from promptcl.engine.bench import bench

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["l2p", "coda_prompt"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    print(
        "| method | query cache | batch | train samples/s (floor) | train ratio (structural) "
        "| eval samples/s (floor) | eval ratio (structural) | eval ratio, frozen passes cached "
        "(structural) | train peak MB (floor) |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for name in args.methods:
        for cache in (False, True):
            config = load_config(
                CONFIGS / f"{name}_synth-shapes-10.yaml",
                ["data.augment=false", f"method.query_cache={str(cache).lower()}", *args.overrides],
            )
            r = bench(config, steps=args.steps, rounds=args.rounds)
            results.append(r)
            method, floor = r["results"]["method"], r["results"]["floor"]
            print(
                f"| {name} | {'yes' if cache else 'no'} | {r['batch_size']} "
                f"| {method['train_samples_per_s']:.0f} ({floor['train_samples_per_s']:.0f}) "
                f"| {r['train_ratio']:.2f}x ({r['train_ratio_structural']:.2f}x) "
                f"| {method['eval_samples_per_s']:.0f} ({floor['eval_samples_per_s']:.0f}) "
                f"| {r['eval_ratio']:.2f}x ({r['eval_ratio_structural']:.2f}x) "
                f"| {r['eval_ratio_cached']:.2f}x ({r['eval_ratio_cached_structural']:.2f}x) "
                f"| {method['train_peak_mb']:.0f} ({floor['train_peak_mb']:.0f}) |",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
