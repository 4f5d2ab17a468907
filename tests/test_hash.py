"""Hash: shared-pool routing, HGM, HDR, activation counts across checkpoints, end to end."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupt import StopAt
from phase_runner import finish_task
from synth_stream import synth_run
from torch.utils.data import DataLoader, TensorDataset

import promptcl
from promptcl.config import BackboneConfig, build_config, load_config
from promptcl.engine.checkpoint import config_fingerprint, load
from promptcl.engine.trainer import CHECKPOINT, Trainer
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Task
from promptcl.methods.hash_prompt import Hash, HashConfig, activation_entropy
from promptcl.prompts.history import most_activated
from promptcl.registry import backbones

TASKS = [Task(0, 0, 3, 2), Task(1, 3, 6, 2)]


def tiny_method(**overrides) -> Hash:
    """Hash on the random 2-block tiny ViT, 2 tasks of 3 classes; everything short."""
    torch.manual_seed(0)
    backbone = backbones.get("tiny-vit")(BackboneConfig(name="tiny-vit", pretrained=False))
    cfg = dict(
        prompt_layers=[0, 1], batch_size=8, tii_epochs=1, crct_epochs=1, n_centroids=2, **overrides
    )
    return Hash(HashConfig(**cfg), backbone, [f"c{i}" for i in range(6)])


def task_batch(task: Task, n: int = 12) -> Batch:
    g = torch.Generator().manual_seed(task.index)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(task.start, task.end).repeat(n // (task.end - task.start))
    return Batch(x, y, torch.arange(n))


def loader(task: Task) -> DataLoader:
    return DataLoader(TensorDataset(*task_batch(task)), batch_size=4)


def at_task_one(method: Hash, counts: list[int]) -> Hash:
    """Task 0 done with the given activation history, task 1 begun."""
    method.begin_task(TASKS[0])
    method.counts.copy_(torch.tensor(counts))
    method.begin_task(TASKS[1])
    method.train()
    return method


def test_most_activated_set_is_the_top_counts_and_empty_before_any_use():
    assert most_activated(torch.zeros(4, dtype=torch.long), 2).tolist() == [False] * 4
    counts = torch.tensor([3, 9, 0, 9, 1])
    assert most_activated(counts, 2).tolist() == [False, True, False, True, False]
    assert most_activated(torch.tensor([0, 5, 0]), 2).tolist() == [False, True, False]


def test_instance_prompt_is_the_softmax_weighted_sum_of_the_top_k_experts():
    method = tiny_method(pool_size=4, top_k=2, hdr="none")
    method.begin_task(TASKS[0])
    scores = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 4.0]])
    idx, w = method.select(scores)
    assert idx.tolist() == [[1, 2], [3, 0]]
    torch.testing.assert_close(w[0], torch.softmax(torch.tensor([2.0, 1.0]), 0))
    prompts = method.instance_prompts(idx, w)  # (2, layers, L, D)
    expected = w[1, 0] * method.experts[3] + w[1, 1] * method.experts[0]
    torch.testing.assert_close(prompts[1], expected)
    torch.testing.assert_close(
        activation_entropy(torch.tensor([[0.5, 0.5]])), torch.tensor([0.6931]), atol=1e-4, rtol=0
    )


def expert_grads(method: Hash, batch: Batch) -> list[torch.Tensor]:
    method.zero_grad()
    method.training_step(batch)["loss"].backward()
    return [p.grad.clone() for p in method.experts]


def test_hgm_scales_exactly_the_most_activated_experts_gradients_by_beta():
    counts = [5, 0, 9, 1]  # A_t = {2, 0} with hot_experts = top_k = 2
    base = dict(pool_size=4, top_k=2, hdr="none", hgm_mode="grad", hgm_beta=0.25)
    plain = at_task_one(tiny_method(**base, hgm="none"), counts)
    modulated = at_task_one(tiny_method(**base, hgm="top-k"), counts)
    batch = task_batch(TASKS[1], n=24)
    g_plain, g_mod = expert_grads(plain, batch), expert_grads(modulated, batch)
    for e in range(4):
        assert g_plain[e].abs().sum() > 0, f"expert {e} was never selected; the test needs all"
        if e in (0, 2):
            assert torch.equal(g_mod[e], 0.25 * g_plain[e])
        else:
            assert torch.equal(g_mod[e], g_plain[e])


def test_hgm_lr_mode_gives_the_most_activated_experts_beta_times_the_lr():
    method = at_task_one(tiny_method(pool_size=4, top_k=2, hgm_beta=0.5, lr=0.01), [5, 0, 9, 1])
    lr_of = {id(p): g["lr"] for g in method.param_groups() for p in g["params"]}
    assert [lr_of[id(p)] for p in method.experts] == [0.005, 0.01, 0.005, 0.01]
    assert lr_of[id(method.routers[1])] == 0.01 and id(method.routers[0]) not in lr_of
    # One Adam step from the same state: the hot experts move by exactly half as much.
    plain = at_task_one(tiny_method(pool_size=4, top_k=2, hgm="none", lr=0.01), [5, 0, 9, 1])
    moves = []
    for m in (method, plain):
        before = [p.detach().clone() for p in m.experts]
        opt = torch.optim.Adam(m.param_groups(), lr=0.01)
        m.training_step(task_batch(TASKS[1], n=24))["loss"].backward()
        opt.step()
        moves.append([p.detach() - b for p, b in zip(m.experts, before, strict=True)])
    for e in range(4):
        factor = 0.5 if e in (0, 2) else 1.0
        torch.testing.assert_close(moves[0][e], factor * moves[1][e], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_hgm_grad_mode_scales_sgd_steps_by_beta_and_adam_undoes_it(optimizer):
    """With SGD, grad-mode HGM makes the hot experts' step exactly beta times the plain one. Why
    ``hgm_mode: lr`` is the default: Adam divides each gradient by its own running scale, so the
    same modulation moves the experts as if there were no HGM (only Adam's epsilon, here made
    negligible, and global-norm clipping let the scale through)."""
    counts = [5, 0, 9, 1]  # A_t = {2, 0}
    base = dict(pool_size=4, top_k=2, hdr="none", hgm_mode="grad", hgm_beta=0.25, lr=0.01)
    moved = []
    for hgm in ("top-k", "none"):
        method = at_task_one(tiny_method(**base, hgm=hgm), counts)
        before = torch.stack(list(method.experts)).detach().clone()
        if optimizer == "sgd":
            opt, steps = torch.optim.SGD(method.param_groups(), lr=0.01), 1
        else:
            opt, steps = torch.optim.Adam(method.param_groups(), lr=0.01, eps=1e-30), 3
        for _ in range(steps):
            opt.zero_grad()
            method.training_step(task_batch(TASKS[1], n=24))["loss"].backward()
            opt.step()
        moved.append(torch.stack(list(method.experts)).detach() - before)
    assert all(moved[1][e].abs().sum() > 0 for e in range(4))  # every expert was selected
    for e in range(4):
        factor = 0.25 if optimizer == "sgd" and e in (0, 2) else 1.0
        torch.testing.assert_close(moved[0][e], factor * moved[1][e], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("delta", [0.0, 0.1, 0.25, 1e3])
def test_hdr_subtracts_delta_from_the_most_activated_experts_scores(delta):
    """Router 1 scores (1.0, 0.8, 0.5, 1.1) for every input; A_1 = {0, 3} (counts 50, 0, 0, 40).
    Penalised by delta, the Top-2 is {3, 0} below delta = 0.2, {3, 1} between 0.2 and 0.3 (the
    default 0.25: a hot expert that fits much better still wins), and {1, 2} far above."""
    method = at_task_one(tiny_method(pool_size=4, top_k=2, hdr_delta=delta), [50, 0, 0, 40])
    D = method.routers[1].shape[0]
    with torch.no_grad():
        method.routers[1].zero_()
        method.routers[1][0] = torch.tensor([1.0, 0.8, 0.5, 1.1])
    u = torch.zeros(3, D)
    u[:, 0] = D**0.5  # scores = u W / sqrt(D) = row 0 of W
    tasks = torch.ones(3, dtype=torch.long)
    plain, penalised = method.scores(u, tasks, penalised=False), method.scores(u, tasks)
    torch.testing.assert_close(penalised, plain - delta * torch.tensor([1.0, 0, 0, 1.0]))
    chosen = set(method.select(penalised)[0][0].tolist())
    assert chosen == ({3, 0} if delta < 0.2 else {3, 1} if delta < 0.3 else {1, 2})


@pytest.mark.parametrize("router_choice", ["tii", "mean"])
def test_hdr_spread_scale_measures_delta_in_each_samples_score_spread(router_choice):
    """``hdr_scale: spread``: the penalty is delta x std_e(s) of the sample's own scores, so a
    router scaled by 0.01 (a new one) selects the same experts as the grown one; the absolute
    penalty shuts the hot experts out of the small router's choice."""
    counts = [50, 0, 0, 40]  # A_1 = {0, 3}
    spread = at_task_one(tiny_method(pool_size=4, top_k=2, hdr_scale="spread"), counts)
    absolute = at_task_one(tiny_method(pool_size=4, top_k=2), counts)
    u = spread.router_input(task_batch(TASKS[1]).x)
    tasks = None if router_choice == "mean" else torch.ones(len(u), dtype=torch.long)
    with torch.no_grad():
        for method in (spread, absolute):
            for router in method.routers:
                router.copy_(torch.randn_like(router) * 0.5)
    absolute.load_state_dict(spread.state_dict())
    plain = spread.scores(u, torch.ones(len(u), dtype=torch.long), penalised=False)
    if tasks is not None:  # the penalty, exactly
        expected = plain - 0.25 * plain.std(1, keepdim=True) * torch.tensor([1.0, 0, 0, 1])
        torch.testing.assert_close(spread.scores(u, tasks), expected)
    chosen = {}
    for name, method in (("spread", spread), ("absolute", absolute)):
        grown = method.select(method.scores(u, tasks))[0]
        with torch.no_grad():
            for router in method.routers:
                router.mul_(0.01)
        chosen[name] = (grown, method.select(method.scores(u, tasks))[0])
    torch.testing.assert_close(chosen["spread"][0], chosen["spread"][1])
    hot = torch.tensor([0, 3])
    assert torch.isin(chosen["absolute"][1], hot).sum() == 0  # shut out while the router is small
    assert torch.isin(chosen["absolute"][0], hot).any()


