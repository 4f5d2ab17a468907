"""Throughput of the CPU selective scans at VideoMamba widths (promptcl/backbones/selective_scan.py).

Tokens per second of one scan direction, batch 1, d_state 16, forward alone (no autograd) and
forward + backward (gradients of u, delta, A, B, C, D, z and delta_bias), for:

- custom, auto K: ``selective_scan_chunked`` (the default on a CPU: one custom autograd function)
  with its automatic chunk length; at these widths K = L, i.e. the plain loop in place,
- custom, K=...: the same with a forced chunk length (K < L: the chunked scan),
- reference: ``selective_scan_ref``, the plain loop with autograd through it.

    python benchmarks/selective_scan.py [--threads 1] [--lengths 197 785 1569] [--repeats 3]
        [--chunks 28 1569] [--no-sequential] [--fresh-memory]

Large blocks are reused (``keep_freed_memory``) unless ``--fresh-memory``.

E = 384 is VideoMamba-Ti's inner width (2 x 192), E = 1152 VideoMamba-M's (2 x 576); L = 1569 is
an 8-frame 224-pixel clip (1 + 8 x 196 tokens). Prints a markdown table; the median of the
repeats is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from promptcl.backbones.selective_scan import (
    chunk_length,
    keep_freed_memory,
    selective_scan_chunked,
    selective_scan_ref,
)

WIDTHS = {"Ti": 384, "M": 1152}


def inputs(E: int, L: int, N: int = 16, grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u, z, delta = (torch.randn(1, E, L, generator=g) for _ in range(3))
    A = -torch.rand(E, N, generator=g) * N
    B, C = torch.randn(1, N, L, generator=g), torch.randn(1, N, L, generator=g)
    D, bias = torch.randn(E, generator=g), torch.randn(E, generator=g) - 4
    return [t.requires_grad_(grad) for t in (u, delta, A, B, C, D, z, bias)]


def timed(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(scan, E: int, L: int, backward: bool, repeats: int) -> float:
    args = inputs(E, L, grad=backward)

    def run() -> None:
        if backward:
            y = scan(*args)
            torch.autograd.grad(y.sum(), args)
        else:
            with torch.no_grad():
                scan(*args)

    return L / timed(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[197, 785, 1569])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="*", default=[], help="forced chunk lengths")
    parser.add_argument("--no-sequential", action="store_true", help="skip the slow reference")
    parser.add_argument(
        "--fresh-memory", action="store_true", help="leave malloc alone (no keep_freed_memory)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = not args.fresh_memory and keep_freed_memory()

    def chunked(K: int | None):
        return lambda *a: selective_scan_chunked(*a, delta_softplus=True, chunk=K)

    scans = [("custom, auto K", None)] + [(f"custom, K={K}", K) for K in args.chunks]
    memory = "freed memory kept (keep_freed_memory)" if kept else "malloc defaults"
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, d_state 16, {memory}\n")
    print("| model | E | L | scan | K | forward tokens/s | fwd+bwd tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for model, E in WIDTHS.items():
        for L in args.lengths:
            rows = [(name, chunked(K), K or chunk_length(L, E * 16)) for name, K in scans]
            if not args.no_sequential:
                ref = lambda *a: selective_scan_ref(*a, delta_softplus=True)  # noqa: E731
                rows.append(("reference (autograd loop)", ref, "-"))
            for name, scan, K in rows:
                fwd = measure(scan, E, L, False, args.repeats)
                both = measure(scan, E, L, True, args.repeats)
                print(f"| {model} | {E} | {L} | {name} | {K} | {fwd:,.0f} | {both:,.0f} |")


if __name__ == "__main__":
    main()
