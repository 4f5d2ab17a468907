"""Mamba's selective scan (S6) in plain PyTorch, for CPUs, with the CUDA kernels where they exist.

The scan of Mamba (Gu & Dao, 2023), per batch row b, channel e < E and state n < N:

    dt_t = softplus(delta_t + delta_bias)             (when delta_softplus)
    h_t  = exp(dt_t A) * h_{t-1} + dt_t B_t u_t       (h_{-1} = 0)
    y_t  = sum_n C_t h_t + D u_t,   then  y_t * silu(z_t)   (when z is given)

in the layout of ``mamba_ssm``'s ``selective_scan_fn``: u, delta, z (B, E, L); A (E, N); B, C
(B, N, L) (input-dependent); D, delta_bias (E,). The arithmetic is done in float32 at least (float64
stays float64) and the output has u's dtype, as in ``mamba_ssm``'s reference.

Three implementations, one semantics:

- ``selective_scan_ref``: the plain loop over L; autograd runs through it. It is the reference the
  others are tested against.
- the chunked scan (the default on CPUs): a custom autograd function. The discretised
  a_t = exp(dt_t A) and b_t = dt_t B_t u_t are materialised as (L, B, E, N) tensors and the linear
  recurrence h_t = a_t h_{t-1} + b_t is solved in place over b: the sequence is cut into m chunks
  of K steps; pass 1 runs the K steps inside every chunk at once (zero start state) while
  multiplying up each chunk's decay; pass 2 carries the end states across the m chunks; pass 3
  adds each chunk's incoming state, decayed, to its K positions. That is 2K + m Python-level steps
  instead of L, each over m times more data, with about twice the arithmetic of the loop: it pays
  when one step's tensor (B * E * N elements) is small and the per-step overhead dominates; for
  larger ones the plain loop (K = L) is used (``chunk_length``; measured in
  benchmarks/selective_scan.py). Decays are multiplied, never divided, so nothing overflows (no
  exp(-cumsum) trick). The backward is the same recurrence run from the end (g_t = dL/dh_t =
  dy_t C_t + a_{t+1} g_{t+1}), then dL/da_t = g_t h_{t-1} and dL/db_t = g_t, contracted to the
  inputs' gradients; only a and h are kept between the passes.
- ``mamba_ssm``'s CUDA kernel (``pip install promptcl[mamba]``), used by ``impl="auto"`` when the
  tensors are on a GPU and ``mamba_ssm`` imports; nothing else of ``mamba_ssm`` is used. It is
  not tested here (no GPU); it takes the same arguments and the same formula.

The memory is the price on a CPU: a and h are (L, B, E, N) each, ~116 MB in float32 for one
VideoMamba-M clip (E = 1152, L = 1569), kept per direction and block for the backward; train
through many blocks with activation checkpointing (``backbone.activation_checkpointing``).
Allocating such tensors afresh costs about as much as computing them (glibc maps and page-faults
every large block): ``keep_freed_memory`` asks malloc to reuse freed memory instead.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

Impl = Literal["auto", "chunked", "sequential", "cuda"]

# From this many elements per step (B * E * N) on, the plain loop beats the chunked scan on a CPU:
# the per-step overhead is then small against the arithmetic, which the chunks double. Measured
# with one thread at L = 1569 (benchmarks/selective_scan.py): chunks win at E * N = 384 and 1536
# (1.3-1.9x), lose from 3072 on.
SEQUENTIAL_ABOVE = 2048


def chunk_length(length: int, step_elements: int) -> int:
    """The chunk length K the chunked scan uses: sqrt(L / 2) (fewest Python steps 2K + L/K),
    or L (the plain loop) when one step's tensor is large."""
    if step_elements >= SEQUENTIAL_ABOVE:
        return length
    return max(2, round(math.sqrt(length / 2)))


# ---- the linear recurrence h_t = a_t h_{t-1} + b_t -------------------------------------------


