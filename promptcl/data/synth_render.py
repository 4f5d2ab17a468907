"""Vectorised rendering of the synthetic world: shapes, colours, patterns, composed on backgrounds.

Everything is drawn with coordinate grids in torch (no per-pixel Python loops). A ``Layout``
describes N frames (one object each); ``render`` turns it into uint8 images. Shapes and patterns
are defined in the object's own frame ``(u, v)``: unit scale, ``v`` pointing up, so that the
object's radius, rotation and position are applied by one affine map per frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.88, 0.10),
    "green": (0.15, 0.72, 0.20),
    "cyan": (0.10, 0.80, 0.90),
    "blue": (0.15, 0.25, 0.95),
    "purple": (0.55, 0.15, 0.80),
    "pink": (1.00, 0.45, 0.75),
}


def _polygon(n: int, apothem: float, normal0: float) -> Callable[[Tensor, Tensor], Tensor]:
    """A regular n-gon: inside every half-plane whose normal is at ``normal0 + k 2pi/n``."""

    def mask(u: Tensor, v: Tensor) -> Tensor:
        angles = [normal0 + 2 * math.pi * k / n for k in range(n)]
        dist = torch.stack([u * math.cos(a) + v * math.sin(a) for a in angles])
        return dist.amax(0) <= apothem

    return mask


def _star(u: Tensor, v: Tensor) -> Tensor:
    phi = torch.atan2(v, u) - math.pi / 2  # a point straight up
    return u.hypot(v) <= 0.42 + 0.58 * torch.cos(2.5 * phi).abs() ** 3


def _heart(u: Tensor, v: Tensor) -> Tensor:
    x, y = 1.2 * u, 1.2 * v + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


def _crescent(u: Tensor, v: Tensor) -> Tensor:
    return (u.hypot(v) <= 0.95) & ((u - 0.45).hypot(v + 0.1) >= 0.72)


def _arrow(u: Tensor, v: Tensor) -> Tensor:
    stem = (u.abs() <= 0.22) & (v >= -0.95) & (v <= 0.1)
    head = (v >= 0.0) & (v <= 0.95 - 1.25 * u.abs())
    return stem | head


def _ell(u: Tensor, v: Tensor) -> Tensor:
    upright = (u >= -0.7) & (u <= -0.2) & (v.abs() <= 0.9)
    foot = (u >= -0.7) & (u <= 0.7) & (v >= -0.9) & (v <= -0.45)
    return upright | foot


SHAPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "circle": lambda u, v: u.hypot(v) <= 0.9,
    "triangle": _polygon(3, 0.52, -math.pi / 2),  # apex up
    "square": _polygon(4, 0.72, 0.0),
    "star": _star,
    "cross": lambda u, v: (u.abs().minimum(v.abs()) <= 0.3) & (u.abs().maximum(v.abs()) <= 0.95),
    "ring": lambda u, v: (u.hypot(v) <= 0.95) & (u.hypot(v) >= 0.55),
    "crescent": _crescent,
    "heart": _heart,
    "arrow": _arrow,
    "ell": _ell,
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)


def _frac(x: Tensor) -> Tensor:
    return x - x.floor()


# Where a pattern is "on" the object shows its colour, elsewhere its darker shade.
# Arguments: u, v (n, S, S) in object units divided by the period, phase (n, 2, 1, 1).
PATTERNS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "plain": lambda u, v, ph: torch.ones_like(u, dtype=torch.bool),
    "striped": lambda u, v, ph: _frac(u + ph[:, 0]) < 0.5,
    "checkered": lambda u, v, ph: ((u + ph[:, 0]).floor() + (v + ph[:, 1]).floor()) % 2 == 0,
    "dotted": lambda u, v, ph: (_frac(u + ph[:, 0]) - 0.5).hypot(_frac(v + ph[:, 1]) - 0.5) > 0.3,
}
PATTERN_NAMES: tuple[str, ...] = tuple(PATTERNS)


@dataclass
class Layout:
    """Per-frame drawing parameters of N frames, one object per frame (pixel units, y down)."""

    shape: Tensor  # (N,) long, index into SHAPE_NAMES
    pattern: Tensor  # (N,) long, index into PATTERN_NAMES
    colour: Tensor  # (N, 3) in [0, 1]
    shade: Tensor  # (N, 3) colour of the pattern's "off" parts
    cx: Tensor  # (N,) object centre, pixels
    cy: Tensor  # (N,)
    radius: Tensor  # (N,) pixels
    angle: Tensor  # (N,) radians, anticlockwise on screen
    period: Tensor  # (N,) pattern period in object units
    phase: Tensor  # (N, 2) pattern phase in periods
    background: Tensor  # (N, 3) mean background colour
    gradient: Tensor  # (N, 2) background brightness change across the image, (x, y)
    noise: Tensor  # (N, 3, H, W) additive pixel noise

    def __len__(self) -> int:
        return len(self.shape)

    def select(self, index: Tensor | slice) -> Layout:
        return Layout(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(parts: list[Layout]) -> Layout:
        names = [f.name for f in fields(Layout)]
        return Layout(**{name: torch.cat([getattr(p, name) for p in parts]) for name in names})


@contextmanager
def few_threads(n: int = 1) -> Iterator[None]:
    """Run with at most ``n`` intra-op threads, then restore the setting.

    Generation is many cheap element-wise ops on mid-sized tensors. With several threads each op
    waits for its slowest thread, so on a busy machine (a training run, pytest -n 2) it is ~15x
    slower; one thread costs < 2x on an idle one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, n))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render(layout: Layout, size: int, supersample: int = 2, chunk: int = 1024) -> Tensor:
    """Draw every frame of ``layout``: returns uint8 (N, 3, size, size)."""
    out = torch.empty(len(layout), 3, size, size, dtype=torch.uint8)
    with few_threads():
        for start in range(0, len(layout), chunk):
            part = layout.select(slice(start, start + chunk))
            out[start : start + chunk] = _render_chunk(part, size, supersample)
    return out