def test_without_task_inference_the_routers_scores_are_averaged():
    method = at_task_one(tiny_method(pool_size=4, router_choice="mean"), [5, 0, 9, 1])
    method.eval()
    u = method.router_input(task_batch(TASKS[1]).x)  # (12, D)
    per_task = [method.scores(u, torch.full((len(u),), t)) for t in (0, 1)]
    torch.testing.assert_close(method.scores(u, None), (per_task[0] + per_task[1]) / 2)
    assert method.predict(task_batch(TASKS[1]).x).shape == (12, 6)


def test_counts_record_every_top_k_choice_and_join_the_history_at_the_end_of_the_task():
    method = tiny_method(pool_size=4, top_k=2)
    method.begin_task(TASKS[0])
    method.train()
    batch = task_batch(TASKS[0])
    u = method.router_input(batch.x)  # (12, D)
    w = u[0] - u.mean(0)
    with (
        torch.no_grad()
    ):  # scores (a, -a, a / 2, 0) with a = u.w: Top-2 {0, 2} if a > 0, else {1, 3}
        method.routers[0].zero_()
        method.routers[0][:, 0], method.routers[0][:, 1], method.routers[0][:, 2] = w, -w, w / 2
    positive = int((u @ w > 0).sum())
    assert 0 < positive < 12  # the batch routes both ways
    for _ in range(3):
        method.training_step(batch)
    assert int(method.task_counts.sum()) == 0  # summed when the epoch ends
    method.end_epoch(method.phases(TASKS[0])[0])
    assert int(method.epoch_counts.sum()) == 0 and int(method.counts.sum()) == 0
    negative = 12 - positive
    assert method.task_counts.tolist() == [3 * positive, 3 * negative, 3 * positive, 3 * negative]
    seen = method.task_counts.clone()
    method.eval()
    finish_task(method, TASKS[0], loader(TASKS[0]))
    method.begin_task(TASKS[1])
    assert torch.equal(method.counts, seen) and int(method.task_counts.sum()) == 0
    assert torch.equal(method.history[0], torch.zeros(4, dtype=torch.long))
    assert torch.equal(method.history[1], seen)


