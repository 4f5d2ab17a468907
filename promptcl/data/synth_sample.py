"""Instance variation of the synthetic world: difficulty knobs and the samplers of ``Layout``s.

Every random draw comes from a ``torch.Generator`` keyed by (seed, part, world, class), so a class's
instances do not depend on which other classes are generated alongside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from promptcl.data.synth_render import COLOURS, PATTERN_NAMES, SHAPE_NAMES, Layout


@dataclass(frozen=True)
class ShapeStyle:
    """Difficulty knobs: how much instances of one class vary (lengths: image-side fractions)."""

    scale: tuple[float, float] = (0.2, 0.36)  # object radius
    position_jitter: float = 1.0  # 0 = centred, 1 = anywhere the object fits
    rotation: float = 180.0  # max |angle|, degrees
    brightness: tuple[float, float] = (0.75, 1.1)  # object colour multiplier
    colour_jitter: float = 0.08  # +- per channel
    pattern_contrast: float = 0.6  # the pattern's "off" parts are colour * (1 - contrast)
    period: tuple[float, float] = (0.55, 0.75)  # pattern period, in object radii
    background: tuple[float, float] = (0.2, 0.8)  # background grey level
    background_tint: float = 0.35  # per-channel spread around the grey level
    background_gradient: float = 0.3  # max brightness change across the image
    noise: float = 0.05  # std of Gaussian pixel noise
    supersample: int = 2  # anti-aliasing factor of the renderer


# The continual benchmark's domain shift: its objects are drawn as close-ups, larger than any in the
# pretraining images (radius 0.38-0.5 of the image side against 0.2-0.36), as CIFAR-100's objects
# fill the frame of a ViT pretrained on ImageNet. Frozen pretrained features see the new scale only
# as well as they generalise; fine-tuning can adapt to it (see benchmarks/offline_world.py).
CLOSE_UP = ShapeStyle(scale=(0.38, 0.5))


@dataclass(frozen=True)
class MotionStyle(ShapeStyle):
    """SynthMotion knobs: smaller objects, plus the extent of each kind of motion over a clip."""

    scale: tuple[float, float] = (0.15, 0.22)
    travel: tuple[float, float] = (0.3, 0.45)  # translation over the clip
    turn: tuple[float, float] = (100.0, 160.0)  # rotation over the clip, degrees
    grow: tuple[float, float] = (0.6, 1.3)  # radius factor at the small / large end
    frame_jitter: float = 0.3  # per-frame position wobble, pixels


ORDERS = ("forward", "backward", "there-and-back", "back-and-there")


def frame_order(order: str, frames: int) -> Tensor:
    """Which pose (ramp step 0..T-1 along the motion axis) each frame shows: long (T,).

    All four orders are permutations of the same T poses: forward 0..T-1, backward T-1..0,
    there-and-back 0,2,4,..,5,3,1 (out at double speed, then back), back-and-there its mirror.
    """
    ramp = torch.arange(frames)
    there_back = torch.cat([ramp[0::2], ramp[1::2].flip(0)])
    return {
        "forward": ramp,
        "backward": ramp.flip(0),
        "there-and-back": there_back,
        "back-and-there": frames - 1 - there_back,
    }[order]


def stream(*keys: int) -> torch.Generator:
    """An independent random stream for a tuple of integer keys (seed, part, world, class)."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _look(colour: str, n: int, g: torch.Generator, st: ShapeStyle) -> dict[str, Tensor]:
    """Per-instance colours, pattern phase and background of n instances."""
    base = torch.tensor(COLOURS[colour])
    jitter = _uniform(g, (n, 3), -st.colour_jitter, st.colour_jitter)
    rgb = (base * _uniform(g, (n, 1), *st.brightness) + jitter).clamp(0, 1)  # (n, 3)
    tint = _uniform(g, (n, 3), -st.background_tint / 2, st.background_tint / 2)
    background = (_uniform(g, (n, 1), *st.background) + tint).clamp(0, 1)  # (n, 3)
    direction = F.normalize(torch.randn(n, 2, generator=g), dim=1)
    return dict(
        colour=rgb,
        shade=rgb * (1 - st.pattern_contrast),
        period=_uniform(g, (n,), *st.period),
        phase=torch.rand(n, 2, generator=g),
        background=background,
        gradient=direction * _uniform(g, (n, 1), 0, st.background_gradient),  # (n, 2)
    )


