"""Sequential fine-tuning: the lower bound of class-incremental learning.

The backbone and a linear head are trained on each task in turn with plain cross-entropy over all
classes seen so far, with nothing to protect old classes; this is "FT-seq" in L2P (Wang et al.,
CVPR 2022, Table 1). ``train_backbone: false`` freezes the backbone ("FT-seq-frozen").

Departures: the papers do not publish the optimiser of this baseline; Adam with lr 1e-4 (the usual
fine-tuning rate for a ViT) is our choice [inferred].
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import Backbone
from promptcl.config import MethodConfig
from promptcl.methods.base import Batch, Method
from promptcl.registry import methods


class HeadConfig(MethodConfig):
    name: str = "finetune"
    lr: float = 1e-4
    train_backbone: bool = Field(True, description="also train the backbone (False: head only)")
    head_lr: float | None = Field(None, description="lr of the head; None = the method's lr")
    train_mask: bool = False


class HeadClassifier(Method):
    """A linear head on the backbone's pooled feature, trained with cross-entropy."""

    Config = HeadConfig

    def __init__(self, config: HeadConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        self.head = nn.Linear(backbone.feature_dim, self.num_classes)
        if config.train_backbone:
            backbone.frozen = False
            backbone.requires_grad_(True)
            self.ddp_find_unused = True  # e.g. a CLIP's text tower takes no part in the loss

    def param_groups(self) -> list[dict[str, Any]]:
        """The backbone at ``lr`` (when trained) and the head at ``head_lr`` (default ``lr``)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head: dict[str, Any] = {"params": list(self.head.parameters())}
        if self.config.head_lr is not None:
            head["lr"] = self.config.head_lr
        return [{"params": backbone}, head] if backbone else [head]

    def predict(self, x: Tensor) -> Tensor:
        if self.backbone.frozen:  # a linear probe: the features are the same all run long
            return self.head(self.frozen(x, self.backbone.encode))  # (B, C)
        return self.head(self.backbone.encode(x))  # (B, C)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.mask_for_training(self.predict(batch.x))
        return {"loss": F.cross_entropy(logits, batch.y)}


@methods.register("finetune")
class FineTune(HeadClassifier):
    """Sequential fine-tuning of backbone and head (the lower bound)."""
