"""Zero-shot CLIP: each class is scored by the similarity of the image to its caption.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021):
logits = cos(f_img(x), f_txt("a photo of a {class}.")). Nothing is trained, so nothing is
forgotten: the reference point of CLIP-based continual learners (STAR-Prompt, TPPT; mammoth's
``clip`` model).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from promptcl.backbones.base import Backbone
from promptcl.backbones.clip import CAPTION_TEMPLATE
from promptcl.config import MethodConfig
from promptcl.errors import ConfigError
from promptcl.methods.base import Method
from promptcl.registry import methods


class ZeroShotConfig(MethodConfig):
    name: str = "clip_zeroshot"
    epochs: int = 0
    template: str = Field(CAPTION_TEMPLATE, description="caption of a class; {} is its name")


@methods.register("clip_zeroshot")
class ClipZeroShot(Method):
    """Zero-shot CLIP on the class captions (no training)."""

    Config = ZeroShotConfig
    needs_text = True

    def __init__(self, config: ZeroShotConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        if not backbone.supports_text:
            raise ConfigError(f"clip_zeroshot needs a CLIP backbone, not {type(backbone).__name__}")
        tokens = backbone.tokenize([config.template.format(n) for n in class_names])
        with torch.no_grad():
            text = F.normalize(backbone.encode_text(tokens), dim=-1)  # (C, F)
        self.register_buffer("text_features", text, persistent=False)

    def predict(self, x: Tensor) -> Tensor:
        features = self.frozen(x, self.backbone.encode)  # (B, F)
        return F.normalize(features, dim=-1) @ self.text_features.T  # (B, C)
