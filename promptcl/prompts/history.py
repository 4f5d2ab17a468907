"""History-aware modulation of a shared prompt pool (Hash, CVPR 2026; seed document 002).

H_e counts how often expert e was among a sample's Top-K selections in the tasks trained so far.
Two functions of H shape the training of the next task:

- the routing penalty phi (HDR):    s~_e = s_e - phi(H_e)
- the gradient decay psi (HGM):     g~_e = psi(H_e) g_e,  psi in (0, 1]

The seed's defaults are piecewise constant on the most-activated set A_t, "the Top-K high-frequency
experts": phi = delta on A_t, psi = beta on A_t, and nothing elsewhere. The smooth variants are
ours [inferred], for users who want the pluggable functions the paper describes. Each function maps
(counts (E,), size of A_t, strength) to a per-expert vector (E,). Add an entry to ``PENALTIES`` or
``DECAYS`` to plug in another.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Modulation = Callable[[Tensor, int, float], Tensor]


def most_activated(counts: Tensor, size: int) -> Tensor:
    """A_t as a mask (E,): the ``size`` experts with the largest counts, among those ever used.

    Before any expert was used (task 0) A_t is empty; ties break towards the lower index.
    """
    mask = torch.zeros_like(counts, dtype=torch.bool)
    used = int((counts > 0).sum())
    if used:
        order = torch.sort(counts, descending=True, stable=True).indices
        mask[order[: min(size, used)]] = True
    return mask


def share(counts: Tensor) -> Tensor:
    """H_e / max H, in [0, 1] (all zero before any expert was used)."""
    return counts.float() / counts.max().clamp(min=1).float()


def no_penalty(counts: Tensor, size: int, delta: float) -> Tensor:
    return torch.zeros_like(counts, dtype=torch.float)


def top_k_penalty(counts: Tensor, size: int, delta: float) -> Tensor:
    """The seed's default: delta on A_t, 0 elsewhere."""
    return delta * most_activated(counts, size).float()


def proportional_penalty(counts: Tensor, size: int, delta: float) -> Tensor:
    """delta * H_e / max H [inferred variant]."""
    return delta * share(counts)


def no_decay(counts: Tensor, size: int, beta: float) -> Tensor:
    return torch.ones_like(counts, dtype=torch.float)


def top_k_decay(counts: Tensor, size: int, beta: float) -> Tensor:
    """The seed's default: beta on A_t, 1 elsewhere."""
    return torch.where(most_activated(counts, size), beta, 1.0)


def power_decay(counts: Tensor, size: int, beta: float) -> Tensor:
    """beta ** (H_e / max H): 1 for unused experts, beta for the most used [inferred variant]."""
    return beta ** share(counts)


PENALTIES: dict[str, Modulation] = {
    "none": no_penalty,
    "top-k": top_k_penalty,
    "proportional": proportional_penalty,
}
DECAYS: dict[str, Modulation] = {"none": no_decay, "top-k": top_k_decay, "power": power_decay}


def scale_gradient(x: Tensor, scale: Tensor) -> Tensor:
    """x, unchanged, whose gradient is multiplied by ``scale`` (broadcast to x) in the backward."""
    if not x.requires_grad:
        return x
    y = x.view_as(x)
    y.register_hook(lambda grad: grad * scale)
    return y
