"""``method.freeze_prompts``: every prompt method's prompts, keys, components, routers and
generators stay at their initialisation while the rest trains, the ablation that tells what the
prompts earn (the end-to-end comparisons are in each method's tests)."""

import pytest
import torch
from synth_stream import synth_run

from promptcl.build import build_run
from promptcl.config import build_config
from promptcl.engine.progress import Console
from promptcl.engine.trainer import Trainer
from promptcl.methods.base import Task, parameters_of, trainable

# method config, backbone, and the top-level modules that still train with frozen prompts
CASES = {
    "l2p": ({"name": "l2p"}, "tiny-synth-vit", {"head"}),
    "dualprompt": ({"name": "dualprompt"}, "tiny-synth-vit", {"head"}),
    "coda_prompt": ({"name": "coda_prompt", "num_components": 30}, "tiny-synth-vit", {"head"}),
    "hide_prompt": ({"name": "hide_prompt"}, "tiny-synth-vit", {"head", "tii"}),
    "hash": ({"name": "hash"}, "tiny-synth-vit", {"head", "tii"}),
    "star_prompt": (
        {"name": "star_prompt", "clip_backbone": "tiny-synth-clip"},
        "tiny-synth-vit",
        {"head", "context"},  # the first level's class context is not a prompt of the ViT
    ),
    "tppt": ({"name": "tppt", "variant": "VT", "num_components": 30}, "tiny-synth-clip", set()),
    "costep": ({"name": "costep"}, "tiny-synth-vit", {"head"}),
    "ssp": ({"name": "ssp"}, "tiny-synth-videomamba", {"head", "feature_scale"}),
}
VIDEO = {"name": "synth-motion-5", "task_sizes": [10, 10], "subsample": 4}


def trained(m, task: Task) -> tuple[set[str], set[int]]:
    """The top-level modules and the ids of the parameters the task's phases train."""
    names = {id(p): n for n, p in m.named_parameters()}
    groups = [
        g for ph in m.phases(task) for g in trainable(ph.param_groups(), m.frozen_parameters())
    ]
    ids = {id(p) for g in groups for p in g["params"]}
    return {names[i].split(".")[0] for i in ids}, ids


def prompt_ids(m) -> set[int]:
    return {id(p) for p in parameters_of(m.prompt_state())}


@pytest.mark.parametrize("name", CASES)
def test_freeze_prompts_trains_everything_but_the_prompt_state(name):
    method, backbone, still_trained = CASES[name]
    config = synth_run(method, "unused", **(VIDEO if "videomamba" in backbone else {}))
    config["backbone"] = {"name": backbone}
    m = build_run(build_config(config)).method
    tasks = [Task(t, 10 * t, 10 * t + 10, 3) for t in range(2)]
    m.begin_task(tasks[0])
    _, ids = trained(m, tasks[0])
    assert ids & prompt_ids(m)  # what prompt_state names is what would otherwise train
    m.config.freeze_prompts = True
    for t, task in enumerate(tasks):
        if t:
            m.begin_task(task)
        modules, ids = trained(m, task)
        assert prompt_ids(m) and not ids & prompt_ids(m)
        assert modules == still_trained


def test_frozen_prompts_end_the_run_as_they_began(tmp_path):
    method = {"name": "l2p", "epochs": 1, "batch_size": 32, "freeze_prompts": True}
    trainer = Trainer(build_config(synth_run(method, tmp_path / "run")), Console(quiet=True))
    pool = trainer.method.pool
    initial = {k: v.clone() for k, v in pool.state_dict().items()}
    result = trainer.run()
    assert all(torch.equal(pool.state_dict()[k], v) for k, v in initial.items())
    assert trainer.method.head.weight.abs().sum() > 0  # the zero-initialised head did train
    assert result.metrics["faa"] > 100 / 30 * 3
