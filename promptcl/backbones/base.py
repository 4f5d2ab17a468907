"""The prompt-injection API shared by every backbone family (see DESIGN.md, "Prompt injection").

A method describes, per transformer block, what to inject; the backbone applies it in its one
prompted forward. Layer indices are 0-based block indices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from promptcl.errors import UnsupportedPromptError

# The prompt kinds of ``LayerPrompts``; a backbone declares the ones it applies (``prompt_kinds``).
PROMPT_KINDS: frozenset[str] = frozenset({"tokens", "prefix", "residual", "value", "hook"})


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
    value:    layer -> (B, D) or (B, N, D). Added to the block's projected attention values of the
              N tokens (not to prefix values) before the attention-weighted sum, so the attention
              output is W_o softmax(q k^T / sqrt(d)) (v + r) (STAR-Prompt's semantic residual). A
              (B, D) value is broadcast to every token; per head it is r reshaped to (H, D / H).
              As attention rows sum to 1, a (B, D) value equals a residual of W_o r (no bias).
    hook:     called before every block i (after any tokens inserted at i) as x = hook(i, x) on
              the hidden sequence x (B, N, D); it returns the new sequence. For prompts that
              depend on the layer's own hidden states.

    N counts the tokens entering the block, inserted prompt tokens included. A backbone applies
    the kinds it declares in ``prompt_kinds`` and raises ``UnsupportedPromptError`` on any other.
    """

    tokens: dict[int, Tensor] = field(default_factory=dict)
    prefix: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    residual: dict[int, Tensor] = field(default_factory=dict)
    value: dict[int, Tensor] = field(default_factory=dict)
    hook: Callable[[int, Tensor], Tensor] | None = None

    def layers(self) -> set[int]:
        return set(self.tokens) | set(self.prefix) | set(self.residual) | set(self.value)

    def kinds(self) -> set[str]:
        """The kinds given (non-empty dicts, a hook that is set)."""
        given = {
            "tokens": self.tokens,
            "prefix": self.prefix,
            "residual": self.residual,
            "value": self.value,
            "hook": self.hook is not None,
        }
        return {kind for kind, present in given.items() if present}

    def check(
        self, depth: int, kinds: frozenset[str] = PROMPT_KINDS, where: str = "the backbone"
    ) -> None:
        """Raise if a kind is not in ``kinds`` (what ``where`` supports) or a layer is missing."""
        unsupported = sorted(self.kinds() - kinds)
        if unsupported:
            raise UnsupportedPromptError(
                f"{where} does not support {', '.join(map(repr, unsupported))} prompts; it "
                f"supports {', '.join(map(repr, sorted(kinds))) or 'no prompts'}"
            )
        bad = sorted(i for i in self.layers() if not 0 <= i < depth)
        if bad:
            raise ValueError(
                f"prompts target layers {bad}, but the backbone has layers 0..{depth - 1}"
            )


def insert_tokens(x: Tensor, tokens: Tensor, after: int) -> Tensor:
    """(B, N, D) + (B or 1, L, D) or (L, D) prompts -> (B, N + L, D), after ``after`` tokens."""
    tokens = tokens.to(x.dtype).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :after], tokens, x[:, after:]], dim=1)


def add_residual(out: Tensor, residual: Tensor | None) -> Tensor:
    """(B, N, D) + (B, D) (broadcast to every token) or (B, N, D) prompt; ``out`` itself if None.

    Used for ``residual`` prompts (on the attention output) and ``value`` prompts (on the values).
    """
    if residual is None:
        return out
    return out + (residual.unsqueeze(1) if residual.dim() == 2 else residual).to(out.dtype)


def prefix_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    prefix: tuple[Tensor, Tensor] | None,
    num_heads: int,
    mask: Tensor | None = None,
) -> Tensor:
    """Multi-head attention with optional prefix keys/values, before the output projection.

    q, k, v: (B, N, D) projected queries, keys and values; prefix: ((B, L_k, D), (B, L_v, D)) with
    L_k == L_v. Returns (B, N, D). With an empty or absent prefix this is plain attention.
    mask: optional (N, N) additive float mask over the N keys (e.g. CLIP text's causal mask); every
    query sees every prefix key.
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
    if mask is None:
        out = nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    else:
        mask = mask.to(q.dtype)
        mask = torch.cat([mask.new_zeros(N, k.shape[1] - mask.shape[1]), mask], dim=1)  # (N, N_k)
        out = nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), mask)
    return out.transpose(1, 2).reshape(B, N, D)


class Backbone(nn.Module, ABC):
    """A frozen feature extractor with one prompted forward.

    Subclasses set ``embed_dim`` (token width D), ``depth`` (number of blocks), ``num_heads``,
    ``feature_dim`` (width of ``pool``'s output), ``image_size``, ``patch_size``, ``mean`` and ``std`` (the
    per-channel input statistics ``normalize`` applies), and declare per class:

    prompt_kinds:  the ``LayerPrompts`` kinds the forward applies; any other raises
                   ``UnsupportedPromptError`` (``LayerPrompts.check``).
    modality:      the inputs ``forward`` accepts: "image" for (B, C, H, W) images, "video" for
                   (B, T, C, H, W) clips; pixels in [0, 1], normalised by the backbone itself.
    supports_text: whether the backbone also has a text tower (``tokenize``/``encode_text``).
    """

    embed_dim: int
    depth: int
    num_heads: int
    feature_dim: int
    image_size: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    prompt_kinds: ClassVar[frozenset[str]] = frozenset()
    modality: ClassVar[str] = "image"
    supports_text: ClassVar[bool] = False

    frozen: bool = False

    @abstractmethod
    def forward(self, x: Tensor, prompts: LayerPrompts | None = None) -> Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, N, D) final tokens (after the final norm)."""

    def normalize(self, x: Tensor) -> Tensor:
        """(..., C, H, W) pixels in [0, 1] -> the same shape at image_size, normalised by mean/std.

        The arithmetic of torchvision's ``v2.Normalize`` (``x.sub(mean).div_(std)``), so the
        result equals normalising in the data pipeline bit for bit; it also broadcasts over clips
        (B, T, C, H, W). An input of another size (an auxiliary backbone reading a batch made for
        another backbone) is first resized to image_size (bicubic, antialiased).
        """
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            frames = x.reshape(-1, *x.shape[-3:])  # (B * T, C, H, W)
            frames = F.interpolate(
                frames, size=size, mode="bicubic", antialias=True, align_corners=False
            )
            x = frames.reshape(*x.shape[:-2], *size)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x.sub(mean).div_(std)

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
