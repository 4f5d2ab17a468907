"""A frozen open_clip ``CLIP``: prompted image tower plus a text tower with learnable context.

Image tower: ``forward`` re-runs ``VisionTransformer.forward`` with the model's own submodules and
returns the tokens after ``ln_post``; ``pool`` takes the class token (or the patch mean) and applies
the projection, so ``pool(forward(x)) == model.encode_image(x)``. Each block's
``nn.MultiheadAttention`` is driven through its ``in_proj_weight``/``in_proj_bias``/``out_proj``
on (B, N, D) tensors, so prefixes can be injected; ``batch_first`` therefore does not matter.

Text tower (CoOp, Zhou et al. 2022): ``encode_text(text, context)`` inserts M learnable context
embeddings right after the start-of-text token, keeps the sequence at ``context_length`` by cutting
its (padding) end, and pools at the shifted end-of-text position.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import (
    Backbone,
    LayerPrompts,
    add_residual,
    insert_tokens,
    prefix_attention,
)
from promptcl.errors import UnsupportedBackboneError

# The caption of a class, as in CLIP's zero-shot evaluation (Radford et al., 2021); the shipped
# tiny-synth-clip was trained on captions of this form.
CAPTION_TEMPLATE = "a photo of a {}."


class PromptedCLIP(Backbone):
    """Wraps (does not copy) an open_clip ``CLIP``; ``self.model`` is the open_clip model.

    ``embed_dim``/``depth``/``num_heads`` describe the visual transformer; ``feature_dim`` is the
    joint image-text embedding width; ``text_width`` is the text transformer's token width.
    """

    def __init__(self, model: CLIP, tokenizer: Callable[[list[str]], Tensor] | None = None):
        super().__init__()
        _check_supported(model)
        visual = model.visual
        self.model = model
        self.tokenizer = tokenizer or SimpleTokenizer(context_length=model.context_length)
        self.embed_dim = int(visual.transformer.width)
        self.depth = len(visual.transformer.resblocks)
        self.num_heads = int(visual.transformer.resblocks[0].attn.num_heads)
        self.feature_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.embed_dim
        self.image_size = int(visual.image_size[0])
        preprocess = getattr(visual, "preprocess_cfg", {})
        self.mean = tuple(float(m) for m in preprocess.get("mean", OPENAI_DATASET_MEAN))
        self.std = tuple(float(s) for s in preprocess.get("std", OPENAI_DATASET_STD))
        self.text_width = int(model.transformer.width)
        self.context_length = int(model.context_length)

    # ---- image tower -------------------------------------------------------------------------

    def forward(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        prompts = prompts or LayerPrompts()
        prompts.check(self.depth)
        v = self.model.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)  # (B, h * w, D)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))  # (B, N, D)
        for i, block in enumerate(v.transformer.resblocks):
            if i in prompts.tokens:
                x = insert_tokens(x, prompts.tokens[i], 1)  # (B, N + L, D)
            x = self._block(block, x, prompts.prefix.get(i), prompts.residual.get(i))
        return v.ln_post(x)  # (B, N, D)

    @staticmethod
    def _block(
        block: ResidualAttentionBlock,
        x: Tensor,
        prefix: tuple[Tensor, Tensor] | None,
        residual: Tensor | None,
    ) -> Tensor:
        """``ResidualAttentionBlock.forward`` (self-attention, no mask) plus the prompts."""
        attn = block.attn
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        out = attn.out_proj(prefix_attention(q, k, v, prefix, attn.num_heads))  # (B, N, D)
        x = x + block.ls_1(add_residual(out, residual))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens after ln_post -> (B, feature_dim) image embedding (not normalised)."""
        v = self.model.visual
        pooled = tokens[:, 0] if v.pool_type == "tok" else tokens[:, 1:].mean(dim=1)  # (B, D)
        return pooled @ v.proj if v.proj is not None else pooled

    # ---- text tower --------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> Tensor:
        """list of C strings -> (C, context_length) token ids, with the model's tokenizer."""
        return self.tokenizer(texts)

    def encode_text(self, text: Tensor, context: Tensor | None = None) -> Tensor:
        """(C, L) token ids -> (C, feature_dim) text embeddings (not normalised).

        context: (M, D_text) shared by every text, or (C, M, D_text) one per text; inserted right
        after the start-of-text token. With ``context=None`` this is ``model.encode_text(text)``.
        """
        m = self.model
        dtype = m.transformer.get_cast_dtype()
        C, L = text.shape
        x = m.token_embedding(text).to(dtype)  # (C, L, D_text)
        eot = self._eot_index(text)  # (C,)
        if context is not None:
            ctx = context.to(dtype)
            ctx = (ctx.unsqueeze(0) if ctx.dim() == 2 else ctx).expand(C, -1, -1)  # (C, M, D_text)
            eot = eot + ctx.shape[1]
            if int(eot.max()) >= L:
                raise ValueError(
                    f"a text is too long for {ctx.shape[1]} context tokens: its end-of-text token "
                    f"would move to position {int(eot.max())}, past context_length {L}"
                )
            x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)[:, :L]  # (C, L, D_text)
        x = x + m.positional_embedding[:L].to(dtype)
        mask = m.attn_mask[:L, :L] if m.attn_mask is not None else None
        x = m.ln_final(m.transformer(x, attn_mask=mask))  # (C, L, D_text)
        pooled = x[torch.arange(C, device=x.device), eot]  # (C, D_text)
        proj = m.text_projection
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj if proj is not None else pooled

    def _eot_index(self, text: Tensor) -> Tensor:
        if self.model.text_pool_type == "argmax":  # the end-of-text id is the largest id
            return text.argmax(dim=-1)
        return (text == self.model.text_eos_id).int().argmax(dim=-1)  # "eos"


def _check_supported(model: nn.Module) -> None:
    if not isinstance(model, CLIP):
        raise UnsupportedBackboneError(
            "PromptedCLIP wraps an open_clip CLIP with its own text transformer, "
            f"got {type(model).__name__}"
        )
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedBackboneError(
            f"the image tower must be open_clip's VisionTransformer, got {type(visual).__name__}"
        )
    pools_tokens = visual.pool_type in ("tok", "avg") and not visual.final_ln_after_pool
    if visual.attn_pool is not None or not pools_tokens:
        raise UnsupportedBackboneError(
            "only class-token or mean pooling after ln_post is supported (no attentional pooler, "
            "no final_ln_after_pool)"
        )
    for i, block in enumerate(visual.transformer.resblocks):
        attn = block.attn
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            raise UnsupportedBackboneError(
                f"visual block {i} is {type(block).__name__}; only the default "
                "ResidualAttentionBlock (self-attention) is supported"
            )
        plain = attn.in_proj_weight is not None and attn.bias_k is None and not attn.add_zero_attn
        if not plain or attn.dropout:
            raise UnsupportedBackboneError(
                f"visual block {i}: nn.MultiheadAttention with separate q/k/v projections, "
                "bias_k/v, zero attention or attention dropout is not supported"
            )
    if model.text_pool_type not in ("argmax", "eos"):
        raise UnsupportedBackboneError(
            f"text pooling {model.text_pool_type!r} is not supported (argmax or eos only)"
        )
