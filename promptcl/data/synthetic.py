"""A small offline world for running and testing every method on a CPU.

SynthShapes: RGB images whose class is a combination of attributes (shape, colour, pattern), with
per-instance position, scale, rotation, colour, background and noise. SynthMotion: short videos
whose class is an appearance (shape, colour) plus a motion (an axis and a temporal order); within
one appearance and axis the four orders show exactly the same set of poses, only in another order,
so neither one frame nor the mean frame tells them apart.

Each world's attribute combinations are split, with a fixed seed, into a PRETRAINING set of classes
and a disjoint CONTINUAL set (as ImageNet is to CIFAR-100). The benchmarks' content is fixed by
``DATA_SEED``, independent of the run seed (which orders the classes elsewhere). Generation is
vectorised (see ``synth_render``) and cached per process, so building a dataset twice is free.
Subsampling (``DataConfig.subsample``) is left to the scenario code.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from promptcl.config import DataConfig
from promptcl.data.base import DatasetPair, Preprocessing
from promptcl.data.synth_render import COLOURS, PATTERN_NAMES, Layout, few_threads, render
from promptcl.data.synth_sample import (
    CLOSE_UP,
    ORDERS,
    MotionStyle,
    ShapeStyle,
    frame_order,
    motion_layout,
    shape_layout,
    stream,
)
from promptcl.errors import ConfigError
from promptcl.registry import datasets

DATA_SEED = 2024  # fixes the content of every synthetic benchmark
SPLIT_SEED = 7  # fixes which attribute combinations are pretraining and which continual
Split = Literal["continual", "pretrain", "all"]

# ---------------------------------------------------------------------------------------------
# Classes and splits
# ---------------------------------------------------------------------------------------------

SHAPE_SHAPES = ("circle", "triangle", "square", "star", "cross", "ring", "crescent", "heart")
SHAPE_COLOURS = tuple(COLOURS)  # 8 colours
SHAPE_PATTERNS = PATTERN_NAMES  # plain, striped, checkered, dotted
SHAPE_CONTINUAL = 100  # of 8 * 8 * 4 = 256 combinations; the other 156 are for pretraining

MOTION_SHAPES = ("heart", "crescent", "arrow", "ell")  # no rotational symmetry, so turning shows
MOTION_COLOURS = ("red", "yellow", "green", "blue")
MOTION_WORDS = {  # axis -> caption per order in ORDERS
    "horizontal": ("moving right", "moving left", "moving right and back", "moving left and back"),
    "vertical": ("moving up", "moving down", "moving up and back", "moving down and back"),
    "turn": (
        "turning anticlockwise",
        "turning clockwise",
        "turning anticlockwise and back",
        "turning clockwise and back",
    ),
    "scale": ("growing", "shrinking", "growing then shrinking", "shrinking then growing"),
}
MOTION_CONTINUAL_GROUPS = 10  # of 4 * 4 * 4 = 64 (shape, colour, axis) groups, 4 orders each


class ShapeClass(NamedTuple):
    shape: str
    colour: str
    pattern: str

    @property
    def name(self) -> str:  # "red striped triangle"; plain objects are just "red triangle"
        pattern = "" if self.pattern == "plain" else f" {self.pattern}"
        return f"{self.colour}{pattern} {self.shape}"

    @property
    def caption(self) -> str:
        return f"a {self.name}"


class MotionClass(NamedTuple):
    shape: str
    colour: str
    axis: str  # horizontal, vertical, turn, scale
    order: str  # one of ORDERS

    @property
    def name(self) -> str:  # "red heart moving left"
        return f"{self.colour} {self.shape} {MOTION_WORDS[self.axis][ORDERS.index(self.order)]}"

    @property
    def caption(self) -> str:
        return f"a {self.name}"


ALL_SHAPE_CLASSES = tuple(
    ShapeClass(s, c, p) for s in SHAPE_SHAPES for c in SHAPE_COLOURS for p in SHAPE_PATTERNS
)
ALL_MOTION_CLASSES = tuple(
    MotionClass(s, c, a, o)
    for s in MOTION_SHAPES
    for c in MOTION_COLOURS
    for a in MOTION_WORDS
    for o in ORDERS
)


def shape_classes(split: Split = "continual") -> list[ShapeClass]:
    """SynthShapes classes of one split, in a fixed shuffled order (100 continual, 156 pretrain)."""
    order = random.Random(SPLIT_SEED).sample(range(len(ALL_SHAPE_CLASSES)), len(ALL_SHAPE_CLASSES))
    picked = {
        "continual": order[:SHAPE_CONTINUAL],
        "pretrain": order[SHAPE_CONTINUAL:],
        "all": order,
    }
    return [ALL_SHAPE_CLASSES[i] for i in picked[_check(split)]]


def motion_classes(split: Split = "continual") -> list[MotionClass]:
    """SynthMotion classes of one split (40 continual, 216 pretrain).

    The split is by (shape, colour, axis) group, so every continual class has its three
    same-looking, differently-ordered siblings in the continual set too; axes are balanced.
    """
    groups = [(s, c, a) for s in MOTION_SHAPES for c in MOTION_COLOURS for a in MOTION_WORDS]
    groups = random.Random(SPLIT_SEED).sample(groups, len(groups))
    cap = -(-MOTION_CONTINUAL_GROUPS // len(MOTION_WORDS))  # at most this many groups per axis
    continual: list[tuple[str, str, str]] = []
    for g in groups:
        if len(continual) < MOTION_CONTINUAL_GROUPS and sum(c[2] == g[2] for c in continual) < cap:
            continual.append(g)
    pretrain = [g for g in groups if g not in continual]
    chosen = {"continual": continual, "pretrain": pretrain, "all": groups}[_check(split)]
    return [MotionClass(*g, o) for g in chosen for o in ORDERS]


def _check(split: str) -> str:
    if split not in ("continual", "pretrain", "all"):
        raise ConfigError(f"unknown split {split!r}: use 'continual', 'pretrain' or 'all'")
    return split


# ---------------------------------------------------------------------------------------------
# Generation, cached per process
# ---------------------------------------------------------------------------------------------

_PARTS = {"train": 0, "test": 1}
_SHAPES_WORLD, _MOTION_WORLD = 1, 2


def _key(name: str) -> int:
    """A class's random-stream key: stable, and independent of which attribute lists exist."""
    return zlib.crc32(name.encode())