def _place(reach: Tensor, size: int, st: ShapeStyle, g: torch.Generator) -> Tensor:
    """Random centres (n,) keeping ``reach`` pixels around them inside the image."""
    room = (size / 2 - reach).clamp_min(0) * st.position_jitter
    return size / 2 + room * _uniform(g, reach.shape, -1, 1)


def shape_layout(
    shape: str, colour: str, pattern: str, n: int, g: torch.Generator, size: int, st: ShapeStyle
) -> Layout:
    """n random instances of one SynthShapes class."""
    look = _look(colour, n, g, st)
    radius = size * _uniform(g, (n,), *st.scale)
    cx, cy = _place(radius, size, st, g), _place(radius, size, st, g)
    return Layout(
        shape=torch.full((n,), SHAPE_NAMES.index(shape)),
        pattern=torch.full((n,), PATTERN_NAMES.index(pattern)),
        cx=cx,
        cy=cy,
        radius=radius,
        angle=math.radians(st.rotation) * _uniform(g, (n,), -1, 1),
        noise=st.noise * torch.randn(n, 3, size, size, generator=g),
        **look,
    )


def motion_layout(
    shape: str,
    colour: str,
    axis: str,
    n: int,
    frames: int,
    g: torch.Generator,
    size: int,
    st: MotionStyle,
) -> Layout:
    """n random clips of one appearance moving along ``axis``: n * T frames, instance-major.

    Frame k of a clip is ramp step k (pose k/(T-1) along the axis, in the "forward" direction:
    right, up, anticlockwise, growing); ``frame_order`` then arranges the steps in time.
    """
    look = _look(colour, n, g, st)
    r0 = size * _uniform(g, (n,), *st.scale)
    travel = size * _uniform(g, (n,), *st.travel)
    turn = math.radians(1) * _uniform(g, (n,), *st.turn)
    r_max = r0 * (st.grow[1] if axis == "scale" else 1.0)
    cx0 = _place(r_max + (travel / 2 if axis == "horizontal" else 0), size, st, g)
    cy0 = _place(r_max + (travel / 2 if axis == "vertical" else 0), size, st, g)
    angle0 = math.radians(st.rotation) * _uniform(g, (n,), -1, 1)

    s = torch.linspace(-0.5, 0.5, frames).expand(n, frames)  # (n, T), pose along the axis
    zero = torch.zeros(n, frames)
    wobble = st.frame_jitter * torch.randn(n, frames, 2, generator=g)
    cx = cx0[:, None] + (travel[:, None] * s if axis == "horizontal" else zero) + wobble[..., 0]
    cy = cy0[:, None] - (travel[:, None] * s if axis == "vertical" else zero) + wobble[..., 1]
    angle = angle0[:, None] + (turn[:, None] * s if axis == "turn" else zero)
    grow = st.grow[0] + (st.grow[1] - st.grow[0]) * (s + 0.5) if axis == "scale" else 1.0
    radius = r0[:, None] * grow + zero  # (n, T)
    return Layout(
        shape=torch.full((n * frames,), SHAPE_NAMES.index(shape)),
        pattern=torch.full((n * frames,), PATTERN_NAMES.index("plain")),
        cx=cx.reshape(-1),
        cy=cy.reshape(-1),
        radius=radius.reshape(-1),
        angle=angle.reshape(-1),
        noise=st.noise * torch.randn(n * frames, 3, size, size, generator=g),
        **{k: v.repeat_interleave(frames, dim=0) for k, v in look.items()},
    )
