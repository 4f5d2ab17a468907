"""STAR-Prompt: where the residual enters, retrieval, the mixture fit, which parameters learn,
exact resume in every phase, and an end-to-end run whose prompts must earn their keep."""

import numpy as np
import pytest
import torch
from interrupt import StopAt
from synth_stream import synth_run
from torch.nn import functional as F

import promptcl
from promptcl.build import build_backbone
from promptcl.config import BackboneConfig, build_config
from promptcl.engine.trainer import CHECKPOINT, Trainer
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Task
from promptcl.methods.star_prompt import StarPrompt, StarPromptConfig
from promptcl.prompts.gaussian import ClassStats
from promptcl.prompts.mixture import fit_diagonal_mixture
from promptcl.prompts.semantic_residual import SIMILARITY_SCALE, SemanticResidualPrompts

NAMES = [f"shape {i}" for i in range(6)]


def tiny_star(**overrides) -> StarPrompt:
    torch.manual_seed(0)
    vit = build_backbone(BackboneConfig(name="tiny-vit"))
    clip = build_backbone(BackboneConfig(name="tiny-clip"))
    config = StarPromptConfig(clip_backbone="tiny-clip", **overrides)
    return StarPrompt(config, vit, NAMES, auxiliary={"clip_backbone": clip})


def test_the_residual_enters_the_attention_values_as_h_plus_msa_plus_w_o_r():
    """Against a hand-written forward of the timm model: every block computes
    h + MSA(LN(h)) + W_o r_l, then the MLP, with r_l = s_{l,c*} p_{l,c*}."""
    method = tiny_star()
    method.begin_task(Task(0, 0, 6, 1))
    method.prompts.set_keys(0, F.normalize(torch.randn(6, method.clip.feature_dim), dim=-1))
    x = torch.rand(3, 3, 32, 32)
    query = method.query(x)
    prompts = method.prompts.prompts(query, seen=6)
    vit = method.backbone.model
    h = vit._pos_embed(vit.patch_embed(method.backbone.normalize(x)))
    for i, block in enumerate(vit.blocks):
        s = method.prompts.similarity(query, i, 6)  # (B, 6)
        c = s.argmax(1)
        r = s[torch.arange(3), c, None] * method.prompts.residuals[i, c]  # (B, D)
        w_o = block.attn.proj.weight  # (D, D)
        h = h + block.attn(block.norm1(h)) + (r @ w_o.T)[:, None]
        h = h + block.mlp(block.norm2(h))
    expected = vit.norm(h)
    torch.testing.assert_close(method.backbone(x, prompts), expected, atol=1e-5, rtol=1e-5)
    # and the prompts do change the forward
    assert not torch.allclose(method.backbone(x), expected, atol=1e-3)


def test_retrieval_picks_the_key_of_the_true_class():
    torch.manual_seed(0)
    F_dim, C = 16, 5
    prompts = SemanticResidualPrompts([0, 1], C, embed_dim=8, query_dim=F_dim)
    keys = torch.eye(F_dim)[:C]  # orthonormal keys
    prompts.set_keys(0, keys)
    with torch.no_grad():
        prompts.modulation.zero_()  # softmax(a) uniform: cos(q * f, k) = cos(q, k)
    query = torch.stack([3.0 * keys[c] + 0.1 * torch.randn(F_dim) for c in (2, 0, 4)])
    for i in range(2):
        s = prompts.similarity(query, i, seen=C)
        assert s.argmax(1).tolist() == [2, 0, 4]
        direct = SIMILARITY_SCALE * F.cosine_similarity(query[:, None], keys[None], dim=-1)
        torch.testing.assert_close(s, direct)  # the two-product cosine equals the direct one
    layer = prompts.prompts(query, seen=C)
    for i, layer_index in enumerate([0, 1]):
        s = prompts.similarity(query, i, seen=C)
        expected = s.max(1).values[:, None] * prompts.residuals[i, [2, 0, 4]]
        torch.testing.assert_close(layer.value[layer_index], expected)
    plain = prompts.prompts(query, seen=C, confidence=False)  # r = p_{c*}
    torch.testing.assert_close(plain.value[1], prompts.residuals[1, [2, 0, 4]])
    # classes not seen yet are never picked: with 2 seen classes, the query of class 0 still
    # picks 0 and the others pick among 0 and 1
    early = prompts.similarity(query, 0, seen=2)
    assert early.shape == (3, 2) and early.argmax(1)[1] == 0


