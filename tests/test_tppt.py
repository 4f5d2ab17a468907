"""TPPT: the loss terms on hand-made cases, which parameters learn, empty prompts = zero-shot CLIP,
and an end-to-end run on the reduced stream."""

import math

import numpy as np
import pytest
import torch
from interrupt import StopAt
from synth_stream import synth_run

import promptcl
from promptcl.build import build_backbone
from promptcl.config import BackboneConfig, build_config
from promptcl.engine.trainer import CHECKPOINT, Trainer
from promptcl.errors import ConfigError
from promptcl.methods.base import Batch, Task
from promptcl.methods.clip_zeroshot import ClipZeroShot, ZeroShotConfig
from promptcl.methods.tppt import (
    Tppt,
    TpptConfig,
    contrastive_text_to_image,
    diversity_regulariser,
    relational_regulariser,
)

NAMES = [f"shape {i}" for i in range(6)]


def tiny_tppt(**overrides) -> Tppt:
    torch.manual_seed(0)
    clip = build_backbone(BackboneConfig(name="tiny-clip"))
    config = {"num_components": 6, "layers": [0, 1], **overrides}
    return Tppt(TpptConfig(**config), clip, NAMES)


def test_the_contrastive_term_by_hand_on_a_3x2_batch():
    unit = lambda deg: [math.cos(math.radians(deg)), math.sin(math.radians(deg))]  # noqa: E731
    anchors = torch.tensor([unit(0), unit(90), unit(0)])  # w_{y_i}: samples 0 and 2 share a class
    images = torch.tensor([unit(10), unit(80), unit(200)])  # z_i
    s = 2.0
    expected = 0.0
    for i in range(3):
        sims = [
            s * sum(a * b for a, b in zip(anchors[i], images[j], strict=True)) for j in range(3)
        ]
        expected += -math.log(math.exp(sims[i]) / sum(math.exp(v) for v in sims))
    got = contrastive_text_to_image(anchors, images, s)
    assert got.item() == pytest.approx(expected / 3, rel=1e-6)


def test_the_diversity_term_is_zero_for_orthogonal_anchors_and_grows_as_they_align():
    values = []
    for angle in (90, 60, 30, 10, 0):  # the angle between anchors 0 and 1
        a = math.radians(angle)
        anchors = torch.tensor([[1.0, 0, 0], [math.cos(a), math.sin(a), 0], [0, 0, 1.0]])
        values.append(diversity_regulariser(anchors).item())
    assert values[0] == pytest.approx(0, abs=1e-12)
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] == pytest.approx(2 / 6)  # one aligned pair: cos 1, counted twice of 6
    # the margin allows cosines up to it
    anchors = torch.tensor([[1.0, 0], [math.cos(1.0), math.sin(1.0)]])  # cos = 0.54
    assert diversity_regulariser(anchors, margin=0.6).item() == 0
    # the relational reading: zero at the reference, growing as the anchors move away from it
    reference = torch.eye(3)
    moved = [relational_regulariser(reference + t * torch.tensor([[0, 1.0, 0]] * 3), reference)
             for t in (0.0, 0.2, 0.5)]  # fmt: skip
    assert moved[0] == 0 and moved[0] < moved[1] < moved[2]


def test_with_empty_prompts_tppt_v_gives_the_logits_of_zero_shot_clip():
    method = tiny_tppt(layers=[])
    method.begin_task(Task(0, 0, 6, 1))
    zero_shot = ClipZeroShot(ZeroShotConfig(), method.backbone, NAMES)
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(method.predict(x), zero_shot.predict(x))
    with_prompts = tiny_tppt()
    with_prompts.begin_task(Task(0, 0, 6, 1))
    assert not torch.allclose(with_prompts.predict(x), zero_shot.predict(x), atol=1e-4)


