"""The one place where a run's parts are assembled from its config.

``build_run`` seeds the run, then builds, in this order (the order fixes the random streams):
the backbone, the scenario (both views of the dataset, read through the backbone's
``Preprocessing``), the method's auxiliary backbones and the method. The trainer, ``promptcl
bench``, ``promptcl pretrain`` and the benchmarks build their parts here; capabilities are checked
here, before anything trains: the dataset's modality against the backbone's and the method's, a
method that needs a text tower against the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptcl.backbones.base import Backbone
from promptcl.config import BackboneConfig, DataConfig, RunConfig
from promptcl.data.base import Preprocessing
from promptcl.data.scenario import Scenario
from promptcl.engine.seeding import seed_everything
from promptcl.errors import ConfigError
from promptcl.methods.base import Method
from promptcl.registry import backbones, datasets, methods


@dataclass
class RunParts:
    """What a run is made of."""

    config: RunConfig
    backbone: Backbone
    preprocessing: Preprocessing
    scenario: Scenario
    method: Method


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """A frozen backbone from its preset (``promptcl list`` shows them), run on clips through a
    frame encoder when ``cfg.frame_encoder`` asks for one."""
    backbone = backbones.get(cfg.name)(cfg)
    if cfg.frame_encoder is None:
        return backbone
    from promptcl.backbones.video import FrameEncoder

    return FrameEncoder(backbone, cfg.frame_encoder, cfg.spatial_frames, cfg.grid_size)


def preprocessing(backbone: Backbone, data: DataConfig) -> Preprocessing:
    """How the run's inputs are made for ``backbone`` (its input size, the run's augmentation)."""
    return Preprocessing(backbone.image_size, data.augment, data.crop_scale)


def build_scenario(config: RunConfig, pre: Preprocessing) -> Scenario:
    """The class-incremental stream: the dataset through ``pre``, and its plain (test-time) view."""
    build_data = datasets.get(config.data.name)
    data = build_data(config.data, pre, config.seed)
    plain = build_data(config.data, pre.plain(), config.seed)
    return Scenario.from_config(data, config.data, config.seed, train_eval=plain.train)


def check_capabilities(config: RunConfig, backbone: Backbone, scenario: Scenario) -> None:
    """The dataset, backbone and method must fit together; each mismatch says what to change."""
    cls = methods.get(config.method.name)
    data, modality = config.data.name, scenario.data.modality
    if backbone.modality != modality:
        fix = (
            "set backbone.frame_encoder (frame-mean, frame-max or frame-grid) to run it on clips"
            if modality == "video"
            else f"choose an image backbone (see `promptcl list`) or a {backbone.modality} dataset"
        )
        raise ConfigError(
            f"dataset {data!r} yields {modality}s, but backbone {config.backbone.name!r} takes "
            f"{backbone.modality}s: {fix}"
        )
    if modality not in cls.modalities:
        raise ConfigError(
            f"method {config.method.name!r} handles {' and '.join(sorted(cls.modalities))} "
            f"inputs, not the {modality}s of dataset {data!r}"
        )
    if cls.needs_text and not backbone.supports_text:
        raise ConfigError(
            f"method {config.method.name!r} needs a backbone with a text tower (a CLIP preset, "
            f"e.g. tiny-synth-clip or clip-vit-b16), not {config.backbone.name!r}"
        )


def build_method(
    config: RunConfig, backbone: Backbone, class_names: list[str], device: torch.device
) -> Method:
    """The method with its auxiliary backbones (built frozen from their presets, by role)."""
    cls = methods.get(config.method.name)
    auxiliary = {
        role: build_backbone(getattr(config.method, role)) for role in cls.auxiliary_backbones
    }
    extra = {"auxiliary": auxiliary} if auxiliary else {}  # only methods that declare roles
    return cls(config.method, backbone, class_names, **extra).to(device)


def build_run(config: RunConfig, device: torch.device | str = "cpu") -> RunParts:
    """Every part of the run ``config`` describes, seeded by ``config.seed``."""
    seed_everything(config.seed)
    backbone = build_backbone(config.backbone)
    pre = preprocessing(backbone, config.data)
    scenario = build_scenario(config, pre)
    check_capabilities(config, backbone, scenario)
    method = build_method(config, backbone, scenario.class_names(), torch.device(device))
    return RunParts(config, backbone, pre, scenario, method)
