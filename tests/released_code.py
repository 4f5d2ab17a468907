"""Restatements of released code bases' forwards, for the switches that reproduce them."""

import torch


def released_e_prefixes(pool: torch.Tensor, ids: torch.Tensor, layer: int, heads: int):
    """dualprompt-pytorch's E-prompt prefix tuning (``prompt.py``, ``attention.py``), inherited
    by HiDe-Prompt: the pool (T, layers, 2, L, D) is held as (layers, dual, pool, L, heads,
    D/heads); the batch's prompts are gathered as (layers, dual, B, top_k, L, ...) and
    *reshaped* to (layers, B, dual, top_k L, ...); block ``layer`` takes [:, 0] as each sample's
    keys and [:, 1] as its values. Returns both as (B, L, D)."""
    T, E, _, L, D = pool.shape
    port = pool.permute(1, 2, 0, 3, 4).reshape(E, 2, T, L, heads, D // heads)
    raw = port[:, :, ids].unsqueeze(3)  # (E, 2, B, top_k=1, L, heads, D/heads)
    batched = raw.reshape(E, len(ids), 2, L, heads, D // heads)
    return batched[layer, :, 0].flatten(2), batched[layer, :, 1].flatten(2)
