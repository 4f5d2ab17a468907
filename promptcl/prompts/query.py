"""The frozen query of key-query prompt methods, with an optional per-sample cache.

L2P, DualPrompt, CODA-Prompt and HiDe-Prompt select or weight their prompts with q(x), the final
class-token feature of the same frozen backbone run *without* prompts. Every peer recomputes it
on every step, roughly doubling the cost of training (../shared/specs/peer-frameworks.md §7.2).

The cache stores q per training sample, keyed by the sample's index in its training set. The
backbone is frozen, so a cached query equals a recomputed one whenever the sample is read
through the same view: exact when training images are not augmented (``data.augment: false``).
With augmentation, the cache keeps the query of the first augmented view it saw, which changes
the method; that is why it is off by default.

The cache is part of the method's state (``get_extra_state``: the keys and queries as tensors),
so a resumed run reads the queries the interrupted one had cached and stays exact with
augmentation too. With several processes each caches the samples of its own slices; ``share``
(called when an epoch ends) gives every process the union, so that every process holds, and a
checkpoint saves, the same cache. The method clears it when a task begins (its samples are new).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from promptcl import collectives


class QueryCache(nn.Module):
    """Per-sample store of query features, on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[int, Tensor] = {}
        self.fresh: list[int] = []  # keys added since the last ``share``
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
                self.fresh.append(keys[i])
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.store[k] for k in keys]).to(x.device)  # (B, F)

    def clear(self) -> None:
        self.store.clear()
        self.fresh.clear()

    def share(self) -> None:
        """Give every process the queries every other process cached since the last call."""
        if collectives.is_distributed():
            mine = [self.store[k] for k in self.fresh]
            # A process that cached nothing still sends a (0, F) block: F comes from the others.
            width, holders = collectives.all_reduce_sum(
                torch.tensor([mine[0].numel() if mine else 0, int(bool(mine))])
            ).tolist()
            values = torch.stack(mine).float() if mine else torch.zeros(0, width // max(holders, 1))
            keys = collectives.all_gather_cat(torch.tensor(self.fresh, dtype=torch.long))
            values = collectives.all_gather_cat(values)  # float32 on the wire, exact for bf16
            dtype = mine[0].dtype if mine else next(iter(self.store.values()), values).dtype
            for k, q in zip(keys.tolist(), values.to(dtype), strict=True):
                self.store.setdefault(k, q)
        self.fresh.clear()

    def get_extra_state(self) -> dict[str, Any]:
        keys = sorted(self.store)
        values = torch.stack([self.store[k] for k in keys]) if keys else torch.zeros(0)
        return {"keys": torch.tensor(keys, dtype=torch.long), "values": values}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.clear()
        self.store.update(zip(state["keys"].tolist(), state["values"], strict=True))
