"""Where a whole run's time goes, with and without the frozen-pass cache (``promptcl.frozen_cache``).

For each config (the default job, HiDe-Prompt's and Hash's synth-shapes-10 configs) the run is
made twice, once with ``train.frozen_cache=false`` and once with it on, as two processes started
together (one thread each), so that both see the same machine load. Reported: wall seconds of
each and their ratio, the seconds of each part of the protocol (training, evaluation, end_task
and the phases' statistics, checkpoints) from the runs' ``log.jsonl``, and whether the two
accuracy matrices are equal. Then ``promptcl bench``'s evaluation ratio to the floor and to the
structural floor, without and with the cache.

    python benchmarks/protocol_speed.py [--configs default hide_prompt hash] [--tasks N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "default": None,  # the default job: CODA-Prompt on synth-shapes-10
    "hide_prompt": ROOT / "configs" / "hide_prompt_synth-shapes-10.yaml",
    "hash": ROOT / "configs" / "hash_synth-shapes-10.yaml",
}
PARTS = ("train", "evaluate", "end_task", "checkpoint")


def launch(name: str, cache: bool, out: Path, tasks: int | None) -> subprocess.Popen:
    config = CONFIGS[name]
    sets = [f"output.dir={out}", f"train.frozen_cache={str(cache).lower()}"]
    if tasks is not None:
        sets.append(f"data.task_sizes={[10] * tasks}")
    args = [sys.executable, "-m", "promptcl", "run", *([str(config)] if config else []), "--quiet"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def parts(out: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    timed = [r for r in records if isinstance(r.get("seconds"), dict)]
    return {k: sum(r["seconds"][k] for r in timed) for k in PARTS}


def matrix(out: Path) -> np.ndarray:
    return np.genfromtxt(out / "accuracy_matrix.csv", delimiter=",", skip_header=1)[:, 1:]


def side_by_side(name: str, tasks: int | None, tmp: Path) -> None:
    outs = {c: tmp / f"{name}-{c}" for c in (False, True)}
    began = time.perf_counter()
    procs = {c: launch(name, c, outs[c], tasks) for c in (False, True)}
    wall = {}
    while len(wall) < 2:
        for c, p in procs.items():
            if c not in wall and p.poll() is not None:
                if p.returncode:
                    raise SystemExit(f"{name} cache={c} failed:\n{p.stderr.read().decode()}")
                wall[c] = time.perf_counter() - began
        time.sleep(0.2)
    off, on = parts(outs[False]), parts(outs[True])
    same = np.array_equal(matrix(outs[False]), matrix(outs[True]), equal_nan=True)
    print(
        f"| {name} | {wall[False]:.0f} | {wall[True]:.0f} | {wall[False] / wall[True]:.2f}x | "
        + " | ".join(f"{off[k]:.1f} / {on[k]:.1f}" for k in PARTS)
        + f" | {'yes' if same else 'NO'} |",
        flush=True,
    )


def bench_ratios(name: str) -> None:
    from promptcl.config import load_config
    from promptcl.engine.bench import bench

    config = load_config(CONFIGS[name], [])
    r = bench(config, steps=5, warmup=2, rounds=5)
    print(
        f"| {name} | {r['eval_ratio']:.2f}x | {r['eval_ratio_cached']:.2f}x | "
        f"{r['eval_ratio_structural']:.2f}x | {r['eval_ratio_cached_structural']:.2f}x | "
        f"{r['train_ratio_structural']:.2f}x |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--tasks", type=int, default=None, help="cut each stream to N tasks")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    columns = ["config", "wall s, no cache", "wall s, cache", "speed-up"]
    columns += [f"{k} s (off / on)" for k in PARTS] + ["same accuracy"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for name in args.configs:
        side_by_side(name, args.tasks, tmp)
    import torch

    torch.set_num_threads(1)
    print(
        "\n| config | eval / floor | eval / floor, cached | eval / structural | "
        "eval / structural, cached | train / structural |\n|---|---|---|---|---|---|"
    )
    for name in args.configs:
        bench_ratios(name)


if __name__ == "__main__":
    main()
