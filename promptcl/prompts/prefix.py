"""The two prefix-length conventions of the official codebases (a trap: specs/image-methods.md §0.1).

- "per_kv" (L2P/DualPrompt JAX ``models/prompt.py``, HiDe-Prompt ``peft/prompt``): a prompt of
  length L is stored as (2, L, D) and gives L key tokens *and* L value tokens.
- "halves" (CODA-Prompt ``models/zoo.py``): a prompt of length L is stored as (L, D) and split
  into L/2 key tokens and L/2 value tokens, so "length 8" means 4 + 4.
"""

from __future__ import annotations

from torch import Tensor


def per_kv(prompt: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2, L, D) -> keys (B, L, D), values (B, L, D)."""
    return prompt[:, 0], prompt[:, 1]


def halves(prompt: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, D) with L even -> keys (B, L/2, D), values (B, L/2, D)."""
    half = prompt.shape[1] // 2
    if 2 * half != prompt.shape[1]:
        raise ValueError(f"a 'halves' prefix needs an even length, got {prompt.shape[1]}")
    return prompt[:, :half], prompt[:, half:]