def _scan_(a: Tensor, h: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """In place along dim 0: h_t <- a_t h_{t-1} + h_t from the start (h holds b on entry,
    h_{-1} = 0); reverse: h_t <- a_t h_{t+1} + h_t from the end (h_L = 0)."""
    L = h.shape[0]
    m = L // chunk
    back = -1 if reverse else 1  # where a step reads its predecessor: t - back
    if m < 2:  # one chunk: the plain loop
        for t in range(L - 2, -1, -1) if reverse else range(1, L):
            h[t].addcmul_(a[t], h[t - back])
        return h
    K, rest = chunk, h.shape[1:]
    lo = L - m * K if reverse else 0  # whole chunks cover [lo, lo + m K)
    av, hv = a[lo : lo + m * K].view(m, K, *rest), h[lo : lo + m * K].view(m, K, *rest)
    first, inner = (K - 1, range(K - 2, -1, -1)) if reverse else (0, range(1, K))
    decay = av[:, first].clone()  # (m, ...) each chunk's product of a
    for t in inner:  # pass 1: inside every chunk at once, from a zero state
        hv[:, t].addcmul_(av[:, t], hv[:, t - back])
        decay.mul_(av[:, t])
    # pass 2: the state entering each chunk but the first one scanned, chunk after chunk
    carry = torch.empty_like(decay[1:])  # (m - 1, ...)
    if reverse:  # carry[j] enters chunk j from chunk j + 1
        carry[m - 2] = hv[m - 1, 0]
        for j in range(m - 3, -1, -1):
            torch.addcmul(hv[j + 1, 0], decay[j + 1], carry[j + 1], out=carry[j])
        receivers, positions = slice(0, m - 1), range(K - 1, -1, -1)
    else:  # carry[j] enters chunk j + 1 from chunk j
        carry[0] = hv[0, K - 1]
        for j in range(1, m - 1):
            torch.addcmul(hv[j, K - 1], decay[j], carry[j - 1], out=carry[j])
        receivers, positions = slice(1, m), range(K)
    for t in positions:  # pass 3: the incoming state, decayed to each position
        carry.mul_(av[receivers, t])
        hv[receivers, t].add_(carry)
    for t in range(lo - 1, -1, -1) if reverse else range(m * K, L):  # the ragged end
        h[t].addcmul_(a[t], h[t - back])
    return h


# ---- the selective scan ------------------------------------------------------------------------


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _delta(delta: Tensor, delta_bias: Tensor | None, softplus: bool, dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if softplus else delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(B, E, L) scan output -> + D u, gated by silu(z), in u's dtype."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The selective scan as a plain loop over the L positions (the reference). Shapes as in the
    module docstring; returns (B, E, L)."""
    work = _work_dtype(u.dtype)
    dt = _delta(delta, delta_bias, delta_softplus, work)  # (B, E, L)
    A, B, C, x = A.to(work), B.to(work), C.to(work), u.to(work)
    h = x.new_zeros(x.shape[0], A.shape[0], A.shape[1])  # (B, E, N)
    ys = []
    for t in range(x.shape[-1]):
        decay = torch.exp(dt[:, :, t, None] * A)  # (B, E, N)
        h = decay * h + (dt[:, :, t] * x[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))  # (B, E)
    y = torch.stack(ys, dim=-1) if ys else x.new_zeros(x.shape)
    return _finish(y, x, D, z, u.dtype)


class _ChunkedScan(torch.autograd.Function):
    """y_t = sum_n C_t h_t with h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t, h_{-1} = 0.

    dt, x (L, B, E); A (E, N); B, C (L, B, N) -> y (L, B, E), all in one dtype. Keeps a and h
    (L, B, E, N) for the backward, which allocates two more such tensors: the gradient g of h,
    then g * h_{t-1} * a (the gradient of dt A) in g's memory, and one product with A.
    """

    @staticmethod
    def forward(ctx, dt: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int):
        a = (dt.unsqueeze(-1) * A).exp_()  # (L, B, E, N)
        h = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # (L, B, E, N): b, then h in place
        _scan_(a, h, chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(dt, x, A, B, C, a, h)
        return (h * C.unsqueeze(2)).sum(-1)  # (L, B, E); faster than a batched matmul

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        dt, x, A, B, C, a, h = ctx.saved_tensors
        L, batch, width, state = h.shape
        dy = dy.contiguous()  # (L, B, E); e.g. a sum's gradient is a stride-0 expansion

        def contract_width(w: Tensor, t: Tensor) -> Tensor:  # sum_e w_e t_en: (L, B, N)
            return torch.bmm(w.view(-1, 1, width), t.view(-1, width, state)).view(L, batch, state)

        dC = contract_width(dy, h)
        # g_t = dL/dh_t in full = dy_t C_t + a_{t+1} g_{t+1}: the scan backwards, a shifted by one
        g = dy.unsqueeze(-1) * C.unsqueeze(2)  # (L, B, E, N)
        if g.shape[0] > 1:
            g[-2].addcmul_(a[-1], g[-1])
            _scan_(a[1:], g[:-1], ctx.chunk, reverse=True)
        gB = (g * B.unsqueeze(2)).sum(-1)  # (L, B, E): dL/d(dt x)
        dB = contract_width(dt * x, g)
        q = g  # dL/d(dt A) = g_t h_{t-1} a_t, written over g
        q[1:].mul_(h[:-1])
        q[0] = 0
        q.mul_(a)
        ddt = (q * A).sum(-1) + gB * x  # (L, B, E)
        dA = q.mul_(dt.unsqueeze(-1)).sum((0, 1))  # (E, N)
        return ddt, gB * dt, dA, dB, dC, None


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int | None = None,
) -> Tensor:
    """The selective scan, chunked (module docstring). ``chunk``: the chunk length K (None:
    ``chunk_length``; K >= L runs the plain loop)."""
    work = _work_dtype(u.dtype)
    dt = _delta(delta, delta_bias, delta_softplus, work).permute(2, 0, 1)  # (L, B, E)
    L, batch = dt.shape[:2]
    if chunk is None:
        chunk = chunk_length(L, batch * A.numel())
    y = _ChunkedScan.apply(
        dt.contiguous(),
        u.to(work).permute(2, 0, 1).contiguous(),
        A.to(work).contiguous(),
        B.to(work).permute(2, 0, 1).contiguous(),
        C.to(work).permute(2, 0, 1).contiguous(),
        max(1, int(chunk)),
    )  # (L, B, E)
    return _finish(y.permute(1, 2, 0), u.to(work), D, z, u.dtype)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    The scans allocate several (L, B, E, N) tensors per call; by default glibc maps each such
    block afresh and page-faults it in, which costs as much as the arithmetic on a CPU (about
    half of a training step here; benchmarks/selective_scan.py). This setting is process-wide and
    keeps the process's memory at its peak: ``promptcl pretrain videomamba`` and the benchmark
    call it, the library does not. Returns False where it does not apply (no glibc).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1)
    )


_CUDA_SCAN: list = []  # [selective_scan_fn or None], filled on first use


def cuda_scan_available() -> bool:
    """True if ``mamba_ssm``'s CUDA selective scan imports (``pip install promptcl[mamba]``)."""
    if not _CUDA_SCAN:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except Exception:  # not installed, or built for another torch / CUDA
            selective_scan_fn = None
        _CUDA_SCAN.append(selective_scan_fn)
    return _CUDA_SCAN[0] is not None


@torch.compiler.disable  # a Python loop over L: torch.compile would unroll it
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    impl: Impl = "auto",
) -> Tensor:
    """The selective scan (module docstring): u, delta, z (B, E, L); A (E, N); B, C (B, N, L);
    D, delta_bias (E,) -> (B, E, L).

    impl: "auto" (mamba_ssm's CUDA kernel for GPU tensors when it imports, else chunked),
    "chunked", "sequential" (``selective_scan_ref``) or "cuda" (an error if unavailable).
    """
    if impl == "auto":
        impl = "cuda" if u.is_cuda and cuda_scan_available() else "chunked"
    if impl == "cuda":
        if not (u.is_cuda and cuda_scan_available()):
            raise RuntimeError(
                "the CUDA selective scan needs GPU tensors and mamba_ssm "
                "(pip install 'promptcl[mamba]'); use impl='chunked' on a CPU"
            )
        # mamba_ssm wants D, delta_bias and A in float32, as Mamba's own module passes them.
        return _CUDA_SCAN[0](
            u,
            delta,
            A.float(),
            B,
            C,
            None if D is None else D.float(),
            z,
            None if delta_bias is None else delta_bias.float(),
            delta_softplus,
        )
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "sequential":
        return selective_scan_ref(*args)
    if impl == "chunked":
        return selective_scan_chunked(*args)
    raise ValueError(f"impl must be auto, chunked, sequential or cuda, not {impl!r}")
