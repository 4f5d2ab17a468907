"""SSP on VideoMamba: its size, what it adds at initialisation, its two modules, its mixing."""

from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from promptcl.backbones.base import LayerPrompts
from promptcl.backbones.videomamba import VideoMamba
from promptcl.build import build_run
from promptcl.config import build_config, method_config
from promptcl.engine.progress import Console
from promptcl.engine.trainer import Trainer
from promptcl.methods.base import Batch, Task, trainable
from promptcl.methods.ssp import SSP


def tiny_backbone() -> VideoMamba:
    torch.manual_seed(0)
    return VideoMamba(embed_dim=32, depth=3, image_size=16, patch_size=4, num_frames=4).freeze()


def make_ssp(backbone=None, classes: int = 6, **config) -> SSP:
    cfg = method_config({"name": "ssp", "inner_dim": 16, "attn_dim": 16, "attn_heads": 2, **config})
    ssp = SSP(cfg, backbone or tiny_backbone(), [f"c{i}" for i in range(classes)])
    ssp.begin_task(Task(0, 0, classes, 1))
    return ssp.eval()


def perturb(module: torch.nn.Module) -> None:
    """Move every trainable parameter away from its initialisation (as training would)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=generator))


CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ssp_synth-motion-5.yaml"
CLIP = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def test_ssp_on_videomamba_m_has_the_papers_2_41_m_parameters_plus_the_head():
    backbone = VideoMamba(embed_dim=576, depth=32, image_size=224, patch_size=16)
    ssp = SSP(method_config({"name": "ssp"}), backbone, [f"c{i}" for i in range(101)])
    head = sum(p.numel() for p in ssp.head.parameters())
    ours = sum(p.numel() for p in ssp.parameters()) - head
    frozen = sum(p.numel() for p in backbone.parameters())
    assert ours - frozen == 2_418_850  # specs §2.3: 741,504 + 3 x 558,913 + 31 + 576 (norm_f)
    assert head == 577 * 101  # UCF101


def test_without_slots_ssp_at_initialisation_leaves_the_backbone_unchanged():
    ssp = make_ssp(num_slots=0)
    with torch.no_grad():
        bare = ssp.backbone.pool(ssp.backbone(CLIP))
        torch.testing.assert_close(ssp.features(CLIP), bare, rtol=0, atol=1e-6)


def test_at_initialisation_ssp_adds_only_its_zero_slots():
    """F = 0 and G = 0: the output equals the backbone's with K zero tokens after every frame's
    patches at every block; the slots themselves change the scan (module docstring)."""
    ssp = make_ssp()
    backbone, T = ssp.backbone, CLIP.shape[1]

    def zero_slots(layer, h):
        head, x = backbone.split_frames(h, T)
        if layer == 0:
            x = torch.cat([x, x.new_zeros(*x.shape[:2], 3, x.shape[3])], dim=2)
        x = torch.cat([x[:, :, :16], torch.zeros_like(x[:, :, 16:])], dim=2)
        return backbone.join_frames(head, x)

    with torch.no_grad():
        slotted = backbone(CLIP, LayerPrompts(hook=zero_slots))  # (B, 1 + T (N + K), D)
        torch.testing.assert_close(
            backbone(CLIP, LayerPrompts(hook=ssp.hook(T))), slotted, rtol=0, atol=1e-6
        )
        bare = backbone(CLIP)  # (B, 1 + T N, D)
    patches = backbone.split_frames(slotted, T)[1][:, :, :16]  # the slots left out
    assert (patches - backbone.split_frames(bare, T)[1]).abs().max() > 1e-3  # slots are read


@pytest.mark.parametrize("switch", ["ifg", "ifs"])
def test_each_module_acts_on_the_output_once_trained(switch):
    on = make_ssp()
    perturb(on)
    off = make_ssp(**{switch: False})
    off.load_state_dict(on.state_dict())
    with torch.no_grad():
        tokens = [m.backbone(CLIP, LayerPrompts(hook=m.hook(4))) for m in (on, off)]
    assert (tokens[0] - tokens[1]).abs().max() > 1e-3


def test_ifs_slots_read_the_last_patch_of_every_frame_across_frames():
    """Changing one frame's last patch changes the output through the slots of the other frames
    only when IFS is on (the slots are written from s = X[:, :, N-1] by attention over frames)."""
    results = {}
    for ifs in (True, False):
        ssp = make_ssp(ifs=ifs, ifg=False)
        perturb(ssp)
        seen: list[torch.Tensor] = []
        handle = ssp.spread[0].register_forward_hook(
            lambda module, args, out, seen=seen: seen.append(args[0].detach())
        )
        with torch.no_grad():
            ssp.features(CLIP)
        handle.remove()
        results[ifs] = seen
    assert len(results[True]) == 2 and results[False] == []  # blocks 1 and 2 of 3
    assert results[True][0].shape == (2, 4, 32)  # (B, T, D): one summary per frame


def test_cutmix_boxes_span_every_frame_and_targets_stay_in_the_tasks_classes():
    ssp = make_ssp(classes=6, mixup=0.0, cutmix=1.0)
    ssp.train()
    ssp.begin_task(Task(1, 3, 6, 2))  # the second task: classes 3..5
    captured = {}

    def spy(x):
        captured["x"] = x
        return torch.zeros(len(x), 32, requires_grad=True)  # (B, F)

    ssp.features = spy
    x = torch.rand(4, 4, 3, 16, 16)
    losses = ssp.training_step(Batch(x, torch.tensor([3, 4, 5, 3]), torch.arange(4)))
    changed = (captured["x"] != x).any(dim=2)  # (B, T, H, W): pixels replaced by CutMix
    assert changed.any()
    assert (changed == changed[:, :1]).all()  # the same box in every frame
    assert torch.isfinite(losses["loss"])


@pytest.mark.parametrize("classifier", ["prototypes", "prototypes+frozen"])
def test_prototypes_are_class_means_of_the_prompted_features_scored_by_cosine(classifier):
    """``prototypes+frozen`` puts the frozen backbone's features (no slots) before them (APER)."""
    ssp = make_ssp(classes=4, classifier=classifier)
    perturb(ssp)
    clips = torch.rand(6, 4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    ssp.end_task(ssp.task, DataLoader(TensorDataset(clips, labels), batch_size=4))
    with torch.no_grad():
        features, logits = ssp.features(clips), ssp.predict(clips)
        if classifier == "prototypes+frozen":
            features = torch.cat([ssp.backbone.encode(clips), features], dim=-1)
    means = torch.stack([features[labels == c].mean(0) for c in (0, 1)])
    torch.testing.assert_close(ssp.prototypes[:2], means)
    assert (ssp.prototypes[2:] == 0).all()  # classes without data get no prototype
    cosine = torch.nn.functional.cosine_similarity(features[:, None], means[None], dim=-1)
    torch.testing.assert_close(logits[:, :2], cosine)


def test_with_prototypes_the_head_still_trains_the_modules():
    """The prototypes score the test clips; training still goes through the linear head."""
    ssp = make_ssp(classifier="prototypes", mixup=0.0, cutmix=0.0).train()
    ssp.training_step(Batch(CLIP, torch.tensor([0, 1]), torch.arange(2)))["loss"].backward()
    assert ssp.head.weight.grad.abs().sum() > 0
    assert ssp.inner.local.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("classifier", "trained"),
    [
        ("linear", {"head.weight", "head.bias", "feature_scale"}),
        ("prototypes", set()),
        ("prototypes+frozen", set()),
    ],
)
def test_first_task_adaptation_stops_the_modules_after_the_first_task(classifier, trained):
    """And with prototypes also the head and feature scale: they would move the old classes'
    features away from their prototypes."""
    ssp = make_ssp(classes=4, adapt="first_task", classifier=classifier)
    assert {"inner.up.weight", "gammas", "feature_scale"} < {
        n for n, p in ssp.named_parameters() if p.requires_grad
    }
    ssp.begin_task(Task(1, 2, 4, 2))
    assert {n for n, p in ssp.named_parameters() if p.requires_grad} == trained


