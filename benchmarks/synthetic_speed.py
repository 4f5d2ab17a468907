"""Generation speed of the synthetic benchmarks (images/s, videos/s). Not a test.

python benchmarks/synthetic_speed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from promptcl.data import synthetic as S  # noqa: E402


def _time(build, repeats: int = 2) -> tuple[float, int, float]:
    """Best-of-``repeats`` seconds of an uncached build, the item count, and a cached rebuild."""
    best = float("inf")
    for _ in range(repeats):
        S._shape_tensors.cache_clear()
        S._motion_tensors.cache_clear()
        start = time.perf_counter()
        pair = build()
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    build()
    return best, len(pair.train) + len(pair.test), time.perf_counter() - start


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cases = [
        ("synth-shapes-10 (100 cls, 60+20)", "images", S.synth_shapes_pair, 1),
        (
            "synth-shapes-pretrain (156 cls, 200+20)",
            "images",
            lambda: S.synth_shapes_pair("pretrain", 200, 20),
            1,
        ),
        ("synth-motion-5 (40 cls, 40+20, T=8)", "videos", S.synth_motion_pair, 8),
        ("synth-motion-5, T=16", "videos", lambda: S.synth_motion_pair(frames=16), 16),
    ]
    for name, unit, build, frames in cases:
        seconds, count, cached = _time(build)
        rate = f"{count / seconds:8.0f} {unit}/s"
        if unit == "videos":
            rate += f" ({count * frames / seconds:.0f} frames/s)"
        print(
            f"{name:42s} {count:6d} {unit} in {seconds:5.2f} s: {rate}; cached {cached * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
