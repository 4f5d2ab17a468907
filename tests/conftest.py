import os

import pytest
import torch
from synth_stream import synth_run

import promptcl

# Tests run on CPU with the network off: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: the test models are tiny, and two threads thrash when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture
def tiny_run(tmp_path):
    """A small, fast run config: random tiny ViT, a few synthetic classes in 3 tasks."""

    def make(method: dict, **sections) -> dict:
        config = {
            "seed": 0,
            "data": {
                "name": "synth-shapes-10",
                "task_sizes": [4, 4, 4],
                "subsample": 24,
                "augment": False,
            },
            "backbone": {"name": "tiny-vit", "pretrained": False},
            "method": method,
            "train": {"eval_batch_size": 128},
            "output": {"dir": str(tmp_path / "run")},
        }
        for key, value in sections.items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        return config

    return make


@pytest.fixture(scope="session")
def finetune_run(tmp_path_factory):
    """The lower bound on the reduced synth-shapes-10 stream, run once for every prompt method's
    end-to-end comparison."""
    method = {"name": "finetune", "epochs": 3, "batch_size": 16, "lr": 1e-4}
    return promptcl.run(synth_run(method, tmp_path_factory.mktemp("finetune") / "run"), quiet=True)