def test_the_mixture_fit_recovers_the_means_of_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0] * 6, [8.0] * 6, [-8.0, 8.0] * 3])
    sizes = [60, 90, 150]
    x = torch.cat(
        [m + 0.5 * torch.randn(n, 6, generator=g) for m, n in zip(means, sizes, strict=True)]
    )
    for likelihood in ("official", "exact"):
        weights, fitted, var = fit_diagonal_mixture(x, 3, 200, likelihood, torch.Generator())
        order = [int((fitted - m).norm(dim=1).argmin()) for m in means]
        assert sorted(order) == [0, 1, 2]
        torch.testing.assert_close(fitted[order].float(), means, atol=0.2, rtol=0)
        torch.testing.assert_close(
            weights[order].float(), torch.tensor(sizes) / 300.0, atol=0.01, rtol=0
        )
        torch.testing.assert_close(var[order].float(), torch.full((3, 6), 0.25), atol=0.1, rtol=0)
    # ClassStats' mixture mode: samples of a class come from its components, by weight
    stats = ClassStats(2, 6, "mixture", n_centroids=3)
    labels = torch.cat([torch.zeros(300), torch.ones(100)]).long()
    stats.fit(torch.cat([x, torch.randn(100, 6, generator=g) + 20]), labels, torch.Generator())
    drawn, y = stats.sample([0, 1], 3000, torch.Generator().manual_seed(1))
    assert y.tolist() == [0] * 3000 + [1] * 3000
    near = (drawn[:3000, None] - means[None]).norm(dim=-1).argmin(1)  # (3000,) nearest true mean
    shares = torch.bincount(near, minlength=3) / 3000.0
    torch.testing.assert_close(shares, torch.tensor(sizes) / 300.0, atol=0.03, rtol=0)
    assert (drawn[3000:].mean(0) - 20).abs().max() < 0.2


def test_only_the_current_classes_context_tokens_and_prompts_receive_gradients():
    method = tiny_star()
    method.begin_task(Task(0, 0, 3, 2))
    method.head_backup[:, :-1] = method.head.weight.detach()  # as task 0's second stage ends
    method.begin_task(Task(1, 3, 6, 2))
    batch = Batch(torch.rand(8, 3, 32, 32), torch.tensor([3, 4, 5, 3, 4, 5, 3, 4]), torch.arange(8))
    # current keys at their samples' queries, and past class 0's key at the first sample's
    # query: current classes are picked, and so is a past one (a retrieval error)
    query = method.query(batch.x)
    current = torch.stack([query[batch.y == c][1:].mean(0) for c in (3, 4, 5)])
    keys = torch.cat([query[:1], torch.randn(2, method.clip.feature_dim), current])
    method.prompts.set_keys(0, F.normalize(keys, dim=-1))
    assert (method.prompts.similarity(query, 0, 6, 3).argmax(1)[0] == 0).all()
    method.train()

    method.first_stage_step(batch)["loss"].backward()
    grad = method.context.context.grad.abs().sum((1, 2))
    assert (grad[:3] == 0).all() and (grad[3:] > 0).all()

    method.zero_grad()
    losses = method.training_step(batch)
    assert losses["ortho"] > 0  # past classes exist: the ortho terms act
    losses["loss"].backward()
    for param in (method.prompts.residuals, method.prompts.modulation):
        per_class = param.grad.abs().sum(-1).sum(0)  # (C,)
        assert (per_class[:3] == 0).all() and (per_class[3:] > 0).all()
    head = method.head.weight.grad.abs().sum(1)
    assert (head[:3] == 0).all() and (head[3:] > 0).all()
    assert method.context.context.grad is None  # the second stage leaves the keys alone


