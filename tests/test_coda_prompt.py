"""CODA-Prompt and its attention-weighted component pool (promptcl.prompts.components)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from synth_stream import synth_run
from torch.nn import functional as F

import promptcl
import promptcl.methods.coda_prompt  # noqa: F401  (registers "coda_prompt")
from promptcl.config import BackboneConfig, build_config, load_config
from promptcl.engine import checkpoint
from promptcl.engine.optim import build_optimizer
from promptcl.engine.progress import Console
from promptcl.engine.trainer import Trainer
from promptcl.methods.base import Batch, Task
from promptcl.methods.coda_prompt import CodaPrompt, CodaPromptConfig
from promptcl.prompts.components import ComponentPool, component_weights, gram_schmidt_
from promptcl.registry import backbones

CONFIGS = Path(__file__).parent.parent / "configs"


# --- the component pool ------------------------------------------------------------------------


def test_weights_are_the_cosine_of_attended_query_and_key():
    q = torch.tensor([[1.0, 2.0, 0.0]])
    A = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    K = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    # q ⊙ A_0 = (1, 2, 0) against (1, 0, 0): 1/√5;  q ⊙ A_1 = (0, 2, 0) against (0, 1, 1): 1/√2
    expected = torch.tensor([[1 / math.sqrt(5), 1 / math.sqrt(2)]])
    torch.testing.assert_close(component_weights(q, K, A), expected)

    # Random case against the official einsum form: normalize(q ⊙ A, d) · normalize(K, d).
    g = torch.Generator().manual_seed(0)
    q, K, A = (torch.randn(s, generator=g) for s in ((5, 16), (7, 16), (7, 16)))
    official = torch.einsum(
        "bkd,kd->bk",
        F.normalize(torch.einsum("bd,kd->bkd", q, A), dim=2),
        F.normalize(K, dim=1),
    )
    torch.testing.assert_close(component_weights(q, K, A), official)


def test_prompt_is_the_weighted_sum_of_the_components_in_use():
    pool = ComponentPool([3], num_components=4, length=2, embed_dim=3, query_dim=4)
    pool.begin_task(0, 2)  # task 0 of 2 owns rows [0, 2)
    K = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    A = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 2.0, 0.0]])
    P = torch.arange(12.0).reshape(2, 2, 3)
    with torch.no_grad():
        pool.keys[0, :2], pool.attention[0, :2], pool.components[0, :2] = K, A, P
    q = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    a0, a1 = 1 / math.sqrt(5), 1 / math.sqrt(2)
    p = pool.eval()(q)
    assert list(p) == [3] and p[3].shape == (1, 2, 3)
    torch.testing.assert_close(p[3][0], a0 * P[0] + a1 * P[1])
    torch.testing.assert_close(pool.weights(q, 0), torch.tensor([[a0, a1]]))

    pool.begin_task(1, 2)  # rows [2, 4) join, both in training (old detached) and at test
    assert pool.train().weights(q, 0).shape == (1, 4) and pool.eval().weights(q, 0).shape == (1, 4)
    torch.testing.assert_close(pool.weights(q, 0)[:, :2], torch.tensor([[a0, a1]]))


def _rows(pool: ComponentPool) -> list[torch.Tensor]:
    """Every (M, n) matrix the pool orthogonalises: per layer K, A and flattened P."""
    return [
        t[i].flatten(1)
        for i in range(len(pool.layers))
        for t in (pool.keys.detach(), pool.attention.detach(), pool.components.detach())
    ]


@pytest.mark.parametrize("mode", ["official", "exact"])
def test_new_rows_are_gram_schmidt_orthonormal_and_old_rows_kept(mode):
    torch.manual_seed(0)
    pool = ComponentPool([0, 2], 12, length=2, embed_dim=8, query_dim=16, orthogonalize=mode)
    pool.begin_task(0, 3)  # rows [0, 4)
    eye = torch.eye(4)
    for R in _rows(pool):
        torch.testing.assert_close(R[:4] @ R[:4].T, eye, atol=1e-5, rtol=0)
        assert not R[4:].any()  # rows not yet started are zero, as in the official code
    if mode == "exact":  # as training does, make the old rows non-orthogonal
        with torch.no_grad():
            for t in (pool.keys, pool.attention, pool.components):
                t[:, :4] += 0.3 * torch.randn_like(t[:, :4])
    old = [R.clone() for R in _rows(pool)]
    pool.begin_task(1, 3)  # rows [4, 8)
    for R, before in zip(_rows(pool), old, strict=True):
        assert torch.equal(R[:4], before[:4]) and not R[8:].any()
        new = R[4:8]
        torch.testing.assert_close(new @ new.T, eye, atol=1e-5, rtol=0)  # unit norm, orthogonal
        torch.testing.assert_close(R[:4] @ new.T, torch.zeros(4, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["official", "exact"])
def test_gram_schmidt_is_deterministic_given_the_torch_rng(mode):
    def pool() -> ComponentPool:
        torch.manual_seed(3)
        pool = ComponentPool([0, 1], 6, length=2, embed_dim=4, query_dim=8, orthogonalize=mode)
        pool.begin_task(0, 2)
        pool.begin_task(1, 2)
        return pool

    a, b = pool(), pool()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_official_gram_schmidt_projects_on_old_rows_as_they_are():
    """The official classical Gram-Schmidt, restated: v_k minus its projection on each earlier
    row separately (not orthogonal to trained, non-orthogonal old rows), then normalised."""
    g = torch.Generator().manual_seed(1)
    rows = torch.zeros(6, 10)
    rows[:3] = torch.randn(3, 10, generator=g)  # "trained" rows: not orthogonal
    torch.manual_seed(5)
    fresh = torch.randn(3, 10)
    expected = rows.clone()
    for k in range(3, 6):
        u = fresh[k - 3] - sum(
            (fresh[k - 3] @ expected[j]) / (expected[j] @ expected[j]) * expected[j]
            for j in range(k)
        )
        expected[k] = u
    expected[3:] /= expected[3:].norm(dim=1, keepdim=True)
    torch.manual_seed(5)
    torch.testing.assert_close(gram_schmidt_(rows.clone(), 3, 6, "official"), expected)


def test_orthogonality_penalty_is_the_official_mean_squared_form():
    torch.manual_seed(0)
    pool = ComponentPool([0, 1], 10, length=2, embed_dim=8, query_dim=16).train()
    pool.begin_task(0, 2)  # 5 orthonormal rows per matrix
    assert pool.penalty().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        pool.keys.mul_(2)  # K Kᵀ = 4 I: each layer adds mean((3 I)²) = 9 · 5 / 25
    assert pool.penalty().item() == pytest.approx(2 * 9 / 5, rel=1e-5)


def test_more_components_than_dimensions_is_refused():
    with pytest.raises(ValueError, match="at most 16"):
        ComponentPool([0], 20, length=8, embed_dim=8, query_dim=16)


# --- the method --------------------------------------------------------------------------------


def tiny_coda(**overrides) -> CodaPrompt:
    backbone = backbones.get("tiny-vit")(BackboneConfig(name="tiny-vit", pretrained=False))
    config = CodaPromptConfig(layers=[0, 1], num_components=9, **overrides)
    return CodaPrompt(config, backbone, [f"class {i}" for i in range(6)])


def test_defaults_are_the_official_ones():
    c = CodaPromptConfig()
    assert (c.layers, c.num_components, c.prompt_length, c.ortho_mu) == ([0, 1, 2, 3, 4], 100, 8, 0)
    assert (c.optimizer, c.lr, c.betas, c.weight_decay, c.batch_size) == (
        "adam", 1e-3, (0.9, 0.999), 0, 128,
    )  # fmt: skip
    assert (c.schedule, c.epochs, c.grad_clip, c.train_mask) == ("coda-cosine", 20, None, True)


def test_prefix_is_the_prompt_split_in_halves():
    torch.manual_seed(0)
    method = tiny_coda().eval()
    method.begin_task(Task(0, 0, 2, 3))
    seen = {}
    forward = method.backbone.forward

    def spy(x, prompts=None):
        if prompts is not None:
            seen.update(prompts.prefix)
        return forward(x, prompts)

    method.backbone.forward = spy
    x = torch.rand(2, 3, 32, 32)
    method.predict(x)
    p = method.prompt(method.query(x))
    assert sorted(seen) == [0, 1]
    for layer in (0, 1):
        key, value = seen[layer]
        assert key.shape == value.shape == (2, 4, 64)  # L_p = 8: 4 key + 4 value tokens
        assert torch.equal(key, p[layer][:, :4]) and torch.equal(value, p[layer][:, 4:])


@pytest.mark.parametrize("ortho_mu", [0.0, 0.1])
def test_task_1_trains_only_its_rows_and_the_head(ortho_mu):
    torch.manual_seed(0)
    method = tiny_coda(ortho_mu=ortho_mu).train()
    x = torch.rand(8, 3, 32, 32)
    backbone = {k: v.clone() for k, v in method.backbone.state_dict().items()}

    def steps(task: Task, n: int) -> None:
        optimizer = build_optimizer(method.param_groups(), method.config)  # fresh per task
        for _ in range(n):
            y = torch.randint(task.start, task.end, (8,))
            optimizer.zero_grad()
            method.training_step(Batch(x, y, torch.arange(8)))["loss"].backward()
            optimizer.step()

    method.begin_task(Task(0, 0, 2, 3))  # rows [0, 3)
    steps(Task(0, 0, 2, 3), 3)
    method.begin_task(task := Task(1, 2, 4, 3))  # rows [3, 6); rows [6, 9) unused
    pool = method.prompt
    old = {n: t.detach()[:, :3].clone() for n, t in pool.named_parameters()}

    method.zero_grad()
    method.training_step(Batch(x, torch.tensor([2, 3] * 4), torch.arange(8)))["loss"].backward()
    for name, t in pool.named_parameters():
        for layer in range(2):
            assert not t.grad[layer, :3].any() and not t.grad[layer, 6:].any(), name
            assert t.grad[layer, 3:6].abs().sum() > 0, name
    head = method.head.weight.grad.abs().sum(1)  # (C,)
    assert not head[:2].any() and not head[4:].any() and (head[2:4] > 0).all()
    assert all(p.grad is None for p in method.backbone.parameters())
    trainable = {id(p) for g in method.param_groups() for p in g["params"]}
    assert trainable == {id(p) for p in (*pool.parameters(), *method.head.parameters())}

    steps(task, 5)
    for name, t in pool.named_parameters():
        assert torch.equal(t.detach()[:, :3], old[name]), name  # old rows bit-identical
        assert not t.detach()[:, 6:].any(), name
    assert all(torch.equal(backbone[k], v) for k, v in method.backbone.state_dict().items())


# --- end to end on the offline world ---------------------------------------------------------

CODA = {
    "name": "coda_prompt",
    "num_components": 30,  # 10 per task, as the paper's 100 over 10 tasks
    "epochs": 3,
    "batch_size": 16,
    "lr": 0.01,  # 39 steps per task instead of ~800: a larger step
    "query_cache": True,  # exact without augmentation
}


@pytest.fixture(scope="module")
def coda_reference(tmp_path_factory):
    """One uninterrupted CODA-Prompt run, with the pool as it was when each task began."""
    trainer = Trainer(build_config(synth_run(CODA, tmp_path_factory.mktemp("coda"))), Console(True))
    method = trainer.method
    backbone = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    began: list[dict[str, torch.Tensor]] = []
    begin_task = method.begin_task

    def recording(task: Task) -> None:
        begin_task(task)
        began.append({n: p.detach().clone() for n, p in method.prompt.named_parameters()})

    method.begin_task = recording
    result = trainer.run()
    return result, method, backbone, began


def test_coda_prompt_beats_finetune_and_forgets_less(coda_reference, finetune_run):
    coda, ft = coda_reference[0], finetune_run
    # Measured: CODA-Prompt FAA 77.8 / FM 12.2; finetune FAA 34.5 / FM 68.0 (chance: 3.3).
    assert coda.metrics["faa"] >= ft.metrics["faa"] + 20
    assert coda.metrics["fm"] <= ft.metrics["fm"] - 20


def test_old_rows_and_backbone_are_untouched_by_later_tasks(coda_reference):
    _, method, backbone, began = coda_reference
    assert all(torch.equal(backbone[k], v) for k, v in method.backbone.state_dict().items())
    final = dict(method.prompt.named_parameters())
    for t, start in enumerate(began):  # task t began with rows [0, 10 t) final
        for name, value in start.items():
            assert torch.equal(final[name].detach()[:, : 10 * t], value[:, : 10 * t]), (t, name)


def test_resumed_run_ends_like_the_uninterrupted_one(coda_reference, tmp_path, monkeypatch):
    """Stopped right after the checkpoint at the end of task 0 and resumed, then stopped again
    mid-task 1 (after 2 of 3 epochs) and resumed: the accuracy matrix is the uninterrupted one."""

    class Stop(Exception):
        pass

    save = checkpoint.save

    def run_until(position: dict, resume: bool) -> None:
        def save_then_stop(path, payload):
            save(path, payload)
            if payload["position"] == position:
                raise Stop

        with monkeypatch.context() as patch, pytest.raises(Stop):
            patch.setattr(checkpoint, "save", save_then_stop)
            if resume:
                promptcl.resume(tmp_path / "r", quiet=True)
            else:
                promptcl.run(synth_run(CODA, tmp_path / "r"), quiet=True)

    run_until({"task": 0, "phase": -1, "epochs_done": 0}, resume=False)  # a task boundary
    run_until({"task": 1, "phase": 0, "epochs_done": 2}, resume=True)  # mid-task
    resumed = promptcl.resume(tmp_path / "r", quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, coda_reference[0].accuracy)


@pytest.mark.parametrize(
    "name", ["coda_prompt_cifar100", "coda_prompt_imagenet-r", "coda_prompt_synth-shapes-10"]
)
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.method.name == "coda_prompt" and config.method.schedule == "coda-cosine"
