"""What the prompts earn: every prompt method's shipped offline config, trained and with
``method.freeze_prompts=true`` (prompts, keys, components, routers and generators left at their
initialisation; heads, task inference and alignment trained as usual).

Prints a Markdown table, mean over seeds: FAA and FM with the prompts trained and frozen, and
trained minus frozen FAA. A prompt method whose difference is not clearly positive is not done
until we know why (issue "Fidelity"). For the methods that infer a task and then prompt with it
(HiDe-Prompt, Hash) a second table splits the final accuracy: how often task inference is right,
and the accuracy over all classes when each test image gets its true task's prompt instead.

    python benchmarks/frozen_prompts.py [--methods l2p hash ...] [--seeds 0 1 2] [--jobs 2]
                                        [--set method.epochs=1 ...]

Measured (seed 0, 2 cores, --jobs 2, 31 minutes), FAA trained / frozen: L2P 24.35 / 23.20,
DualPrompt 28.45 / 29.90, CODA-Prompt 40.85 / 43.20, HiDe-Prompt 57.25 / 58.15, Hash 44.80 / 57.10
(at its former lr 0.01; at lr 0.001, chosen on validation data since: 57.80 / 57.40, seed 1 56.00 /
57.15), STAR-Prompt 66.00 / 62.75, TPPT-V 66.50 / 65.00, TPPT-VT 66.30 / 65.05, CoSTEP (on synth-
motion-5) 14.25 / 15.25. With the true task's prompt, HiDe-Prompt reaches 86.0 % trained and 58.15
% frozen (task inference is right for 62 % of the images); Hash 56.45 / 58.55.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from promptcl.config import load_config
from promptcl.engine.progress import Console
from promptcl.engine.trainer import Trainer
from promptcl.methods.task_inference import TaskInferenceMethod

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
METHODS = {  # name -> shipped config of the offline world
    "l2p": "l2p_synth-shapes-10",
    "dualprompt": "dualprompt_synth-shapes-10",
    "coda_prompt": "coda_prompt_synth-shapes-10",
    "hide_prompt": "hide_prompt_synth-shapes-10",
    "hash": "hash_synth-shapes-10",
    "star_prompt": "star_prompt_synth-shapes-10",
    "tppt-v": "tppt-v_synth-shapes-10",
    "tppt-vt": "tppt-vt_synth-shapes-10",
    "costep": "costep_synth-motion-5",
}


def run(name: str, frozen: bool, seed: int, overrides: list[str], out: str) -> dict[str, float]:
    torch.set_num_threads(1)  # one thread per process: --jobs processes share the cores
    sets = [*overrides, f"seed={seed}", f"output.dir={out}", "output.overwrite=true"]
    sets += ["method.freeze_prompts=true"] if frozen else []
    began = time.perf_counter()
    trainer = Trainer(load_config(CONFIGS / f"{METHODS[name]}.yaml", sets), Console(quiet=True))
    result = trainer.run()
    seconds = time.perf_counter() - began
    if isinstance(trainer.method, TaskInferenceMethod):
        return {**result.metrics, **task_split(trainer), "seconds": seconds}
    return {**result.metrics, "seconds": seconds}


@torch.no_grad()
def task_split(trainer: Trainer) -> dict[str, float]:
    """After the last task, over every test image: task inference accuracy, and the accuracy
    over all classes with the inferred task's prompt (the run's) and with the true task's."""
    method, scenario = trainer.method.eval(), trainer.scenario
    right = inferred = oracle = total = 0
    for t in range(scenario.num_tasks):
        for x, y, *_ in DataLoader(scenario.test_view(t), batch_size=256):
            tasks = method.infer_tasks(x)
            right += int((tasks == t).sum())
            inferred += int((method.head(method.task_features(x, tasks)).argmax(1) == y).sum())
            true = torch.full_like(tasks, t)
            oracle += int((method.head(method.task_features(x, true)).argmax(1) == y).sum())
            total += len(y)
    return {
        "tii": 100.0 * right / total,
        "inferred": 100.0 * inferred / total,
        "oracle": 100.0 * oracle / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    cells = [(m, f, s) for m in args.methods for f in (False, True) for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            cell: pool.submit(run, *cell, args.set, f"{tmp}/{cell[0]}_{cell[1]}_{cell[2]}")
            for cell in cells
        }
        results = {cell: future.result() for cell, future in futures.items()}

    def mean(method: str, frozen: bool, key: str) -> float:
        values = [results[(method, frozen, s)][key] for s in args.seeds]
        return sum(values) / len(values)

    print(f"seeds {args.seeds}; overrides {args.set or 'none'}\n")
    print("| method | trained FAA / FM | frozen FAA / FM | trained − frozen FAA | minutes |")
    print("|---|---|---|---|---|")
    for m in args.methods:
        faa, fm = mean(m, False, "faa"), mean(m, False, "fm")
        faa0, fm0 = mean(m, True, "faa"), mean(m, True, "fm")
        minutes = sum(results[(m, f, s)]["seconds"] for f in (0, 1) for s in args.seeds) / 60
        print(
            f"| {m} | {faa:.2f} / {fm:.2f} | {faa0:.2f} / {fm0:.2f} | {faa - faa0:+.2f} | "
            f"{minutes:.1f} |"
        )
    split = [m for m in args.methods if "tii" in results[(m, False, args.seeds[0])]]
    if split:
        print(
            "\n| method | prompts | task inference right | accuracy (inferred task) | "
            "accuracy (true task's prompt) |"
        )
        print("|---|---|---|---|---|")
        for m in split:
            for frozen in (False, True):
                cells = " | ".join(
                    f"{mean(m, frozen, k):.2f}" for k in ("tii", "inferred", "oracle")
                )
                print(f"| {m} | {'frozen' if frozen else 'trained'} | {cells} |")


if __name__ == "__main__":
    main()
