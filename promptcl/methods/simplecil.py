"""SimpleCIL: class prototypes on frozen features with a cosine classifier.

Zhou, Ye, Zhan, Liu. "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need" (IJCV 2024, arXiv 2303.07338), §4 "SimpleCIL".
No training: at the end of each task the prototype of class c is the mean pooled feature of its
training images, p_c = (1/n_c) Σ_{y_i=c} φ(x_i), computed without augmentation; prediction is the
cosine similarity cos(φ(x), p_c) (the official code replaces the head's weights by the prototypes
of a cosine linear layer).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from promptcl import collectives
from promptcl.backbones.base import Backbone
from promptcl.config import MethodConfig
from promptcl.methods.base import Method, Task
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
        """Class means over the task's data. Sums are accumulated in float64 and summed over
        processes (each reads its own shard): float64 sums of float32 features are exact in
        practice, so the prototypes do not depend on the number of processes or the order."""
        device = self.prototypes.device
        sums = torch.zeros(self.prototypes.shape, dtype=torch.float64, device=device)
        counts = torch.zeros(self.num_classes, dtype=torch.float64, device=device)
        for x, y, *_ in loader:
            y = y.to(device)
            sums.index_add_(0, y, self.frozen(x.to(device), self.backbone.encode).double())
            counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
        collectives.all_reduce_sum(sums)
        collectives.all_reduce_sum(counts)
        seen = counts > 0
        self.prototypes[seen] = (sums[seen] / counts[seen, None]).to(self.prototypes.dtype)

    def predict(self, x: Tensor) -> Tensor:
        features = F.normalize(self.frozen(x, self.backbone.encode), dim=-1)  # (B, D)
        return features @ F.normalize(self.prototypes, dim=-1).T  # (B, C)
