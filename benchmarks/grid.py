"""What the ablation benchmarks share: run named configs in worker processes, time each run,
print a Markdown table of FAA, CAA and FM."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def timed_metrics(config) -> dict:
    """Run ``config`` on one thread: FAA, CAA, FM and its wall time in seconds."""
    import torch

    import promptcl

    torch.set_num_threads(1)
    began = time.perf_counter()
    metrics = promptcl.run(config, quiet=True).metrics
    row = {k: round(metrics[k], 2) for k in ("faa", "caa", "fm")}
    row["seconds"] = round(time.perf_counter() - began)
    return row


def run_grid(make_config: Callable[[str, int, str], object], names: list[str], workers: int,
             seed: int, title: str) -> None:  # fmt: skip
    """``make_config(name, seed, out_dir)`` for every name, ``workers`` runs at a time."""
    tmp = Path(tempfile.mkdtemp())
    with ProcessPoolExecutor(workers) as pool:
        jobs = {
            name: pool.submit(_run, make_config, name, seed, str(tmp / name.replace(" ", "_")))
            for name in names
        }
        rows = {}
        for name, job in jobs.items():
            rows[name] = job.result()
            print(name, json.dumps(rows[name]), flush=True)
    print(f"\n{title}, seed {seed}\n")
    print("| run | FAA | CAA | FM | seconds |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['faa']:.2f} | {r['caa']:.2f} | {r['fm']:.2f} | {r['seconds']} |")


def _run(make_config, name: str, seed: int, out: str) -> dict:
    return timed_metrics(make_config(name, seed, out))
