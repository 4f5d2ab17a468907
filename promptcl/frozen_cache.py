"""Frozen passes computed once per run: a cache keyed by (pass, view, sample index).

A frozen backbone run without prompts gives the same output every time it reads the same input.
Test images, validation images and the plain view of training images (the test-time transforms)
are deterministic, so a sample's frozen pass needs computing once per run. Without the cache, a
class-incremental run recomputes the frozen query of each test image after every task (up to T
times), and the frozen features of a task's training images in ``end_task`` and in the phases'
``prepare``/``finish``.

How it is used: the engine binds the sample keys of each batch it hands over (``bind``): the
view ("test", or "plain" for the training set's test-time view, which also holds the
validation samples) and each sample's index in its source dataset. A method routes its frozen,
prompt-free passes through ``Method.frozen(x, compute, name)``; with keys bound, the cache
returns stored rows and computes only the samples it has not seen (``name`` tells several
frozen passes apart, e.g. a backbone's query and an auxiliary CLIP's). With nothing bound
(training batches through the training transforms, batches a method makes, ``promptcl bench``
without the cache, any call outside a run) ``compute(x)`` runs as before. Training views are
left to the opt-in ``prompts.query.QueryCache``: augmentation makes them differ each epoch.

Exactness: a stored row is the value computed for that sample, in an earlier batch. It equals a
recomputation up to the last bits a batched matrix product may change with the batch's size
(the tests check that accuracy matrices are identical with and without the cache). Rows are
kept apart by autocast state: a pass computed in bf16 (evaluation) never answers one in fp32
(``end_task``).

Memory: one array of rows per (pass, view, autocast state), in RAM or in a memory-mapped file
under ``train.frozen_cache_dir`` (for caches larger than RAM), filled in the order samples
arrive, and a map from each sample key to its row. The arrays together hold at most
``train.frozen_cache_mb``; once full, new samples are computed every time and not stored.

Resume: the cache is not saved; a resumed run fills it again as it reads the samples. Several
processes: each process caches the samples of its own batches.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

View = str  # "test" or "plain"


@dataclass
class _Store:
    values: Tensor  # (max(room, 1), *shape): the stored rows are values[:used]
    slot: Tensor  # (capacity,) int64: each sample key's row in values, -1 if not stored
    room: int  # the rows it may fill (0 when the limit left no room)
    used: int = 0

    @property
    def row_bytes(self) -> int:
        return self.values[0].numel() * self.values.element_size()


class FrozenCache:
    """Rows of frozen passes per sample; ``capacity`` is each view's number of sample keys."""

    def __init__(
        self, capacity: dict[View, int], limit_mb: float = 4096, directory: Path | None = None
    ):
        self.capacity = dict(capacity)
        self.limit_bytes = int(limit_mb * 2**20)
        self._tmp = (
            tempfile.TemporaryDirectory(prefix="promptcl-frozen-", dir=directory)
            if directory is not None
            else None
        )
        self.stores: dict[tuple, _Store] = {}
        self.bytes = 0  # in stored rows
        self.reserved = 0  # in the arrays' rows, stored or not
        self.hits: dict[View, int] = dict.fromkeys(self.capacity, 0)
        self.misses: dict[View, int] = dict.fromkeys(self.capacity, 0)
        self._bound: tuple[View, Tensor] | None = None

    # -- what the engine does ---------------------------------------------------------------
    @contextlib.contextmanager
    def bind(self, view: View, index: Tensor, views_per_sample: int = 1) -> Iterator[None]:
        """Within the block, a frozen pass of a batch of ``len(index)`` samples (or of their
        ``views_per_sample`` test views each, flattened sample-major) reads the cache."""
        if view not in self.capacity:
            raise KeyError(f"unknown view {view!r}; the cache holds {sorted(self.capacity)}")
        keys = index.detach().cpu().long()
        if views_per_sample > 1:
            keys = (keys[:, None] * views_per_sample + torch.arange(views_per_sample)).flatten()
        previous, self._bound = self._bound, (view, keys)
        try:
            yield
        finally:
            self._bound = previous

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """Rows read from the cache (hits) and computed (misses) per view, since the last reset,
        and the MB the cache holds."""
        stats = {"hits": dict(self.hits), "misses": dict(self.misses), "mb": self.bytes / 2**20}
        if reset:
            self.hits, self.misses = dict.fromkeys(self.hits, 0), dict.fromkeys(self.misses, 0)
        return stats

    def close(self) -> None:
        self.stores.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- what a method's frozen pass does -----------------------------------------------------
    def __call__(self, x: Tensor, compute: Callable[[Tensor], Tensor], name: str) -> Tensor:
        """``compute(x)``, with the rows of samples seen before read from the cache."""
        if self._bound is None or len(self._bound[1]) != len(x):
            return compute(x)  # no keys for this batch (or not the bound batch): uncached
        view, keys = self._bound
        key = (name, view, _autocast_state(x.device))
        store = self.stores.get(key)
        if store is None:
            out = compute(x)
            self.stores[key] = store = self._allocate(key, out)
            self._put(store, keys, out)
            self.misses[view] += len(keys)
            return out
        slots = store.slot[keys]
        have = slots >= 0
        hits = int(have.sum())
        self.hits[view] += hits
        self.misses[view] += len(keys) - hits
        if hits == 0:
            out = compute(x)
            self._put(store, keys, out)
            return out
        out = store.values[slots.clamp(min=0)].to(x.device)
        if hits < len(keys):
            missing = (~have).nonzero().squeeze(1)
            fresh = compute(x[missing.to(x.device)])
            out[missing.to(x.device)] = fresh
            self._put(store, keys[missing], fresh)
        return out

    def _allocate(self, key: tuple, out: Tensor) -> _Store:
        """An array for as many rows of ``out``'s shape as the view has samples and the limit
        leaves room for (virtual memory until written)."""
        name, view, _ = key
        row_bytes = max(out[0].numel() * out.element_size(), 1)
        room = max(min(self.capacity[view], (self.limit_bytes - self.reserved) // row_bytes), 0)
        shape = (max(room, 1), *out.shape[1:])
        if self._tmp is None:
            values = torch.empty(shape, dtype=out.dtype)
        else:
            file = Path(self._tmp.name) / f"{name}-{view}-{len(self.stores)}.bin"
            values = torch.from_file(
                str(file), shared=True, size=shape[0] * out[0].numel(), dtype=out.dtype
            )
            values = values.view(shape)
        self.reserved += room * row_bytes
        return _Store(values, torch.full((self.capacity[view],), -1, dtype=torch.long), room)

    def _put(self, store: _Store, keys: Tensor, rows: Tensor) -> None:
        """Store the rows of samples not stored yet (each once), while the array has room."""
        fresh = (store.slot[keys] < 0).nonzero().squeeze(1)
        _, first = np.unique(keys[fresh].numpy(), return_index=True)  # a key twice in a batch
        pick = fresh[torch.from_numpy(first)][: store.room - store.used]
        if len(pick):
            at = torch.arange(store.used, store.used + len(pick))
            store.values[at] = rows.detach()[pick.to(rows.device)].cpu()
            store.slot[keys[pick]] = at
            store.used += len(pick)
            self.bytes += len(pick) * store.row_bytes


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        return (False, None)
    return (True, torch.get_autocast_dtype(kind))


class KeyedLoader:
    """A loader of ``(x, y, index, ...)`` batches over a view's samples, each batch bound to the
    cache while the consumer holds it (so a method iterates it like the loader itself)."""

    def __init__(self, loader: Iterable, cache: FrozenCache, view: View):
        self.loader, self.cache, self.view = loader, cache, view

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    @property
    def dataset(self):
        return self.loader.dataset  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            with self.cache.bind(self.view, batch[2]):
                yield batch
