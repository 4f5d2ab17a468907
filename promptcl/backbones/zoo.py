"""Named backbone presets, registered in ``promptcl.registry.backbones``.

Each preset is one ``Preset`` row; one loader per family (timm, open_clip) turns a row and a
``BackboneConfig`` into a frozen ``Backbone``. Where the weights come from:

- ``backbone.pretrained: false``: random initialisation.
- ``backbone.weights: /path/to/file``: that local file (a timm / open_clip checkpoint of the
  underlying model: .safetensors, .pth/.bin, or for timm also Google's original .npz).
- otherwise the weight file shipped in ``promptcl/backbones/weights/`` if the preset names one,
  else the hub (timm / open_clip download), else (the tiny test presets) random initialisation:
  ``pretrained`` has no effect on ``tiny-vit`` / ``tiny-clip`` unless ``weights`` is given.
- VideoMamba presets (``promptcl/backbones/videomamba.py``) are never downloaded: their official
  file (``tag``) must be fetched by hand and given as ``backbone.weights``; an error says where.

timm and open_clip are imported only when a backbone is built, so listing presets stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from promptcl.backbones.base import Backbone
from promptcl.backbones.packed import is_packed, load_packed
from promptcl.config import BackboneConfig
from promptcl.errors import ConfigError, WeightsError
from promptcl.registry import backbones

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Preset:
    """One named backbone.

    family:    "timm" (``PromptedViT``), "open_clip" (``PromptedCLIP``) or "videomamba"
               (``VideoMamba``, promptcl's own module).
    arch:      timm model name / open_clip model name / "videomamba".
    tag:       pretrained tag on the hub (timm ``arch.tag``, open_clip ``pretrained=tag``; for
               VideoMamba the official file name in MODEL_ZOO.md, downloaded by hand);
               None: the preset has no downloadable weights.
    packaged:  file name in ``promptcl/backbones/weights/`` shipped with promptcl (safetensors).
    overrides: architecture overrides: timm ``create_model`` kwargs / open_clip model-config keys /
               ``VideoMamba`` arguments.
    quick_gelu: open_clip only; OpenAI's CLIP weights were trained with QuickGELU.
    """

    family: Literal["timm", "open_clip", "videomamba"]
    arch: str
    tag: str | None = None
    packaged: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    quick_gelu: bool = False
    about: str = ""


_TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
_TINY_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
    text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=4, layers=2),
)

# VideoMamba (Li et al., ECCV 2024): Ti / S / M, patch 16, 224 px, 8 frames.
_VIDEOMAMBA = dict(image_size=224, patch_size=16, num_frames=8)

# The small backbones pretrained by promptcl itself on the synthetic world (`promptcl pretrain`).
_SYNTH_VIT = dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3)
_SYNTH_CLIP = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=32, patch_size=8, width=96, layers=6, head_width=32),
    text_cfg=dict(context_length=24, vocab_size=49408, width=64, heads=4, layers=3),
)
# patch 8 (4 x 4 patches a frame, as the synthetic ViTs): at patch 16 SSP's 3 slots a frame were
# 3 of every 7 tokens (the paper's 3 of 199) and cost more than SSP earned
_SYNTH_VIDEOMAMBA = dict(embed_dim=64, depth=4, image_size=32, patch_size=8, num_frames=8)

PRESETS: dict[str, Preset] = {
    "vit-b16-sup21k": Preset(
        "timm", "vit_base_patch16_224", "orig_in21k",
        about="ViT-B/16, Google's original ImageNet-21k checkpoint (L2P, DualPrompt, HiDe-Prompt)",
    ),
    "vit-b16-in21k": Preset(
        "timm", "vit_base_patch16_224", "augreg_in21k",
        about="ViT-B/16, AugReg ImageNet-21k (mammoth --pretrain_type in21k)",
    ),
    "vit-b16-in21k-ft-in1k": Preset(
        "timm", "vit_base_patch16_224", "augreg_in21k_ft_in1k",
        about="ViT-B/16, AugReg ImageNet-21k fine-tuned on 1k (CODA-Prompt, mammoth default)",
    ),
    "clip-vit-b16": Preset(
        "open_clip", "ViT-B-16", "openai", quick_gelu=True, about="OpenAI CLIP ViT-B/16"
    ),
    "clip-vit-l14": Preset(
        "open_clip", "ViT-L-14", "openai", quick_gelu=True,
        about="OpenAI CLIP ViT-L/14 (STAR-Prompt default)",
    ),
    "tiny-vit": Preset(
        "timm", "vit_tiny_patch16_224", overrides=_TINY_VIT,
        about="random 2-block ViT for tests (32 px, patch 8, width 64); no pretrained weights",
    ),
    "tiny-clip": Preset(
        "open_clip", "ViT-B-16", overrides=_TINY_CLIP,
        about="random 2-block CLIP for tests (32 px, patch 8, width 64, context 32); no weights",
    ),
    "tiny-synth-vit": Preset(
        "timm", "vit_tiny_patch16_224", packaged="tiny-synth-vit.safetensors", overrides=_SYNTH_VIT,
        about="6-block ViT (32 px, patch 8, width 96) pretrained on SynthShapes' pretraining split",
    ),
    "tiny-synth-clip": Preset(
        "open_clip", "ViT-B-16", packaged="tiny-synth-clip.safetensors", overrides=_SYNTH_CLIP,
        about="6-block CLIP (32 px, patch 8, width 96) trained on SynthShapes pretraining captions",
    ),
    "videomamba-ti": Preset(
        "videomamba", "videomamba", "videomamba_t16_k400_f8_res224.pth",
        overrides=dict(embed_dim=192, depth=24, **_VIDEOMAMBA),
        about="VideoMamba-Ti (video), K400 8 frames; official file, downloaded by hand",
    ),
    "videomamba-s": Preset(
        "videomamba", "videomamba", "videomamba_s16_k400_f8_res224.pth",
        overrides=dict(embed_dim=384, depth=24, **_VIDEOMAMBA),
        about="VideoMamba-S (video), K400 8 frames; official file, downloaded by hand",
    ),
    "videomamba-m": Preset(
        "videomamba", "videomamba", "videomamba_m16_k400_mask_ft_f8_res224.pth",
        overrides=dict(embed_dim=576, depth=32, **_VIDEOMAMBA),
        about="VideoMamba-M (video), K400 masked-pretrained + fine-tuned, 8 frames (SSP's)",
    ),
    "tiny-synth-videomamba": Preset(
        "videomamba", "videomamba", packaged="tiny-synth-videomamba.safetensors",
        overrides=_SYNTH_VIDEOMAMBA,
        about="4-block VideoMamba (video, 32 px, patch 8, width 64) pretrained on SynthMotion",
    ),
}  # fmt: skip

Source = Path | str | None  # a local file, a hub tag, or None for random weights


def build_preset(name: str, preset: Preset, cfg: BackboneConfig) -> Backbone:
    """Build the preset's model with the weights ``cfg`` asks for, wrap it and freeze it."""
    if cfg.activation_checkpointing and preset.family != "videomamba":
        raise ConfigError(
            f"backbone.activation_checkpointing applies to VideoMamba presets; {name!r} is a "
            f"{preset.family} model: drop the setting"
        )
    source = _weights_source(name, preset, cfg)
    if preset.family == "videomamba":  # promptcl's own module: its errors name the fix
        from promptcl.backbones import videomamba

        return videomamba.build(
            name,
            preset.overrides,
            source,
            activation_checkpointing=cfg.activation_checkpointing,
        )
    try:
        model = _CREATE[preset.family](preset, source)
    except Exception as err:
        if source is None:
            raise
        where, how = _hub_help(preset)
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        if isinstance(source, Path):
            raise WeightsError(
                f"backbone {name!r}: could not load the weight file {source} ({reason}). It must "
                f"be a checkpoint of {preset.family} model {preset.arch!r}"
                + (f", e.g. the file {where}" if where else "")
            ) from err
        raise WeightsError(
            f"backbone {name!r}: could not download the pretrained weights ({reason}). Without "
            f"internet, download them on a machine with internet (`{how}`, or the file {where}), "
            "copy the file here and set `backbone.weights: /path/to/file`; or set "
            "`backbone.pretrained: false` for random weights."
        ) from err
    return _wrap(preset, model).freeze()


def _weights_source(name: str, preset: Preset, cfg: BackboneConfig) -> Source:
    if cfg.weights is not None:
        if not cfg.pretrained:
            raise ConfigError(
                f"backbone.weights is set ({cfg.weights}) but backbone.pretrained is false: set "
                "pretrained: true to load the file, or drop weights for random initialisation"
            )
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            where, how = _hub_help(preset)
            hint = (
                f" (download it on a machine with internet: `{how}`, or the file {where})"
                if how
                else ""
            )
            raise WeightsError(
                f"backbone.weights: {path} does not exist. Put the weight file of {name!r} there"
                f"{hint} or fix the path; or set `backbone.pretrained: false` for random weights."
            )
        return path
    if not cfg.pretrained:
        return None
    if preset.packaged is not None:
        path = WEIGHTS_DIR / preset.packaged
        if not path.is_file():
            raise WeightsError(
                f"the weights shipped with promptcl for {name!r} are missing ({path}); reinstall "
                "promptcl, or set `backbone.weights: /path/to/file`"
            )
        return path
    return preset.tag


def _create_timm(preset: Preset, source: Source) -> nn.Module:
    import timm

    name = f"{preset.arch}.{preset.tag}" if preset.tag else preset.arch
    kwargs: dict[str, Any] = dict(num_classes=0, **preset.overrides)
    if isinstance(source, Path):  # .npz: Google's original checkpoints, read by timm's own loader
        overlay = dict(file=str(source), custom_load=source.suffix == ".npz")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return timm.create_model(name, pretrained=source is not None, **kwargs)


def _create_open_clip(preset: Preset, source: Source) -> nn.Module:
    import open_clip

    packed = isinstance(source, Path) and is_packed(source)
    pretrained = str(source) if source is not None and not packed else None
    with _quiet_root_logger() if packed else nullcontext():  # not "initialized randomly"
        model = open_clip.create_model(
            preset.arch,
            pretrained=pretrained,
            force_quick_gelu=preset.quick_gelu,
            **preset.overrides,
        )
    if packed:  # a shipped CLIP without its unused vocabulary (see backbones/packed.py)
        model.load_state_dict(load_packed(source))
    return model


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip warns through the root logger that a model built without ``pretrained`` is
    random; the packed weights are loaded right after, so the warning would mislead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


_CREATE = {"timm": _create_timm, "open_clip": _create_open_clip}


def _wrap(preset: Preset, model: nn.Module) -> Backbone:
    if preset.family == "timm":
        from promptcl.backbones.vit import PromptedViT

        return PromptedViT(model)
    import open_clip

    from promptcl.backbones.clip import PromptedCLIP

    tokenizer = open_clip.get_tokenizer(preset.arch, context_length=model.context_length)
    return PromptedCLIP(model, tokenizer)


def _hub_help(preset: Preset) -> tuple[str, str]:
    """(which hub file holds the weights, the Python call that downloads them); empty if none."""
    if preset.tag is None:
        return "", ""
    if preset.family == "videomamba":
        from promptcl.backbones.videomamba import CHECKPOINT_URL, MODEL_ZOO

        url = CHECKPOINT_URL.format(file=preset.tag)
        return f"{preset.tag} listed in {MODEL_ZOO}", f"wget {url}"
    if preset.family == "timm":
        from timm.models import get_pretrained_cfg

        name = f"{preset.arch}.{preset.tag}"
        repo = get_pretrained_cfg(name).hf_hub_id
        return f"model.safetensors in https://huggingface.co/{repo}", (
            f"timm.create_model({name!r}, pretrained=True)"
        )
    from open_clip.pretrained import get_pretrained_cfg as open_clip_cfg

    repo = open_clip_cfg(preset.arch, preset.tag)["hf_hub"].strip("/")
    return f"open_clip_model.safetensors in https://huggingface.co/{repo}", (
        f"open_clip.create_model({preset.arch!r}, pretrained={preset.tag!r})"
    )


def _register(name: str, preset: Preset) -> None:
    def build(cfg: BackboneConfig) -> Backbone:
        return build_preset(name, preset, cfg)

    build.__doc__ = preset.about
    backbones.register(name)(build)


for _name, _preset in PRESETS.items():
    _register(_name, _preset)