def test_the_orthogonality_terms_match_their_formulas():
    method = tiny_star()
    p, v = method.prompts.residuals, method.context.context[:, 0]
    expected = 0.0
    for layer in p:
        cur, old = layer[2:5], layer[:2]
        expected += ((cur.norm(dim=1) ** 2 - 1) ** 2).mean() + ((cur @ old.T) ** 2).mean()
    torch.testing.assert_close(method.prompts.orthogonality(5, 2), expected / len(p))
    torch.testing.assert_close(method.context.orthogonality(2, 5), ((v[2:5] @ v[:2].T) ** 2).mean())
    assert method.prompts.orthogonality(3, 0) == 0 and method.context.orthogonality(0, 3) == 0


def test_the_head_alignment_trains_on_normalised_logits_and_the_next_task_restores_the_backup():
    method = tiny_star()
    method.begin_task(Task(0, 0, 3, 2))
    method.head_backup.normal_()
    method.begin_task(Task(1, 3, 6, 2))
    torch.testing.assert_close(method.head.weight, method.head_backup[:, :-1])
    torch.testing.assert_close(method.head.bias, method.head_backup[:, -1])
    x, y = torch.randn(4, method.backbone.feature_dim), torch.tensor([0, 2, 4, 5])
    z = method.head(x)[:, :6]
    expected = F.cross_entropy(z / (0.1 * (z.norm(dim=-1, keepdim=True) + 1e-7)), y)
    torch.testing.assert_close(method.second_replay_step(Batch(x, y, y))["loss"], expected)


def test_a_clip_without_a_text_tower_or_an_unsupported_prompt_kind_is_refused():
    vit = build_backbone(BackboneConfig(name="tiny-vit"))
    config = StarPromptConfig(clip_backbone="tiny-vit")
    with pytest.raises(ConfigError, match="clip_backbone must be a CLIP"):
        StarPrompt(config, vit, NAMES, auxiliary={"clip_backbone": vit})


# -- runs ----------------------------------------------------------------------------------
STAR = {
    "name": "star_prompt",
    "clip_backbone": "tiny-synth-clip",
    "epochs": 2,
    "batch_size": 32,
    "first_replay_epochs": 2,
    "second_replay_epochs": 1,
    "second_replay_epochs_per_task": 1,
    "replay_samples": 32,
    "first_em_iters": 20,
    "second_em_iters": 20,
}


def final_state(run_dir):
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["method"]


@pytest.fixture(scope="module")
def star_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("star") / "run"
    return promptcl.run(synth_run(STAR, out), quiet=True), final_state(out)


@pytest.mark.parametrize(
    "phase, epoch",
    [("first-stage", 1), ("first-replay", 1), ("train", 1), ("second-replay", 1)],
)
def test_a_run_killed_in_any_phase_resumes_to_the_uninterrupted_result(
    star_reference, tmp_path, phase, epoch
):
    reference, reference_state = star_reference
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        Trainer(build_config(synth_run(STAR, out)), StopAt(1, phase, epoch)).run()
    resumed = promptcl.resume(out, quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, reference.accuracy)
    state = final_state(out)
    assert state.keys() == reference_state.keys()
    assert all(torch.equal(state[k], reference_state[k]) for k in state), [
        k for k in state if not torch.equal(state[k], reference_state[k])
    ]


# Long enough for the residual prompts to learn: 8 epochs of 13 steps per task.
LEARNING = {**STAR, "epochs": 8, "batch_size": 16, "lambda_second": 2, "second_replay_lr": 0.01}


def test_star_prompt_learns_and_its_prompts_beat_their_initialisation(tmp_path):
    """Frozen residual prompts still pass CLIP's retrieval to the ViT (a fixed random vector per
    class), so the trained prompts must beat them, not only a ViT without prompts."""
    trained = promptcl.run(synth_run(LEARNING, tmp_path / "trained"), quiet=True)
    frozen = promptcl.run(
        synth_run({**LEARNING, "freeze_prompts": True}, tmp_path / "frozen"), quiet=True
    )
    chance = 100 / 30
    assert trained.metrics["faa"] > 20 * chance
    assert trained.metrics["faa"] > frozen.metrics["faa"] + 2, (
        trained.metrics["faa"],
        frozen.metrics["faa"],
    )
