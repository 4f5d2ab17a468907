"""The offline world: shipped backbones load without a network, and the benchmark is neither
trivial nor hopeless for them (benchmarks/offline_world.py measures the same with full margins)."""

import socket

import pytest
import torch

import promptcl
from promptcl.components import backbones
from promptcl.config import BackboneConfig


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def run(tmp_path, name, method, backbone, **data):
    config = {
        "data": {"name": "synth-shapes-10", "augment": False, **data},
        "backbone": backbone,
        "method": method,
        "output": {"dir": str(tmp_path / name)},
    }
    return promptcl.run(config, quiet=True).metrics["faa"]


@pytest.mark.parametrize("name", ["tiny-synth-vit", "tiny-synth-clip"])
def test_shipped_weights_load_without_network(no_network, name):
    trained = backbones.get(name)(BackboneConfig(name=name))
    random = backbones.get(name)(BackboneConfig(name=name, pretrained=False))
    x = torch.rand(2, 3, 32, 32)
    assert trained.encode(x).shape == (2, trained.feature_dim)
    assert not torch.allclose(trained.encode(x), random.encode(x))


def test_pretrained_vit_beats_random_weights(tmp_path):
    pretrained = run(tmp_path, "a", {"name": "simplecil"}, {"name": "tiny-synth-vit"})
    random = run(tmp_path, "b", {"name": "simplecil"}, {"name": "tiny-synth-vit", "pretrained": False})
    assert pretrained >= 3 * random  # the benchmark script measures 20x


def test_clip_zero_shot_on_unseen_captions_beats_chance(tmp_path):
    faa = run(tmp_path, "z", {"name": "clip_zeroshot"}, {"name": "tiny-synth-clip"})
    assert faa >= 3 * 1.0  # 100 classes: chance is 1%; the benchmark script shows >= 5x


def test_pretrain_reproduces_useful_weights_on_a_short_schedule(tmp_path):
    from promptcl.engine.progress import Console
    from promptcl.pretrain import pretrain

    out = tmp_path / "vit.safetensors"
    scores = pretrain("vit", out, epochs=2, per_class=20, console=Console(quiet=True))
    assert scores["test_accuracy"] > 100 / 156 * 3  # 156 pretraining classes
    sliced = {"task_sizes": [10, 10], "subsample": 20}
    short = run(tmp_path, "s", {"name": "simplecil"}, {"name": "tiny-synth-vit", "weights": str(out)}, **sliced)
    random = run(tmp_path, "r", {"name": "simplecil"}, {"name": "tiny-synth-vit", "pretrained": False}, **sliced)
    assert short > random + 5
