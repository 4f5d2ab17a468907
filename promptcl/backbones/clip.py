"""A frozen open_clip ``CLIP``: prompted image tower plus a prompted text tower.

Image tower: ``forward`` re-runs ``VisionTransformer.forward`` with the model's own submodules and
returns the tokens after ``ln_post``; ``pool`` takes the class token (or the patch mean) and applies
the projection, so ``pool(forward(x)) == model.encode_image(normalize(x))`` for pixels x in [0, 1].
Each block's ``nn.MultiheadAttention`` is driven through its ``in_proj_weight``/``in_proj_bias``/
``out_proj`` on (B, N, D) tensors, so prefixes can be injected; ``batch_first`` does not matter.

Text tower: ``encode_text(text, prompts)`` takes the same ``LayerPrompts`` kinds, on the text
blocks. Prompt tokens go right after the start-of-text token; the sequence is kept at
``context_length`` by cutting its (padding) end, and pooling moves with the end-of-text token.
Tokens at layer 0 are inserted into the token embeddings before the positional embedding is added
(CoOp's learnable context, Zhou et al. 2022); tokens at layer i > 0 into the hidden sequence before
text block i. Prefix keys/values are seen by every position (the causal mask covers the tokens
only). Without prompts acting inside the transformer (none, or tokens at layer 0 only) the
blocks run through open_clip's own ``Transformer.forward``; otherwise one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.backbones.base import (
    PROMPT_KINDS,
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
    joint image-text embedding width; ``text_width``/``text_depth`` are the text transformer's
    token width and number of blocks. ``prompt_kinds`` are the image tower's prompt kinds,
    ``text_prompt_kinds`` the text tower's.
    """

    prompt_kinds: ClassVar[frozenset[str]] = PROMPT_KINDS
    text_prompt_kinds: ClassVar[frozenset[str]] = PROMPT_KINDS
    supports_text: ClassVar[bool] = True

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
        self.patch_size = int(visual.patch_size[0])
        preprocess = getattr(visual, "preprocess_cfg", {})
        self.mean = tuple(float(m) for m in preprocess.get("mean", OPENAI_DATASET_MEAN))
        self.std = tuple(float(s) for s in preprocess.get("std", OPENAI_DATASET_STD))
        self.text_width = int(model.transformer.width)
        self.text_depth = len(model.transformer.resblocks)
        self.context_length = int(model.context_length)

    # ---- image tower -------------------------------------------------------------------------

    def forward(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, N, D) tokens after ln_post."""
        prompts = prompts or LayerPrompts()
        prompts.check(self.depth, self.prompt_kinds, f"{type(self).__name__} image tower")
        x = self.normalize(x)
        v = self.model.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)  # (B, h * w, D)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))  # (B, N, D)
        for i, block in enumerate(v.transformer.resblocks):
            if i in prompts.tokens:
                x = insert_tokens(x, prompts.tokens[i], 1)  # (B, N + L, D)
            if prompts.hook is not None:
                x = prompts.hook(i, x)  # (B, N, D)
            x = self._block(
                block, x, prompts.prefix.get(i), prompts.residual.get(i), prompts.value.get(i)
            )
        return v.ln_post(x)  # (B, N, D)

    @staticmethod
    def _block(
        block: ResidualAttentionBlock,
        x: Tensor,
        prefix: tuple[Tensor, Tensor] | None,
        residual: Tensor | None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """``ResidualAttentionBlock.forward`` (self-attention, optional (N, N) mask) + prompts."""
        attn = block.attn
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        v = add_residual(v, value)  # (B, N, D)
        out = attn.out_proj(prefix_attention(q, k, v, prefix, attn.num_heads, mask))  # (B, N, D)
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

    def encode_text(self, text: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        """(C, L) token ids -> (C, feature_dim) text embeddings (not normalised).

        prompts: on the text blocks (D = D_text, B = C); ``tokens`` may be (M, D_text) shared by
        every text, (1, M, D_text) or (C, M, D_text). ``tokens={0: context}`` is CoOp's learnable
        context. With no prompts this is ``model.encode_text(text)``.
        """
        prompts = prompts or LayerPrompts()
        where = f"{type(self).__name__} text tower"
        prompts.check(self.text_depth, self.text_prompt_kinds, where)
        m = self.model
        dtype = m.transformer.get_cast_dtype()
        C, L = text.shape
        x = m.token_embedding(text).to(dtype)  # (C, L, D_text)
        eot = self._eot_index(text)  # (C,)
        inserted = sum(t.shape[-2] for t in prompts.tokens.values())
        if inserted and int(eot.max()) + inserted >= L:
            raise ValueError(
                f"a text is too long for {inserted} prompt tokens: its end-of-text token would "
                f"move to position {int(eot.max()) + inserted}, past context_length {L}"
            )
        if 0 in prompts.tokens:
            x = insert_tokens(x, prompts.tokens[0], 1)[:, :L]  # (C, L, D_text)
        x = x + m.positional_embedding[:L].to(dtype)
        mask = m.attn_mask[:L, :L] if m.attn_mask is not None else None
        if prompts.kinds() <= {"tokens"} and set(prompts.tokens) <= {0}:
            x = m.transformer(x, attn_mask=mask)  # open_clip's own forward
        else:
            for i, block in enumerate(m.transformer.resblocks):
                if i > 0 and i in prompts.tokens:
                    x = insert_tokens(x, prompts.tokens[i], 1)[:, :L]  # (C, L, D_text)
                if prompts.hook is not None:
                    x = prompts.hook(i, x)  # (C, L, D_text)
                prefix, residual = prompts.prefix.get(i), prompts.residual.get(i)
                x = self._block(block, x, prefix, residual, prompts.value.get(i), mask)
        x = m.ln_final(x)  # (C, L, D_text)
        eot = eot + inserted
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
    for i, block in enumerate(model.transformer.resblocks):
        attn = block.attn
        plain = attn.in_proj_weight is not None and attn.bias_k is None and not attn.add_zero_attn
        default = type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
        if not default or not plain or attn.dropout:
            raise UnsupportedBackboneError(
                f"text block {i} is {type(block).__name__}; only the default "
                "ResidualAttentionBlock with a plain nn.MultiheadAttention (no separate q/k/v "
                "projections, bias_k/v, zero attention or attention dropout) is supported"
            )
    if model.text_pool_type not in ("argmax", "eos"):
        raise UnsupportedBackboneError(
            f"text pooling {model.text_pool_type!r} is not supported (argmax or eos only)"
        )
