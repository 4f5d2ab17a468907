"""Shipping a small CLIP without its unused vocabulary.

open_clip's text tower embeds a 49,408-token vocabulary; a CLIP pretrained on a few hundred
captions (``tiny-synth-clip``) only ever trained the rows of the tokens those captions contain, and
the rest stay at their random initialisation. A packed weight file keeps the trained rows and the
ids they belong to (``token_embedding.kept_ids``); unpacking puts them back into a table of zeros,
so a caption made of kept tokens is encoded exactly as before, and an unknown word contributes
nothing instead of random noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

EMBEDDING = "token_embedding.weight"
KEPT = "token_embedding.kept_ids"
VOCAB = "token_embedding.vocab_size"


def pack(state: dict[str, Tensor], kept_ids: Tensor) -> dict[str, Tensor]:
    """A copy of ``state`` whose token embedding keeps only the rows ``kept_ids``."""
    ids = torch.unique(kept_ids.flatten()).long()
    table = state[EMBEDDING]
    return {
        **state,
        EMBEDDING: table[ids].contiguous(),
        KEPT: ids.int(),
        VOCAB: torch.tensor([len(table)], dtype=torch.int64),
    }


def unpack(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The full state dict of a packed one (unchanged if it is not packed)."""
    if KEPT not in state:
        return state
    state = dict(state)
    ids, vocab = state.pop(KEPT).long(), int(state.pop(VOCAB))
    rows = state[EMBEDDING]
    table = torch.zeros(vocab, rows.shape[1], dtype=rows.dtype)
    table[ids] = rows
    state[EMBEDDING] = table
    return state


def is_packed(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    with safe_open(str(path), framework="pt") as f:
        return KEPT in f.keys()


def load_packed(path: Path) -> dict[str, Tensor]:
    """A packed weight file as a full float32 state dict."""
    state = unpack(load_file(str(path)))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
