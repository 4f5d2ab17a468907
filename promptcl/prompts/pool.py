"""A key-query prompt pool: M prompts, each with a learnable key, picked per sample by a query.

L2P (Wang et al., CVPR 2022, §4.2) introduced it; DualPrompt's E-prompts reuse it with one prompt
per task. For a query q(x) (the frozen backbone's prompt-free feature) the pool scores every prompt
by cos(q, k_m), selects the N most similar per sample (the paper's argmin of the cosine distance
γ = 1 − cos), and the "pull constraint" (the λ Σ γ(q, k_si) term of L2P's objective, ``reduce_sim``
in google-research/l2p ``models/prompt.py``) draws the selected keys towards their queries.

Each prompt has the shape the method asks for, with the pool axis first: ``(M, L, D)`` for
prompt-tuning tokens, ``(M, layers, 2, L, D)`` for per-layer prefixes in the "per_kv" convention
(``promptcl.prompts.prefix``). The official code keeps the layer axis first, ``(layers, M, L, D)``
and ``(layers, 2, M, L, H, D/H)``. With the pool axis first, ``prompts[indices]`` is already per
sample, which rules out the reshape-instead-of-permute bug of the PyTorch ports
(specs/peer-frameworks.md §7.3).

Selection is per sample. ``vote`` is the official ``batchwise_prompt`` (the batch's majority of
prompt ids replaces every sample's); at test time it acts as a task oracle, so methods call it only
behind an explicit flag.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# U(-1, 1): the PyTorch ports' "uniform" (JH-LEE-KR/l2p-pytorch, dualprompt-pytorch ``prompt.py``).
# U[0, 0.01): the JAX code's ``flax.linen.initializers.uniform()`` (google-research/l2p).
INIT_RANGES: dict[str, tuple[float, float]] = {"uniform": (-1.0, 1.0), "flax": (0.0, 0.01)}


class PromptPool(nn.Module):
    """M prompts of shape ``prompt_shape`` with M keys of width ``key_dim``, both learnable."""

    def __init__(
        self,
        size: int,
        key_dim: int,
        prompt_shape: tuple[int, ...],
        init: tuple[float, float] = INIT_RANGES["uniform"],
    ):
        super().__init__()
        low, high = init
        self.keys = nn.Parameter(torch.empty(size, key_dim).uniform_(low, high))  # (M, F)
        self.prompts = nn.Parameter(torch.empty(size, *prompt_shape).uniform_(low, high))  # (M, *S)

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def similarity(self, query: Tensor) -> Tensor:
        """(B, F) queries -> (B, M) cosine similarities with every key."""
        return F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T

    def select(
        self, query: Tensor, top_k: int, selectable: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Each sample's ``top_k`` most similar prompts.

        query: (B, F); selectable: optional (M,) bool, the prompts that may be chosen.
        Returns indices (B, top_k), most similar first, and the similarities (B, M).
        """
        available = self.size if selectable is None else int(selectable.sum())
        if not 0 < top_k <= available:
            raise ValueError(f"cannot select {top_k} of the {available} selectable prompts")
        sim = self.similarity(query)  # (B, M)
        scores = sim if selectable is None else sim.masked_fill(~selectable, float("-inf"))
        return scores.topk(top_k, dim=1).indices, sim

    def pull_loss(self, query: Tensor, indices: Tensor) -> Tensor:
        """The pull constraint: mean over the batch of Σ_selected (1 − cos(q, k_i)).

        query: (B, F); indices: (B, k). Equals the JAX ``−reduce_sim`` up to the constant k, so the
        gradients are the same. Only the keys receive gradient (the query is frozen).
        """
        q = F.normalize(query, dim=-1)  # (B, F)
        k = F.normalize(self.keys, dim=-1)[indices]  # (B, k, F)
        cos = (k * q.unsqueeze(1)).sum(dim=-1)  # (B, k)
        return (1 - cos).sum(dim=1).mean()

    def gather(self, indices: Tensor) -> Tensor:
        """(B, k) prompt ids -> (B, k, *prompt_shape), each sample its own prompts."""
        return self.prompts[indices]

    def vote(self, indices: Tensor) -> Tensor:
        """Batch-wise majority (the official ``batchwise_prompt``): (B, k) -> (B, k).

        The k ids chosen most often in the batch replace every sample's ids; ties go to the lower
        id, as ``jnp.unique`` + ``jax.lax.top_k`` in google-research/l2p ``models/prompt.py``.
        """
        counts = torch.bincount(indices.flatten(), minlength=self.size)  # (M,)
        order = torch.sort(counts, descending=True, stable=True).indices  # (M,)
        return order[: indices.shape[1]].expand(indices.shape[0], -1)  # (B, k)
