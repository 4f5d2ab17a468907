"""A frozen timm ``VisionTransformer`` with one prompted forward (DESIGN.md, "Prompt injection").

``PromptedViT`` holds the timm model and re-runs its ``forward_features`` block loop with the
model's own submodules, so that with no prompts it returns exactly
``model.forward_features(self.normalize(x))`` (the forward takes pixels in [0, 1]).
Only the plain pre-norm ``Block`` with timm's ``Attention`` is supported; other variants (ResPost,
parallel, differential or RoPE attention, ...) raise ``UnsupportedBackboneError`` at wrap time.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from timm.data import resolve_model_data_config
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from promptcl.backbones.base import (
    PROMPT_KINDS,
    Backbone,
    LayerPrompts,
    add_residual,
    insert_tokens,
    prefix_attention,
)
from promptcl.errors import UnsupportedBackboneError


class PromptedViT(Backbone):
    """Wraps (does not copy) a timm ``VisionTransformer``; ``self.model`` is the timm model."""

    prompt_kinds: ClassVar[frozenset[str]] = PROMPT_KINDS

    def __init__(self, model: VisionTransformer):
        super().__init__()
        _check_supported(model)
        self.model = model
        self.embed_dim = int(model.embed_dim)
        self.depth = len(model.blocks)
        self.num_heads = int(model.blocks[0].attn.num_heads)
        self.feature_dim = int(getattr(model, "head_hidden_size", model.num_features))
        self.image_size = int(model.patch_embed.img_size[0])
        self.patch_size = int(model.patch_embed.patch_size[0])
        data_cfg = resolve_model_data_config(model)
        self.mean = tuple(float(m) for m in data_cfg["mean"])
        self.std = tuple(float(s) for s in data_cfg["std"])

    def forward(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, N, D) tokens after the final norm."""
        prompts = prompts or LayerPrompts()
        prompts.check(self.depth, self.prompt_kinds, type(self).__name__)
        x = self.normalize(x)
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # (B, N, D)
        for i, block in enumerate(m.blocks):
            if i in prompts.tokens:
                x = insert_tokens(x, prompts.tokens[i], m.num_prefix_tokens)  # (B, N + L, D)
            if prompts.hook is not None:
                x = prompts.hook(i, x)  # (B, N, D)
            x = self._block(
                block, x, prompts.prefix.get(i), prompts.residual.get(i), prompts.value.get(i)
            )
        return m.norm(x)  # (B, N, D)

    def _block(
        self,
        block: nn.Module,
        x: Tensor,
        prefix: tuple[Tensor, Tensor] | None,
        residual: Tensor | None,
        value: Tensor | None = None,
    ) -> Tensor:
        """timm ``Block.forward`` with ``Attention.forward`` inlined, plus the prompts."""
        attn = block.attn
        h = block.norm1(x)  # (B, N, D)
        B, N, _ = h.shape
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.unbind(2)  # (B, N, H, d) each
        q, k = attn.q_norm(q), attn.k_norm(k)  # per-head norms act on the last axis only
        v = add_residual(v.flatten(2), value)  # (B, N, D)
        out = prefix_attention(q.flatten(2), k.flatten(2), v, prefix, attn.num_heads)
        out = attn.norm(out)  # (B, N, H * d)
        gate = getattr(attn, "gate", None)
        if gate is not None:
            out = out * gate(h).sigmoid()
        out = add_residual(attn.proj_drop(attn.proj(out)), residual)  # (B, N, D)
        x = x + block.drop_path1(block.ls1(out))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def class_position(self) -> Tensor:
        """(D,) the position embedding the class token receives at the input; zeros where it
        receives none (``no_embed_class``, no position embedding)."""
        m = self.model
        if m.pos_embed is None or m.no_embed_class or m.cls_token is None:
            return torch.zeros(self.embed_dim, device=m.patch_embed.proj.weight.device)
        return m.pos_embed[0, 0]

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, feature_dim): timm's pooling + fc_norm, i.e. the pre-logits feature."""
        return self.model.forward_head(tokens, pre_logits=True)


def _check_supported(model: nn.Module) -> None:
    if not isinstance(model, VisionTransformer):
        raise UnsupportedBackboneError(
            f"PromptedViT wraps a timm VisionTransformer, got {type(model).__name__}"
        )
    for i, block in enumerate(model.blocks):
        if type(block) is not Block or type(block.attn) is not Attention:
            raise UnsupportedBackboneError(
                f"block {i} is {type(block).__name__} with {type(block.attn).__name__}; the "
                "prompted forward supports timm's pre-norm Block with the standard Attention only"
            )
        if block.attn.attn_drop.p > 0:
            raise UnsupportedBackboneError("attention dropout is not supported (attn_drop_rate=0)")
    size = model.patch_embed.img_size
    if size is None or size[0] != size[1]:
        raise UnsupportedBackboneError(f"only square fixed-size images are supported, not {size}")
