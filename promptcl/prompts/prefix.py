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


RELEASED_RESHAPE_BUG = (
    "E-prompt keys, values and samples mixed by a reshape (JH-LEE-KR/dualprompt-pytorch#8)"
)


def released_reshape(prompts: Tensor) -> Tensor:
    """Per-sample "per_kv" prompts (B, 2, L, D) -> the same shape as the PyTorch ports mix them.

    dualprompt-pytorch (``prompt.py``, E-prompt prefix tuning) and HiDe-Prompt after it gather
    the batch's prompts as (2, B, L, D) and ``reshape`` (instead of permute) them to (B, 2, L, D):
    row b then holds flat rows 2b and 2b + 1 of the (2 B) keys-then-values, so keys are used as
    values and samples get each other's prompts (specs/peer-frameworks.md §7.3). Reproduced
    exactly for one top-1 prompt per sample, on the batch each process sees.
    """
    return prompts.transpose(0, 1).reshape(prompts.shape)
