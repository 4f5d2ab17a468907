"""The prompt-injection API shared by every backbone family (see DESIGN.md, "Prompt injection").

A method describes, per transformer block, what to inject; the backbone applies it in its one
prompted forward. Layer indices are 0-based block indices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class LayerPrompts:
    """What to inject into each block of a frozen transformer.

    tokens:   layer -> (B, L, D). Prompt-tuning: inserted into the token sequence right after the
              class token, before block ``layer`` runs, and kept from then on (VPT-shallow / L2P).
              The output sequence is then [CLS, prompts..., patches...].
    prefix:   layer -> (key, value), each (B, L_k, D) / (B, L_v, D). Prefix-tuning: concatenated to
              the block's attention keys and values *after* their projection (they live in K/V
              space and are split into heads like the projected keys). The sequence length is
              unchanged.
    residual: layer -> (B, D) or (B, N, D). Added to the attention output (after the attention's
              output projection, before the residual sum and the MLP).
    """

    tokens: dict[int, Tensor] = field(default_factory=dict)
    prefix: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    residual: dict[int, Tensor] = field(default_factory=dict)

    def layers(self) -> set[int]:
        return set(self.tokens) | set(self.prefix) | set(self.residual)

    def check(self, depth: int) -> None:
        bad = sorted(i for i in self.layers() if not 0 <= i < depth)
        if bad:
            raise ValueError(
                f"prompts target layers {bad}, but the backbone has layers 0..{depth - 1}"
            )


def insert_tokens(x: Tensor, tokens: Tensor, after: int) -> Tensor:
    """(B, N, D) + (B or 1, L, D) prompts -> (B, N + L, D), the prompts after ``after`` tokens."""
    tokens = tokens.to(x.dtype).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :after], tokens, x[:, after:]], dim=1)


def add_residual(out: Tensor, residual: Tensor | None) -> Tensor:
    """(B, N, D) attention output + (B, D) or (B, N, D) residual prompt."""
    if residual is None:
        return out
    return out + (residual.unsqueeze(1) if residual.dim() == 2 else residual).to(out.dtype)


def prefix_attention(
    q: Tensor, k: Tensor, v: Tensor, prefix: tuple[Tensor, Tensor] | None, num_heads: int
) -> Tensor:
    """Multi-head attention with optional prefix keys/values, before the output projection.

    q, k, v: (B, N, D) projected queries, keys and values; prefix: ((B, L_k, D), (B, L_v, D)) with
    L_k == L_v. Returns (B, N, D). With an empty or absent prefix this is plain attention.
    """
    if prefix is not None and prefix[0].shape[1] > 0:
        pk, pv = prefix
        if pk.shape[1] != pv.shape[1]:
            raise ValueError(
                f"prefix keys ({pk.shape[1]}) and values ({pv.shape[1]}) differ in length"
            )
        k = torch.cat([pk.to(k.dtype), k], dim=1)
        v = torch.cat([pv.to(v.dtype), v], dim=1)
    B, N, D = q.shape
    heads = lambda t: t.reshape(B, t.shape[1], num_heads, D // num_heads).transpose(1, 2)  # noqa: E731
    out = nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    return out.transpose(1, 2).reshape(B, N, D)


class Backbone(nn.Module, ABC):
    """A frozen feature extractor with one prompted forward.

    Subclasses set ``embed_dim`` (token width D), ``depth`` (number of blocks), ``num_heads``,
    ``feature_dim`` (width of ``pool``'s output), ``image_size``, ``mean`` and ``std``.
    """

    embed_dim: int
    depth: int
    num_heads: int
    feature_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    frozen: bool = False

    @abstractmethod
    def forward(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        """(B, C, H, W) images -> (B, N, D) final tokens (after the final norm)."""

    @abstractmethod
    def pool(self, tokens: Tensor) -> Tensor:
        """(B, N, D) tokens -> (B, feature_dim) image feature (class token, or CLIP's projection)."""

    def encode(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        return self.pool(self(x, prompts))

    def freeze(self) -> Backbone:
        """Freeze every weight and keep the module in eval mode (no dropout) for good."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> Backbone:
        # A frozen backbone stays in eval mode even when the method around it trains.
        return super().train(mode and not self.frozen)