def _stream(seed: int, part: str, world: int, cls: ShapeClass | MotionClass) -> torch.Generator:
    return stream(seed, _PARTS[part], world, _key(cls.name))


@functools.lru_cache(maxsize=16)
@few_threads()
def _shape_tensors(
    classes: tuple[ShapeClass, ...],
    per_class: int,
    part: str,
    seed: int,
    size: int,
    style: ShapeStyle,
) -> tuple[Tensor, Tensor]:
    g = [_stream(seed, part, _SHAPES_WORLD, c) for c in classes]
    layouts = [shape_layout(*c, per_class, g[i], size, style) for i, c in enumerate(classes)]
    images = render(Layout.cat(layouts), size, style.supersample)  # (C * n, 3, H, W) uint8
    return images, torch.arange(len(classes)).repeat_interleave(per_class)


@functools.lru_cache(maxsize=16)
@few_threads()
def _motion_tensors(
    classes: tuple[MotionClass, ...],
    per_class: int,
    part: str,
    seed: int,
    size: int,
    frames: int,
    style: MotionStyle,
) -> tuple[Tensor, Tensor]:
    g = [_stream(seed, part, _MOTION_WORLD, c) for c in classes]
    layouts = [
        motion_layout(*c[:3], per_class, frames, g[i], size, style) for i, c in enumerate(classes)
    ]
    poses = render(Layout.cat(layouts), size, style.supersample)  # (C * n * T, 3, H, W), by pose
    poses = poses.view(len(classes), per_class, frames, 3, size, size)
    order = torch.stack([frame_order(c.order, frames) for c in classes])  # (C, T)
    c_idx, n_idx = torch.arange(len(classes))[:, None, None], torch.arange(per_class)[None, :, None]
    videos = poses[c_idx, n_idx, order[:, None, :]]  # (C, n, T, 3, H, W), poses put in time order
    return videos.flatten(0, 1), torch.arange(len(classes)).repeat_interleave(per_class)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


class SyntheticDataset(Dataset):
    """Pre-rendered uint8 images (N, 3, H, W) or videos (N, T, 3, H, W), labels 0..C-1.

    ``data`` is shared with the generation cache: read it, do not modify it in place.
    """

    def __init__(
        self,
        data: Tensor,
        labels: Tensor,
        classes: Sequence[ShapeClass | MotionClass],
        transform: v2.Transform | None = None,
    ):
        self.data, self.transform = data, transform
        self.targets: list[int] = labels.tolist()
        self.classes = list(classes)
        self.class_names = [c.name for c in classes]
        self.captions = [c.caption for c in classes]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.data[index]  # (3, H, W) or (T, 3, H, W) uint8
        return (self.transform(x) if self.transform is not None else x.clone()), self.targets[index]