def test_only_the_current_tasks_prompts_receive_gradients():
    method = tiny_tppt(variant="VT")
    method.begin_task(Task(0, 0, 3, 2))
    method.end_task(Task(0, 0, 3, 2), [])
    method.begin_task(Task(1, 3, 6, 2))
    method.train()
    batch = Batch(torch.rand(6, 3, 32, 32), torch.tensor([3, 4, 5, 3, 4, 5]), torch.arange(6))
    losses = method.training_step(batch)
    assert {"ce", "tpcl", "rdr"} <= losses.keys()
    losses["loss"].backward()
    assert all(p.grad is None for p in method.backbone.parameters())
    text = method.text_prompts.grad.abs().flatten(1).sum(1)  # (tasks,)
    assert text[0] == 0 and text[1] > 0
    for param in (method.pool.components, method.pool.keys, method.pool.attention):
        per_row = param.grad.abs().transpose(0, 1).flatten(1).sum(1)  # (M,)
        assert (per_row[:3] == 0).all() and (per_row[3:] > 0).all()
    assert {id(p) for g in method.param_groups() for p in g["params"]} == {
        id(p) for p in method.parameters() if p.requires_grad
    }


def test_tppt_vt_keeps_old_anchors_and_moves_the_new_ones():
    method = tiny_tppt(variant="VT")
    first = Task(0, 0, 3, 2)
    method.begin_task(first)
    with torch.no_grad():
        method.text_prompts[0].normal_()
    method.end_task(first, [])
    old = method.anchors[:3].clone()
    assert not torch.allclose(old, method.zero_shot[:3], atol=1e-4)  # the prompts moved them
    method.begin_task(Task(1, 3, 6, 2))
    with torch.no_grad():
        method.text_prompts[1].normal_()
    method.end_task(Task(1, 3, 6, 2), [])
    torch.testing.assert_close(method.anchors[:3], old)


def test_odd_prompt_lengths_and_a_backbone_without_text_are_refused():
    with pytest.raises(ConfigError, match="prompt_length must be even"):
        tiny_tppt(prompt_length=5)
    vit = build_backbone(BackboneConfig(name="tiny-vit"))
    with pytest.raises(ConfigError, match="needs a CLIP"):
        Tppt(TpptConfig(), vit, NAMES)


# All 100 classes of synth-shapes-10 in 5 tasks, 10 training images per class: the reduced
# 30-class stream is too easy for CLIP (zero-shot 90%) to show anything.
STREAM = {"name": "synth-shapes-10", "subsample": 10, "task_sizes": [20] * 5, "augment": False}


def run_on_clip(method: dict, out) -> float:
    config = synth_run(method, out)
    config["data"] = STREAM
    config["backbone"] = {"name": "tiny-synth-clip"}
    return promptcl.run(config, quiet=True).metrics["faa"]


@pytest.fixture(scope="module")
def zero_shot_faa(tmp_path_factory):
    return run_on_clip({"name": "clip_zeroshot"}, tmp_path_factory.mktemp("zero-shot"))


@pytest.mark.parametrize("variant", ["V", "VT"])
def test_tppt_beats_zero_shot_clip_and_its_frozen_prompts(variant, zero_shot_faa, tmp_path):
    method = {"name": "tppt", "variant": variant, "epochs": 5, "batch_size": 16, "lr": 0.01}
    method["num_components"] = 60
    trained = run_on_clip(method, tmp_path / "trained")
    frozen = run_on_clip({**method, "freeze_prompts": True}, tmp_path / "frozen")  # nothing trains
    # measured: V 66.0, frozen 64.95; VT 66.35, frozen 65.05; zero-shot 64.2
    assert trained > zero_shot_faa + 1 and trained > frozen + 0.5, (trained, frozen, zero_shot_faa)


def test_a_tppt_vt_run_killed_mid_task_resumes_to_the_uninterrupted_result(tmp_path):
    method = {"name": "tppt", "variant": "VT", "epochs": 2, "batch_size": 16, "num_components": 30}

    def config(out):
        c = synth_run(method, out)
        c["backbone"] = {"name": "tiny-synth-clip"}
        return build_config(c)

    reference = promptcl.run(config(tmp_path / "reference"), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tmp_path / "killed"), StopAt(1, "train", 1)).run()
    resumed = promptcl.resume(tmp_path / "killed", quiet=True)
    np.testing.assert_array_equal(resumed.accuracy, reference.accuracy)
    saved = [torch.load(d / CHECKPOINT, weights_only=True)["method"] for d in
             (tmp_path / "reference", tmp_path / "killed")]  # fmt: skip
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