def test_drift_compensation_shifts_old_means_by_the_pools_drift_on_new_data():
    method = tiny_method(pool_size=4, top_k=2, drift_compensation=True)
    method.begin_task(TASKS[0])
    method.eval()
    finish_task(method, TASKS[0], loader(TASKS[0]))
    before = method.wtp_stats.means.clone()
    method.begin_task(TASKS[1])
    x = task_batch(TASKS[1]).x
    u, router_0 = method.router_input(x), torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        old = method.routed_features(x, u, router_0)[0]
        for expert in method.experts:  # as if task 1 had trained the shared pool
            expert.add_(0.3 * torch.randn_like(expert))
        drift = (method.routed_features(x, u, router_0)[0] - old).mean(0)  # (F,)
    assert drift.norm() > 1e-3
    method.compensate_drift(loader(TASKS[1]))
    torch.testing.assert_close(method.wtp_stats.means[:3], before[:3] + drift, atol=1e-5, rtol=0)
    assert torch.equal(method.wtp_stats.means[3:], before[3:])  # task 1's own classes untouched


def test_only_experts_current_router_and_head_learn_and_the_backbone_is_unchanged():
    method = tiny_method()
    backbone_before = copy.deepcopy(method.backbone.state_dict())
    for task in TASKS:
        method.begin_task(task)
        method.train()
        method.zero_grad()
        method.training_step(task_batch(task))["loss"].backward()
        with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
        assert {n.split(".")[0] for n in with_grad} == {"experts", "routers", "head"}
        assert {n for n in with_grad if n.startswith("routers")} == {f"routers.{task.index}"}
        method.eval()
        finish_task(method, task, loader(task))
    after = method.backbone.state_dict()
    assert all(torch.equal(backbone_before[k], after[k]) for k in backbone_before)


