"""Runs under ``torchrun`` for tests/test_distributed.py: several small runs in one launch.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT

reads OUT/<name>.yaml for each scenario below and writes the run into the config's output.dir;
``OUT/<name>.error`` holds the message of a run that raised (for the run that must).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import promptcl
from promptcl import collectives
from promptcl.config import load_config
from promptcl.engine import distributed
from promptcl.engine.trainer import Trainer
from promptcl.methods.simplecil import SimpleCIL, SimpleCILConfig
from promptcl.registry import methods


class Stop(Exception):
    """Ends a run right after a checkpoint, as a kill would."""


class UnreducedMeansConfig(SimpleCILConfig):
    name: str = "unreduced_means"


@methods.register("unreduced_means")
class UnreducedMeans(SimpleCIL):
    """SimpleCIL that forgets to sum its class means over processes (the trainer must notice)."""

    Config = UnreducedMeansConfig

    @torch.no_grad()
    def end_task(self, task, loader) -> None:
        for x, y, *_ in loader:
            self.prototypes[y] = self.backbone.encode(x)


def stop_after(task: int, epochs_done: int):
    """Make every Trainer raise ``Stop`` once it has checkpointed (task, phase 0, epochs_done)."""
    save = Trainer._save

    def save_then_stop(self, at, **kwargs):
        save(self, at, **kwargs)
        if (at.task, at.phase, at.epochs_done) == (task, 0, epochs_done):
            raise Stop

    Trainer._save = save_then_stop
    return save


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with distributed.launched("cpu"):
        assert collectives.world_size() == 2, "launch with --nproc-per-node 2"
        from promptcl.cli import app

        app(["run", str(out / "coda.yaml"), "--quiet"], standalone_mode=False)
        save = stop_after(1, 1)
        try:
            promptcl.run(load_config(out / "coda_stopped.yaml"), quiet=True)
        except Stop:
            pass
        Trainer._save = save
        for name in ("coda_cached", "simplecil", "hide", "hash", "unreduced"):
            try:
                promptcl.run(load_config(out / f"{name}.yaml"), quiet=True)
            except RuntimeError as err:
                if collectives.is_main():
                    (out / f"{name}.error").write_text(str(err))
        collectives.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