class SynthShapes(SyntheticDataset):
    """``per_class`` images of each class (a split name or explicit ``ShapeClass`` list)."""

    def __init__(
        self,
        classes: Split | Sequence[ShapeClass] = "continual",
        per_class: int = 60,
        part: Literal["train", "test"] = "train",
        seed: int = DATA_SEED,
        size: int = 32,
        style: ShapeStyle | None = None,
        transform: v2.Transform | None = None,
    ):
        classes = tuple(shape_classes(classes) if isinstance(classes, str) else classes)
        data, labels = _shape_tensors(classes, per_class, part, seed, size, style or ShapeStyle())
        super().__init__(data, labels, classes, transform)


class SynthMotion(SyntheticDataset):
    """``per_class`` clips (T = ``frames``) of each class (a split name or ``MotionClass`` list)."""

    def __init__(
        self,
        classes: Split | Sequence[MotionClass] = "continual",
        per_class: int = 40,
        part: Literal["train", "test"] = "train",
        seed: int = DATA_SEED,
        size: int = 32,
        frames: int = 8,
        style: MotionStyle | None = None,
        transform: v2.Transform | None = None,
    ):
        classes = tuple(motion_classes(classes) if isinstance(classes, str) else classes)
        style = style or MotionStyle()
        data, labels = _motion_tensors(classes, per_class, part, seed, size, frames, style)
        super().__init__(data, labels, classes, transform)


def synth_shapes_pair(
    split: Split = "continual",
    train_per_class: int = 60,
    test_per_class: int = 20,
    pre: Preprocessing | None = None,
    default_tasks: int = 10,
    **kwargs,
) -> DatasetPair:
    """Train and test SynthShapes of one split; ``kwargs`` go to ``SynthShapes`` (size, style...)."""
    tf = (pre or Preprocessing(None)).transforms("image")
    train_tf, test_tf = tf.train, tf.test
    train = SynthShapes(split, train_per_class, "train", transform=train_tf, **kwargs)
    test = SynthShapes(split, test_per_class, "test", transform=test_tf, **kwargs)
    return DatasetPair(train, test, train.class_names, default_tasks=default_tasks)


def synth_motion_pair(
    split: Split = "continual",
    train_per_class: int = 40,
    test_per_class: int = 20,
    pre: Preprocessing | None = None,
    default_tasks: int = 5,
    **kwargs,
) -> DatasetPair:
    """Train and test SynthMotion of one split; ``kwargs`` go to ``SynthMotion`` (frames...).

    Clips are not flipped: mirroring one turns "moving right" into "moving left" and "turning
    clockwise" into "turning anticlockwise".
    """
    tf = (pre or Preprocessing(None)).transforms("video", flips=False)
    train_tf, test_tf = tf.train, tf.test
    train = SynthMotion(split, train_per_class, "train", transform=train_tf, **kwargs)
    test = SynthMotion(split, test_per_class, "test", transform=test_tf, **kwargs)
    return DatasetPair(
        train, test, train.class_names, default_tasks=default_tasks, modality="video"
    )


# ---------------------------------------------------------------------------------------------
# Registered presets. Their content is fixed by DATA_SEED: the run seed is not used here.
# ---------------------------------------------------------------------------------------------


@datasets.register("synth-shapes-10")
def build_synth_shapes_10(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Continual split: 100 classes, 60 train / 20 test 32x32 close-ups each, 10 tasks.

    The objects are larger than in the pretraining images (``CLOSE_UP``): a domain shift.
    """
    return synth_shapes_pair("continual", 60, 20, pre, default_tasks=10, style=CLOSE_UP)


@datasets.register("synth-shapes-pretrain")
def build_synth_shapes_pretrain(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Pretraining split: 156 classes disjoint from the continual ones, 200 train / 20 test each."""
    return synth_shapes_pair("pretrain", 200, 20, pre, default_tasks=1)


@datasets.register("synth-motion-5")
def build_synth_motion_5(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Continual split: 40 classes, 40 train / 20 test clips (T x 3 x 32 x 32, T = data.frames,
    default 8) each, 5 tasks."""
    return synth_motion_pair("continual", 40, 20, pre, default_tasks=5, frames=cfg.frames)


@datasets.register("synth-motion-pretrain")
def build_synth_motion_pretrain(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Pretraining split: 216 classes disjoint from the continual ones, 60 train / 10 test clips."""
    return synth_motion_pair("pretrain", 60, 10, pre, default_tasks=1, frames=cfg.frames)
