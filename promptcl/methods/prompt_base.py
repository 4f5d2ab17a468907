"""What the key-query prompt methods share: the frozen query, a linear head, two learning rates.

L2P, DualPrompt, CODA-Prompt, HiDe-Prompt, Hash, STAR-Prompt and CoSTEP subclass
``PromptMethod``. The backbone stays frozen; only prompts, keys and the head are trained.
``freeze_prompts: true`` keeps what each method's ``prompt_state`` names at its initialisation
while everything else trains as usual: the ablation that tells what the prompts earn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from promptcl.backbones.base import Backbone
from promptcl.config import MethodConfig
from promptcl.errors import ConfigError
from promptcl.methods.base import Method, Phase, Task
from promptcl.prompts.query import QueryCache


class PromptConfig(MethodConfig):
    head_lr: float | None = Field(None, description="lr of the head; None = the method's lr")
    query_cache: bool = Field(
        False, description="cache the frozen query per training sample (exact without augmentation)"
    )
    freeze_prompts: bool = Field(
        False, description="ablation: prompts (keys, routers, generators) stay at initialisation"
    )


class PromptMethod(Method):
    """A frozen backbone, learnable prompts, and a linear head over all classes."""

    Config = PromptConfig

    def __init__(
        self,
        config: PromptConfig,
        backbone: Backbone,
        class_names: list[str],
        auxiliary: Mapping[str, Backbone] | None = None,
    ):
        super().__init__(config, backbone, class_names, auxiliary)
        self.head = nn.Linear(backbone.feature_dim, self.num_classes)
        self.query_cache = QueryCache() if config.query_cache else None

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if self.query_cache is not None:
            self.query_cache.clear()  # a new task's samples: the cached ones are not read again

    def end_epoch(self, phase: Phase) -> None:
        if self.query_cache is not None and phase.data != "method":
            self.query_cache.share()

    @torch.no_grad()
    def query(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """q(x): the prompt-free pooled feature of the frozen backbone, (B, F)."""
        if self.query_cache is not None and index is not None and self.training:
            return self.query_cache(x, index, self.backbone.encode)
        return self.frozen(x, self.backbone.encode)

    def prompt_parameters(self) -> list[nn.Parameter]:
        """Everything trainable but the head."""
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in head]

    def param_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = [{"params": self.prompt_parameters()}]
        head_group: dict[str, Any] = {"params": list(self.head.parameters())}
        if self.config.head_lr is not None:
            head_group["lr"] = self.config.head_lr
        return [g for g in (*groups, head_group) if g["params"]]


def check_layers(key: str, layers: list[int], backbone: Backbone) -> None:
    """Prompt layers must be distinct blocks of the backbone; ``key`` names the config field."""
    bad = [i for i in layers if not 0 <= i < backbone.depth]
    if bad or len(set(layers)) != len(layers):
        raise ConfigError(
            f"method.{key} {layers} must be distinct blocks of the backbone, 0..{backbone.depth - 1}"
        )