def _render_chunk(lay: Layout, size: int, ss: int) -> Tensor:
    n, big = len(lay), size * ss
    fine = (torch.arange(big, dtype=torch.float32) + 0.5) / ss  # sub-pixel centres, (S,)
    dx = fine.view(1, 1, big) - lay.cx.view(n, 1, 1)  # (n, 1, S)
    dy = lay.cy.view(n, 1, 1) - fine.view(1, big, 1)  # (n, S, 1), pointing up
    cos, sin = lay.angle.cos().view(n, 1, 1), lay.angle.sin().view(n, 1, 1)
    r = lay.radius.view(n, 1, 1)
    u = (cos * dx + sin * dy) / r  # (n, S, S), object frame
    v = (cos * dy - sin * dx) / r

    inside = _by_kind(lay.shape, SHAPES, lambda fn, i: fn(u[i], v[i]))  # (n, S, S) bool
    up, vp = u / lay.period.view(n, 1, 1), v / lay.period.view(n, 1, 1)
    ph = lay.phase.view(n, 2, 1, 1)
    on = _by_kind(lay.pattern, PATTERNS, lambda fn, i: fn(up[i], vp[i], ph[i]))  # (n, S, S) bool
    # Coverage of each pixel by the pattern's on / off parts: (n, 1, H, W), anti-aliased edges.
    cover_on = F.avg_pool2d((inside & on).unsqueeze(1).float(), ss)
    cover_off = F.avg_pool2d((inside & ~on).unsqueeze(1).float(), ss)

    rel = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # (W,), pixel centres
    gx, gy = lay.gradient[:, 0].view(n, 1, 1), lay.gradient[:, 1].view(n, 1, 1)
    ramp = gx * rel.view(1, 1, size) + gy * rel.view(1, size, 1)  # (n, H, W)
    bg = lay.background.view(n, 3, 1, 1) + ramp.unsqueeze(1)  # (n, 3, H, W), linear, so exact
    img = (
        bg * (1 - cover_on - cover_off)
        + lay.colour.view(n, 3, 1, 1) * cover_on
        + lay.shade.view(n, 3, 1, 1) * cover_off
        + lay.noise
    )
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _by_kind(kind: Tensor, fns: dict[str, Callable], apply: Callable) -> Tensor:
    """Evaluate, per frame, the mask function its ``kind`` index selects (one call per kind)."""
    out: Tensor | None = None
    for k, fn in enumerate(fns.values()):
        idx = (kind == k).nonzero().squeeze(1)
        if len(idx) == len(kind):
            return apply(fn, slice(None))
        if len(idx):
            mask = apply(fn, idx)  # (len(idx), S, S)
            if out is None:
                out = torch.zeros(len(kind), *mask.shape[1:], dtype=torch.bool)
            out[idx] = mask
    assert out is not None, "empty layout"
    return out
