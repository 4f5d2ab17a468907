"""HiDe-Prompt: momentum prompts, per-sample task inference, frozen backbone, end to end, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from phase_runner import finish_task
from released_code import released_e_prefixes
from synth_stream import synth_run
from torch.utils.data import DataLoader, TensorDataset

import promptcl
import promptcl.methods.hide_prompt  # noqa: F401  (registers "hide_prompt")
from promptcl.config import BackboneConfig, load_config
from promptcl.engine.progress import Console
from promptcl.engine.trainer import Trainer
from promptcl.methods.base import Batch, Task
from promptcl.methods.hide_prompt import HiDePrompt, HiDePromptConfig
from promptcl.registry import backbones


def tiny_method(**overrides) -> HiDePrompt:
    """HiDe on the random 2-block tiny ViT, 2 tasks of 3 classes; everything short."""
    torch.manual_seed(0)
    backbone = backbones.get("tiny-vit")(BackboneConfig(name="tiny-vit", pretrained=False))
    cfg = dict(
        prompt_layers=[0, 1], batch_size=8, tii_epochs=1, crct_epochs=1, n_centroids=2, **overrides
    )
    return HiDePrompt(HiDePromptConfig(**cfg), backbone, [f"c{i}" for i in range(6)])


def task_loader(task: Task, n: int = 12) -> DataLoader:
    g = torch.Generator().manual_seed(task.index)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(task.start, task.end).repeat(n // (task.end - task.start))
    return DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=4)


TASKS = [Task(0, 0, 3, 2), Task(1, 3, 6, 2)]


def test_momentum_prompt_and_shared_pool_on_a_hand_made_case():
    method = tiny_method(prompt_momentum=0.01)
    method.begin_task(TASKS[0])
    finish_task(method, TASKS[0], task_loader(TASKS[0]))
    with torch.no_grad():
        method.prompts[0].fill_(1.0)
    method.begin_task(TASKS[1])
    assert torch.equal(method.prompts[1], method.prompts[0])  # shared_prompt_pool copy
    assert not method.prompts[0].requires_grad and method.prompts[1].requires_grad
    with torch.no_grad():
        method.prompts[1].fill_(3.0)
    # Training forward: (1 - m) P_1 + m mean(P_0) = 0.99 * 3 + 0.01 * 1, gradient to P_1 only.
    blended = method.task_prompt(1, momentum=True)
    torch.testing.assert_close(blended, torch.full_like(blended, 2.98))
    blended.sum().backward()
    torch.testing.assert_close(method.prompts[1].grad, torch.full_like(blended, 0.99))
    assert method.prompts[0].grad is None
    assert torch.equal(method.task_prompt(0, momentum=True), method.prompts[0])
    # After the task, P_1 is overwritten with the blend; P_0 is kept.
    finish_task(method, TASKS[1], task_loader(TASKS[1]))
    torch.testing.assert_close(method.prompts[1], torch.full_like(blended, 2.98))
    assert (method.prompts[0] == 1).all()


def test_each_sample_runs_with_the_prompt_of_its_own_inferred_task():
    method = tiny_method(tii_mlp_structure=[])  # TII = a linear head on the frozen feature
    for task in TASKS:
        method.begin_task(task)
    with torch.no_grad():
        for prompt in method.prompts:
            prompt.uniform_(-1, 1)  # distinct prompts per task
    method.eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # Set the TII head so that sample i is assigned class wanted[i] (exactly, through the
    # pseudo-inverse of the batch's features): tasks alternate within the batch.
    wanted = torch.tensor([0, 4, 1, 5, 2, 3, 0, 4])
    with torch.no_grad():
        q = method.query(x)  # (8, F)
        target = 10.0 * torch.nn.functional.one_hot(wanted, 6).float()  # (8, C)
        method.tii.head.weight.copy_((torch.linalg.pinv(q) @ target).T)
        method.tii.head.bias.zero_()
    tasks = method.infer_tasks(x)
    assert tasks.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]

    seen = []
    hook = method.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(args[1]) if args[1] is not None else None
    )
    with torch.no_grad():
        logits = method.predict(x)
        singles = torch.cat([method.predict(x[i : i + 1]) for i in range(8)])
    hook.remove()
    prefix = seen[0].prefix
    for j, layer in enumerate([0, 1]):
        for i, t in enumerate(tasks.tolist()):
            assert torch.equal(prefix[layer][0][i], method.prompts[t][j, 0])  # keys
            assert torch.equal(prefix[layer][1][i], method.prompts[t][j, 1])  # values
    torch.testing.assert_close(logits, singles, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixing", [False, True])
def test_released_kv_mixing_reproduces_the_released_reshape(mixing):
    method = tiny_method(released_kv_mixing=mixing)
    for task in TASKS:
        method.begin_task(task)
    with torch.no_grad():
        for prompt in method.prompts:
            prompt.uniform_(-1, 1)
    tasks = torch.tensor([1, 0, 0, 1])
    pool = torch.stack(list(method.prompts)).detach()  # (T, layers, 2, L, D)
    prefix = method.layer_prompts(pool[tasks]).prefix
    heads = method.backbone.num_heads
    for j, layer in enumerate(method.config.prompt_layers):
        port_key, port_value = released_e_prefixes(pool, tasks, j, heads)
        key, value = prefix[layer]
        assert torch.equal(key, port_key if mixing else pool[tasks, j, 0])
        assert torch.equal(value, port_value if mixing else pool[tasks, j, 1])
    assert not torch.equal(port_key, pool[tasks, j, 0])
    assert bool(method.config.released_bugs) is mixing


def test_only_prompts_tii_and_head_learn_and_the_backbone_is_unchanged():
    method = tiny_method()
    backbone_before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    tii_before = {k: v.clone() for k, v in method.tii.state_dict().items()}
    for task in TASKS:
        method.begin_task(task)
        method.train()
        trainable = [p for g in method.param_groups() for p in g["params"]]
        assert trainable[0] is method.prompts[task.index]
        x, y, index = next(iter(task_loader(task)))
        method.zero_grad()
        method.training_step(Batch(x, y, index))["loss"].backward()
        with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
        assert with_grad == {f"prompts.{task.index}", "head.weight", "head.bias"}
        method.eval()
        finish_task(method, task, task_loader(task))
    learnable = {n.split(".")[0] for n, p in method.named_parameters() if p.requires_grad}
    assert learnable == {"prompts", "head", "tii"}
    after = method.backbone.state_dict()
    assert all(torch.equal(backbone_before[k], after[k]) for k in backbone_before)
    assert not all(torch.equal(v, method.tii.state_dict()[k]) for k, v in tii_before.items())
    assert method.wtp_stats.fitted.all() and method.tii_stats.fitted.all()


# --- end to end on the synthetic benchmark ------------------------------------------------------

HIDE = {  # a few epochs and steps on the CPU, hence larger learning rates than the paper's
    "name": "hide_prompt",
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.03,
    "tii_lr": 1e-3,
    "tii_ca_lr": 0.005,
    "crct_epochs": 5,
}


@pytest.fixture(scope="module")
def hide_run(tmp_path_factory):
    return promptcl.run(synth_run(HIDE, tmp_path_factory.mktemp("hide") / "run"), quiet=True)


def test_hide_beats_finetune_and_forgets_less(hide_run, finetune_run):
    ft = finetune_run
    hide = hide_run.metrics
    assert ft.metrics["fm"] > 30  # the lower bound forgets
    assert hide["faa"] >= ft.metrics["faa"] + 25
    assert hide["fm"] <= ft.metrics["fm"] - 20
    assert hide["faa"] > 100 / 30 * 10  # ten times chance over 30 classes


class StopAfterTask(Console):
    """Interrupts a run once task ``t`` is finished and checkpointed."""

    def __init__(self, t: int):
        super().__init__(quiet=True)
        self.t = t

    def task_summary(self, t, accuracy, metrics):
        if t == self.t:
            raise KeyboardInterrupt


def test_resume_at_a_task_boundary_equals_the_uninterrupted_run(hide_run, tmp_path):
    from promptcl.config import build_config

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        Trainer(build_config(synth_run(HIDE, out)), StopAfterTask(1)).run()
    assert json.loads((out / "metrics.json").read_text())["after_task"] == 1
    resumed = promptcl.resume(out, quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, hide_run.accuracy)


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet-r", "synth-shapes-10"])
def test_shipped_configs_load(dataset):
    configs = Path(__file__).resolve().parent.parent / "configs"
    config = load_config(configs / f"hide_prompt_{dataset}.yaml")
    assert config.method.name == "hide_prompt" and config.method.prompt_layers == [0, 1, 2, 3, 4]
