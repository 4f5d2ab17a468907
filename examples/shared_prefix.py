"""Shared prefix: one prefix prompt that every task trains, and a linear head.

The smallest prompt method: DualPrompt's G-prompt without its E-prompts (Wang et al., ECCV 2022,
the "w/o E-Prompt" row of its ablation). A prefix of L_p learned tokens per chosen block is split
into key and value halves and prepended to that block's attention keys and values; the frozen
backbone's pooled feature goes through a linear head over all classes. Training uses the current
task's classes only (``train_mask``), as DualPrompt does.

This file is the tutorial of the documentation site ("a method in one file"): import it, and
``method.name: shared_prefix`` runs it like any built-in method.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import Backbone, LayerPrompts
from promptcl.methods.base import Batch
from promptcl.methods.prompt_base import PromptConfig, PromptMethod, check_layers
from promptcl.prompts.prefix import halves
from promptcl.registry import methods


class SharedPrefixConfig(PromptConfig):
    name: str = "shared_prefix"
    lr: float = Field(
        0.015, ge=0, description="Adam lr (DualPrompt's 0.03 at batch 256, x 128/256)"
    )
    epochs: int = Field(5, ge=0, description="epochs per task (DualPrompt's CIFAR-100)")
    batch_size: int = Field(128, ge=1, description="batch size (DualPrompt)")
    layers: list[int] = Field([0, 1], description="blocks with the prefix (DualPrompt's G-prompt)")
    prompt_length: int = Field(
        10, ge=2, description="L_p: 5 key + 5 value tokens (DualPrompt's L_g = 5)"
    )


@methods.register("shared_prefix")
class SharedPrefix(PromptMethod):
    """One prefix shared by every task, and a linear head."""

    Config = SharedPrefixConfig
    config: SharedPrefixConfig

    def __init__(self, config: SharedPrefixConfig, backbone: Backbone, class_names: list[str]):
        super().__init__(config, backbone, class_names)  # makes self.head
        check_layers("layers", config.layers, backbone)  # a clear error for a bad block index
        shape = (len(config.layers), config.prompt_length, backbone.embed_dim)
        self.prefix = nn.Parameter(torch.empty(shape).uniform_(-1, 1))

    def prompt_state(self) -> list[nn.Module | nn.Parameter]:
        return [self.prefix]  # what ``method.freeze_prompts: true`` keeps at its initialisation

    def features(self, x: Tensor) -> Tensor:
        prefix = self.prefix.expand(len(x), *self.prefix.shape)  # (B, layers, L_p, D)
        prompts = LayerPrompts(
            prefix={layer: halves(prefix[:, j]) for j, layer in enumerate(self.config.layers)}
        )
        return self.backbone.encode(x, prompts)  # (B, F): the frozen model with the prefix

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.mask_for_training(self.head(self.features(batch.x)))
        return {"loss": F.cross_entropy(logits, batch.y)}

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, C): no task identity needed
