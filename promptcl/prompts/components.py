"""Attention-weighted prompt components (CODA-Prompt's pool), and per-task row slicing.

Per prompted layer l, the pool holds M components P_l (M, L, D), keys K_l (M, D_q) and attention
vectors A_l (M, D_q). For a query q (B, D_q), the frozen prompt-free feature of the input,

    α_m(x) = cos(q ⊙ A_m, K_m)          (CODA-Prompt, Smith et al., CVPR 2023)
    p(x)   = Σ_m α_m(x) P_m              no softmax, no top-k

over the rows in use. The rows are allotted to tasks: task t of T owns rows [s, f) with
s = t·⌊M/T⌋, f = s + ⌊M/T⌋ (``task_rows``). While task t trains, rows [0, s) are used detached,
rows [s, f) are trained and rows [f, M) are unused; in evaluation rows [0, f) are used
(``active_rows``). At the start of each task the new rows of P (flattened to (M, L·D)), K and A are
re-initialised by Gram-Schmidt against every earlier row (``gram_schmidt_``), as in
GT-RIPL/CODA-Prompt ``models/zoo.py::CodaPrompt.process_task_count``. Rows never started are zero,
as in the official code.

Shapes are fixed at construction (the whole pool is preallocated), so ``state_dict()`` is the pool
at any point of the stream; the current allotment (s, f) is a function of the task alone and is
set again by ``begin_task`` when a run is resumed.

``task_rows``, ``active_rows`` and ``gram_schmidt_`` are the reusable slot pattern of
specs/image-methods.md §6.3 (STAR-Prompt, HiDe and others slice per-task rows the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Orthogonalize = Literal["official", "exact"]
EPS = 1e-12  # torch.nn.functional.normalize's default, used by the official cosine


def task_rows(task: int, num_tasks: int, total: int) -> tuple[int, int]:
    """Rows [s, f) of a pool of ``total`` rows owned by ``task`` of ``num_tasks``.

    Each task gets ⌊total / num_tasks⌋ rows (``int(e_pool_size / n_tasks)`` in the official code);
    with a remainder, the last rows are never used.
    """
    per_task = total // num_tasks
    if per_task == 0:
        raise ValueError(f"{total} rows cannot be shared among {num_tasks} tasks (0 each)")
    if not 0 <= task < num_tasks:
        raise ValueError(f"task {task} is outside 0..{num_tasks - 1}")
    return task * per_task, (task + 1) * per_task


def active_rows(rows: Tensor, start: int, end: int, training: bool) -> Tensor:
    """(M, ...) -> (end, ...): rows [0, start) detached while training, [start, end) live.

    In evaluation every row [0, end) is returned as is (no gradient flows in evaluation anyway).
    """
    if not training:
        return rows[:end]
    return torch.cat([rows[:start].detach(), rows[start:end]], dim=0)


@torch.no_grad()
def gram_schmidt_(rows: Tensor, start: int, end: int, mode: Orthogonalize = "official") -> Tensor:
    """Re-initialise rows [start, end) of ``rows`` (M, n) in place; returns ``rows``.

    Each new row k is a standard normal vector (one (end - start, n) draw from the torch RNG)
    from which the projections on rows [0, k) are removed, then scaled to unit norm. Rows outside
    [start, end) are not touched.

    mode "official": classical Gram-Schmidt, v_k - Σ_{j<k} (v_k·u_j / u_j·u_j) u_j, projecting on
      the old rows *as they are* (``CodaPrompt.gram_schmidt``). The new rows are exactly orthogonal
      to the old ones only while those are mutually orthogonal, which training breaks. Rows with
      u_j·u_j < 1e-8 are skipped (the official code would redraw forever).
    mode "exact": the projection on the span of all earlier rows (an orthonormal basis of the old
      rows by QR, projected out twice), so new rows are orthogonal to every earlier row even after
      training. Equal to "official" (up to rounding) whenever the old rows are orthogonal.
    """
    if mode not in ("official", "exact"):
        raise ValueError(f"unknown Gram-Schmidt mode {mode!r}: 'official' or 'exact'")
    if not 0 <= start <= end <= rows.shape[0]:
        raise ValueError(f"rows [{start}, {end}) are outside a pool of {rows.shape[0]}")
    if end > rows.shape[1]:
        raise ValueError(f"{end} rows of width {rows.shape[1]} cannot all be orthogonal")
    fresh = torch.randn(end - start, rows.shape[1], dtype=rows.dtype, device=rows.device)
    if mode == "official":
        for k, v in enumerate(fresh, start):
            done = rows[:k]  # (k, n)
            norms = (done * done).sum(1)  # (k,)
            coef = (done @ v) / norms.clamp_min(1e-8) * (norms >= 1e-8)  # (k,)
            u = v - coef @ done  # (n,)
            rows[k] = u / u.norm()
        return rows
    basis = torch.linalg.qr(rows[:start].T.double()).Q  # (n, s): orthonormal, spans old rows
    for k, v in enumerate(fresh.double(), start):
        u = v
        for _ in range(2):  # "twice is enough" (Giraud et al. 2005)
            u = u - basis @ (basis.T @ u)  # (n,)
        u = u / u.norm()
        basis = torch.cat([basis, u[:, None]], dim=1)
        rows[k] = u.to(rows.dtype)
    return rows


def ortho_penalty(rows: Tensor) -> Tensor:
    """(k, n) -> mean((R Rᵀ - I)²), the official ``ortho_penalty``."""
    eye = torch.eye(rows.shape[0], dtype=rows.dtype, device=rows.device)
    return ((rows @ rows.T - eye) ** 2).mean()


def component_weights(query: Tensor, keys: Tensor, attention: Tensor) -> Tensor:
    """α = cos(q ⊙ A_m, K_m): query (B, D_q), keys (k, D_q), attention (k, D_q) -> (B, k).

    Computed without the (B, k, D_q) product of the official einsum: the numerator is
    q · (A_m ⊙ K_m) and ‖q ⊙ A_m‖² = q² · A_m², with both norms clamped at 1e-12 like
    ``F.normalize``. Equal to the official formula up to rounding.
    """
    dot = query @ (attention * keys).T  # (B, k)
    query_norm = (query.square() @ attention.square().T).clamp_min(EPS**2).sqrt()  # (B, k)
    key_norm = keys.norm(dim=1).clamp_min(EPS)  # (k,)
    return dot / (query_norm * key_norm)


class ComponentPool(nn.Module):
    """Per-layer prompt components, keys and attention vectors, weighted by the query.

    layers:         the prompted block indices, e.g. [0, 1, 2, 3, 4]
    num_components: M, the rows of the whole stream (shared among tasks by ``begin_task``)
    length:         L, prompt tokens per component (a prefix method splits them, see prefix.py)
    embed_dim:      D, the width of a prompt token (the backbone's token width)
    query_dim:      D_q, the width of the query q(x) (the backbone's pooled feature)
    orthogonalize:  "official" or "exact" Gram-Schmidt of new rows (see ``gram_schmidt_``)
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_components: int,
        length: int,
        embed_dim: int,
        query_dim: int,
        orthogonalize: Orthogonalize = "official",
    ):
        super().__init__()
        widest = min(query_dim, length * embed_dim)
        if num_components > widest:
            raise ValueError(
                f"{num_components} components cannot be orthogonal in {widest} dimensions (keys "
                f"of width {query_dim}, prompts of {length}x{embed_dim}): use at most {widest}"
            )
        self.layers = list(layers)
        self.orthogonalize: Orthogonalize = orthogonalize
        n, M = len(self.layers), num_components
        # Zero until a task claims the rows (the official code's rows beyond the current task).
        self.components = nn.Parameter(torch.zeros(n, M, length, embed_dim))  # (layers, M, L, D)
        self.keys = nn.Parameter(torch.zeros(n, M, query_dim))  # (layers, M, D_q)
        self.attention = nn.Parameter(torch.zeros(n, M, query_dim))  # (layers, M, D_q)
        self.start, self.end = 0, 0  # rows [start, end) belong to the current task

    @property
    def num_components(self) -> int:
        return self.components.shape[1]

    def begin_task(self, task: int, num_tasks: int) -> None:
        """Claim the task's rows and re-initialise them (per layer: K, then A, then P)."""
        self.start, self.end = task_rows(task, num_tasks, self.num_components)
        keys, attention, components = self.keys.data, self.attention.data, self.components.data
        for i in range(len(self.layers)):
            for rows in (keys[i], attention[i], components[i].flatten(1)):  # views: (M, n)
                gram_schmidt_(rows, self.start, self.end, self.orthogonalize)

    def active(self, layer_index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Rows in use at position ``layer_index`` of ``layers``.

        Returns K (k, D_q), A (k, D_q), P (k, L, D) with k = end: earlier tasks' rows detached
        while training.
        """
        if self.end == 0:
            raise RuntimeError("begin_task was not called on the component pool")
        keys, attention, components = (
            active_rows(t[layer_index], self.start, self.end, self.training)
            for t in (self.keys, self.attention, self.components)
        )
        return keys, attention, components

    def weights(self, query: Tensor, layer_index: int) -> Tensor:
        """α (B, k) of the rows in use at position ``layer_index`` of ``layers``."""
        keys, attention, _ = self.active(layer_index)
        return component_weights(query, keys, attention)

    def forward(self, query: Tensor) -> dict[int, Tensor]:
        """query (B, D_q) -> {layer: p(x) (B, L, D)}."""
        prompts = {}
        for i, layer in enumerate(self.layers):
            keys, attention, components = self.active(i)
            alpha = component_weights(query, keys, attention)  # (B, k)
            prompts[layer] = torch.einsum("bk,kld->bld", alpha, components)  # (B, L, D)
        return prompts

    def penalty(self) -> Tensor:
        """Σ_layers mean((KKᵀ-I)²) + mean((AAᵀ-I)²) + mean((P̄P̄ᵀ-I)²) over the rows in use."""
        total = self.keys.new_zeros(())
        for i in range(len(self.layers)):
            keys, attention, components = self.active(i)
            total = total + ortho_penalty(keys) + ortho_penalty(attention)
            total = total + ortho_penalty(components.flatten(1))
        return total
