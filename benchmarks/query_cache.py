"""Training throughput of key-query prompt methods with and without the query cache.

Runs each method on the first tasks of synth-shapes-10 with tiny-synth-vit and no augmentation
(where the cache is exact), and reports training samples/s over the epochs after the first (the
first epoch of a task fills the cache). The ratio is measured within this run, on this machine.

    python benchmarks/query_cache.py [--methods l2p coda_prompt] [--epochs 3] [--tasks 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import promptcl
from promptcl.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def samples_per_second(name: str, cache: bool, epochs: int, tasks: int, out: Path) -> float:
    config = load_config(
        CONFIGS / f"{name}_synth-shapes-10.yaml",
        [
            f"output.dir={out}",
            "output.overwrite=true",
            "data.augment=false",
            f"method.query_cache={str(cache).lower()}",
            f"method.epochs={epochs}",
            f"data.task_sizes={[10] * tasks}",
        ],
    )
    promptcl.run(config, quiet=True)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    timed = [r for r in records if r.get("epoch", 0) > 0]
    return sum(r["samples"] for r in timed) / sum(r["seconds"] for r in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["l2p", "coda_prompt"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    print("| method | samples/s, no cache | samples/s, cache | speed-up |\n|---|---|---|---|")
    for name in args.methods:
        off, on = (
            samples_per_second(name, c, args.epochs, args.tasks, tmp / f"{name}-{c}")
            for c in (False, True)
        )
        print(f"| {name} | {off:.0f} | {on:.0f} | {on / off:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
