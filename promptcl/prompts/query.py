"""The frozen query of key-query prompt methods, with an optional per-sample cache.

L2P, DualPrompt, CODA-Prompt and HiDe-Prompt select or weight their prompts with q(x), the final
class-token feature of the same frozen backbone run *without* prompts. Every peer recomputes it
on every step, roughly doubling the cost of training (../shared/specs/peer-frameworks.md §7.2).

The cache stores q per training sample, keyed by the sample's index in its training set. The
backbone is frozen, so a cached query equals a recomputed one whenever the sample is read
through the same view: exact when training images are not augmented (``data.augment: false``).
With augmentation, the cache keeps the query of the first augmented view it saw, which changes
the method; that is why it is off by default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class QueryCache:
    """Per-sample store of query features, on the CPU."""

    def __init__(self) -> None:
        self.store: dict[int, Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.store)

    def __call__(self, x: Tensor, index: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """Queries of the batch ``x`` (B, ...) whose samples have indices ``index`` (B,)."""
        keys = index.tolist()
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            fresh = compute(x[missing]).detach().cpu()  # (M, F)
            for i, q in zip(missing, fresh, strict=True):
                self.store[keys[i]] = q
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.store[k] for k in keys]).to(x.device)  # (B, F)
