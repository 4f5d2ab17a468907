"""Hash's ablation on synth-shapes-10 with tiny-synth-vit: the seed's four rows against fine-tuning.

Rows (configs/hash_synth-shapes-10{,_pool-only,_hdr,_hgm}.yaml): the shared pool alone, + HDR,
+ HGM, and the full method. For each: FAA, CAA, FM, the activation entropy H(w) (mean over tasks
of the last epoch's mean per-sample entropy of the Top-K weights; log K = 0.69 for Top-2 means
equal weights), the share of the Top-K choices that fell on A_t (HDR's penalised most-used
experts) in the first and the last epoch (mean over tasks 1..), how evenly the pool was used
(entropy of the cumulative counts / log E: 1 = all experts equally), and the wall time.

    python benchmarks/hash_ablation.py [--rows full pool-only ...] [--epochs N] [--seed S]
                                       [--set method.hdr_delta=0.25 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import promptcl
from promptcl.config import load_config, method_config
from promptcl.engine.checkpoint import config_fingerprint, load
from promptcl.engine.trainer import CHECKPOINT

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ROWS = {"pool-only": "_pool-only", "hdr": "_hdr", "hgm": "_hgm", "full": ""}
FINETUNE = {"name": "finetune", "epochs": 3, "batch_size": 64, "lr": 1e-4}  # prompt_baselines.py


def per_task(run_dir: Path, key: str, epoch: str) -> float:
    """Mean over tasks of the first or last epoch's logged ``key`` (tasks 1.. for hot_share:
    task 0 has no history)."""
    chosen: dict[int, float] = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record and (key != "hot_share" or record["task"] > 0):
            if epoch == "last" or record["task"] not in chosen:
                chosen[record["task"]] = record[key]
    return sum(chosen.values()) / len(chosen)


def pool_balance(result: promptcl.engine.trainer.RunResult) -> tuple[int, float]:
    """Experts ever used, and the entropy of the usage counts / log E."""
    saved = load(result.run_dir / CHECKPOINT, "hash", config_fingerprint(result.config))
    counts = saved["method"]["counts"].double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return int((counts > 0).sum()), entropy / math.log(len(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=["finetune", *ROWS])
    parser.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the Hash rows")
    args = parser.parse_args()
    torch.set_num_threads(1)  # 2 busy cores: one thread per process is faster (tests/conftest.py)
    tmp = Path(tempfile.mkdtemp())
    rows = {}
    for name in args.rows:
        overrides = [f"output.dir={tmp / name}", "output.overwrite=true", f"seed={args.seed}"]
        if name == "finetune":
            config = load_config(CONFIGS / "hash_synth-shapes-10.yaml", overrides)
            config = config.model_copy(update={"method": method_config(FINETUNE)})
        else:
            if args.epochs is not None:
                overrides.append(f"method.epochs={args.epochs}")
            overrides += args.set
            config = load_config(CONFIGS / f"hash_synth-shapes-10{ROWS[name]}.yaml", overrides)
        began = time.perf_counter()
        result = promptcl.run(config, quiet=True)
        row = {k: round(result.metrics[k], 2) for k in ("faa", "caa", "fm")}
        if name != "finetune":
            used, balance = pool_balance(result)
            row |= {
                "entropy": round(per_task(result.run_dir, "entropy", "last"), 3),
                "hot_first": round(per_task(result.run_dir, "hot_share", "first"), 3),
                "hot_last": round(per_task(result.run_dir, "hot_share", "last"), 3),
                "experts_used": used,
                "pool_balance": round(balance, 3),
            }
        rows[name] = row | {"seconds": round(time.perf_counter() - began, 1)}
        print(name, json.dumps(rows[name]), flush=True)
    keys = ("faa", "caa", "fm", "entropy", "hot_first", "hot_last", "experts_used", "pool_balance")
    print(
        "\n| row | FAA | CAA | FM | entropy H(w) | A_t share, first epoch | last epoch "
        "| experts used | pool balance | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        cells = [r.get(k, "") for k in keys]
        print(f"| {name} | " + " | ".join(map(str, cells)) + f" | {r['seconds']} |")


if __name__ == "__main__":
    main()