def synth_motion_run(out, **method) -> dict:
    """``configs/ssp_synth-motion-5.yaml`` cut to one task of 10 classes, 10 clips a class, with
    the paper's trained head."""
    config = yaml.safe_load(CONFIG.read_text())
    config["data"] |= {"task_sizes": [10], "subsample": 10}
    config["method"] |= {"epochs": 3, "classifier": "linear", **method}
    config["output"] = {"dir": str(out), "checkpoint": False}
    return config


def test_ssp_learns_motion_on_the_shipped_backbone(tmp_path):
    """SynthMotion's continual classes tell motions apart: well above chance (10 %)."""
    result = Trainer(build_config(synth_motion_run(tmp_path)), Console(quiet=True)).run()
    assert result.metrics["faa"] > 40


def test_trained_ssp_modules_fit_what_frozen_ones_cannot(tmp_path):
    """On one batch of 16 training clips, 25 AdamW steps (lr 3e-3, the config's loss): the trained SSP
    modules take the loss well below the same steps with them frozen at initialisation (the
    head and the feature scale train in both). What they earn on test clips needs more data
    than a test can afford: ``benchmarks/ssp_synth.py`` measures it."""
    config = build_config(synth_motion_run(tmp_path))
    losses = {}
    for frozen in (False, True):
        torch.manual_seed(0)
        run = build_run(config)
        m, scenario = run.method, run.scenario
        m.config.freeze_prompts = frozen
        m.begin_task(Task(0, *scenario.class_range(0), 1))
        shuffled = torch.Generator().manual_seed(0)
        loader = DataLoader(scenario.train_view(0), 16, shuffle=True, generator=shuffled)
        x, y, index = next(iter(loader))
        groups = trainable(m.param_groups(), m.frozen_parameters())
        optimizer = torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.05)
        m.train()
        for _ in range(25):
            loss = m.training_step(Batch(x, y, index))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses[frozen] = loss.item()
    assert losses[False] < 0.8 * losses[True]  # measured: 0.63 against 1.00
