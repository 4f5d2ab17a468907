"""SimpleCIL: class prototypes on frozen features with a cosine classifier.

Zhou, Ye, Zhan, Liu. "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need" (IJCV 2024, arXiv 2303.07338), §4 "SimpleCIL".
No training: at the end of each task the prototype of class c is the mean pooled feature of its
training images, p_c = (1/n_c) Σ_{y_i=c} φ(x_i), computed without augmentation; prediction is the
cosine similarity cos(φ(x), p_c) (the official code replaces the head's weights by the prototypes
of a cosine linear layer).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl.backbones.base import Backbone
from promptcl.config import MethodConfig
from promptcl.methods.base import Method, Task, class_means
from promptcl.registry import methods


class SimpleCILConfig(MethodConfig):
    name: str = "simplecil"
    epochs: int = 0


@methods.register("simplecil")
class SimpleCIL(Method):
    Config = SimpleCILConfig

    def __init__(self, config: SimpleCILConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)
        self.register_buffer("prototypes", torch.zeros(self.num_classes, backbone.feature_dim))

    @torch.no_grad()
    def end_task(self, task: Task, loader: DataLoader) -> None:
        """Class means of the frozen features over the task's data (``class_means``)."""
        encode = partial(self.frozen, compute=self.backbone.encode)
        means, seen = class_means(loader, encode, self.num_classes, self.prototypes.device)
        self.prototypes[seen] = means[seen].to(self.prototypes.dtype)

    def predict(self, x: Tensor) -> Tensor:
        features = F.normalize(self.frozen(x, self.backbone.encode), dim=-1)  # (B, D)
        return features @ F.normalize(self.prototypes, dim=-1).T  # (B, C)