def test_bad_pool_settings_are_config_errors():
    with pytest.raises(ConfigError, match="top_k 9 exceeds pool_size 8"):
        build_config({"method": {"name": "hash", "top_k": 9}})
    with pytest.raises(ConfigError, match="hdr 'lol' is not one of"):
        build_config({"method": {"name": "hash", "hdr": "lol"}})


# --- end to end on the synthetic benchmark ------------------------------------------------------

HASH = {  # a few epochs and steps on the CPU, hence larger learning rates than the defaults
    "name": "hash",
    "epochs": 2,
    "batch_size": 32,
    "lr": 0.03,
    "tii_lr": 1e-3,
    "tii_ca_lr": 0.005,
    "crct_epochs": 5,
}


@pytest.fixture(scope="module")
def hash_run(tmp_path_factory):
    return promptcl.run(synth_run(HASH, tmp_path_factory.mktemp("hash") / "run"), quiet=True)


def test_hash_beats_finetune_and_forgets_less(hash_run, finetune_run):
    ft = finetune_run
    assert ft.metrics["fm"] > 30  # the lower bound forgets
    assert hash_run.metrics["faa"] >= ft.metrics["faa"] + 20
    assert hash_run.metrics["fm"] <= ft.metrics["fm"] - 15
    assert hash_run.metrics["faa"] > 100 / 30 * 10  # ten times chance over 30 classes


def test_activation_counts_survive_a_mid_task_checkpoint_and_resume(hash_run, tmp_path):
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        Trainer(build_config(synth_run(HASH, out)), StopAt(1, "prompts", 1)).run()
    fingerprint = config_fingerprint(build_config(synth_run(HASH, out)))
    saved = load(out / CHECKPOINT, "hash", fingerprint)
    assert int(saved["method"]["task_counts"].sum()) > 0  # task 1's counts so far were saved
    resumed = promptcl.resume(out, quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, hash_run.accuracy)
    final = load(out / CHECKPOINT, "hash", fingerprint)
    full = load(hash_run.run_dir / CHECKPOINT, "hash", config_fingerprint(hash_run.config))
    for key in ("counts", "history"):
        assert torch.equal(final["method"][key], full["method"][key])
    assert int(full["method"]["counts"].sum()) == 3 * 200 * 2 * 2  # tasks x samples x epochs x K


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet-r", "synth-shapes-10"])
@pytest.mark.parametrize("row", ["_pool-only", "_hdr", "_hgm"])
def test_shipped_ablation_rows_differ_from_the_full_method_only_in_hdr_and_hgm(dataset, row):
    configs = Path(__file__).resolve().parent.parent / "configs"
    full = load_config(configs / f"hash_{dataset}.yaml")
    assert (full.method.name, full.method.hdr, full.method.hgm) == ("hash", "top-k", "top-k")
    hdr, hgm = {
        "_pool-only": ("none", "none"),
        "_hdr": ("top-k", "none"),
        "_hgm": ("none", "top-k"),
    }[row]
    ablation = load_config(configs / f"hash_{dataset}{row}.yaml")
    method = full.method.model_copy(update={"hdr": hdr, "hgm": hgm})
    assert ablation.model_dump() == full.model_copy(update={"method": method}).model_dump()
