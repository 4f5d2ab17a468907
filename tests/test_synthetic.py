"""The synthetic offline world: determinism, shapes, class splits, and its difficulty properties."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import Tensor

from promptcl.config import DataConfig
from promptcl.data import synthetic as S
from promptcl.data.base import Preprocessing
from promptcl.data.synth_render import render
from promptcl.data.synth_sample import MotionStyle, ShapeStyle, frame_order, motion_layout, stream
from promptcl.errors import ConfigError
from promptcl.registry import datasets


def _ncm_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> float:
    """Nearest-class-mean classifier (Euclidean) on flat features (N, D)."""
    means = torch.stack([x_train[y_train == c].mean(0) for c in range(int(y_train.max()) + 1)])
    return (torch.cdist(x_test, means).argmin(1) == y_test).float().mean().item()


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_images_and_cache_is_free():
    classes = S.shape_classes()[:5]
    a = S.SynthShapes(classes, per_class=8, seed=3)
    assert S.SynthShapes(classes, per_class=8, seed=3).data is a.data  # cached
    S._shape_tensors.cache_clear()
    b = S.SynthShapes(classes, per_class=8, seed=3)
    assert b.data is not a.data and torch.equal(a.data, b.data)
    assert not torch.equal(a.data, S.SynthShapes(classes, per_class=8, seed=4).data)
    assert not torch.equal(a.data, S.SynthShapes(classes, per_class=8, seed=3, part="test").data)


def test_motion_same_seed_same_videos():
    classes = S.motion_classes()[:4]
    a = S.SynthMotion(classes, per_class=3, seed=1).data
    S._motion_tensors.cache_clear()
    assert torch.equal(a, S.SynthMotion(classes, per_class=3, seed=1).data)
    assert not torch.equal(a, S.SynthMotion(classes, per_class=3, seed=2).data)


def test_class_images_do_not_depend_on_the_other_classes():
    classes = S.shape_classes()[:6]
    both = S.SynthShapes(classes, per_class=4).data
    alone = S.SynthShapes(classes[3:4], per_class=4).data
    assert torch.equal(both[12:16], alone)


def test_benchmark_content_is_independent_of_the_run_seed():
    build = datasets.get("synth-shapes-10")
    a, b = build(DataConfig(), None, 0), build(DataConfig(), None, 1)
    assert torch.equal(a.train.data, b.train.data) and a.class_names == b.class_names


# ----------------------------------------------------------------------------- shapes, dtypes


def test_image_and_video_shapes_and_dtypes():
    img = S.SynthShapes(S.shape_classes()[:3], per_class=2, size=48)
    x, y = img[0]
    assert img.data.shape == (6, 3, 48, 48) and x.shape == (3, 48, 48)
    assert x.dtype == torch.uint8 and isinstance(y, int)
    vid = S.SynthMotion(S.motion_classes()[:2], per_class=2, frames=12)
    x, y = vid[3]
    assert vid.data.shape == (4, 12, 3, 32, 32) and x.shape == (12, 3, 32, 32)
    assert x.dtype == torch.uint8 and y == 1


def test_registered_presets_with_transforms():
    pre = Preprocessing(32)
    shapes = datasets.get("synth-shapes-10")(DataConfig(), pre, 0)
    assert shapes.num_classes == 100 and shapes.default_tasks == 10
    assert (len(shapes.train), len(shapes.test)) == (6000, 2000)
    x, y = shapes.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert shapes.modality == "image"
    motion = datasets.get("synth-motion-5")(DataConfig(name="synth-motion-5"), pre, 0)
    assert motion.num_classes == 40 and motion.default_tasks == 5 and motion.modality == "video"
    assert (len(motion.train), len(motion.test)) == (1600, 800)
    x, _ = motion.test[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    flips = (S.v2.RandomHorizontalFlip, S.v2.RandomVerticalFlip)
    assert not any(isinstance(t, flips) for t in motion.train.transform.transforms)
    assert "synth-shapes-pretrain" in datasets and "synth-motion-pretrain" in datasets


# ----------------------------------------------------------------------------- classes, splits


def test_shape_classes_and_captions():
    cont, pre = S.shape_classes("continual"), S.shape_classes("pretrain")
    assert len(cont) == 100 and len(pre) >= 100
    assert not set(cont) & set(pre) and set(cont) | set(pre) == set(S.ALL_SHAPE_CLASSES)
    assert S.shape_classes() == cont  # fixed
    captions = [c.caption for c in S.ALL_SHAPE_CLASSES]
    assert len(set(captions)) == len(captions)
    assert S.ShapeClass("triangle", "red", "striped").caption == "a red striped triangle"
    for i, attr in enumerate(("shape", "colour", "pattern")):  # every value is seen in both splits
        values = {getattr(c, attr) for c in S.ALL_SHAPE_CLASSES}
        assert {c[i] for c in cont} == values == {c[i] for c in pre}, attr
    # compositional: most continual classes have a continual neighbour differing in one attribute
    one_apart = [
        sum(sum(a != b for a, b in zip(c, d, strict=True)) == 1 for d in cont) for c in cont
    ]
    assert sum(n > 0 for n in one_apart) >= 90


def test_motion_classes_and_captions():
    cont, pre = S.motion_classes("continual"), S.motion_classes("pretrain")
    assert len(cont) == 40 and len(pre) == 216
    assert not set(cont) & set(pre) and set(cont) | set(pre) == set(S.ALL_MOTION_CLASSES)
    names = [c.name for c in S.ALL_MOTION_CLASSES]
    assert len(set(names)) == len(names)
    assert S.MotionClass("heart", "red", "horizontal", "backward").name == "red heart moving left"
    # every continual class has its 3 same-looking siblings (other orders) in the continual set
    groups = Counter(c[:3] for c in cont)
    assert set(groups.values()) == {4}
    assert {c.axis for c in cont} == set(S.MOTION_WORDS)


def test_unknown_split_is_an_error():
    with pytest.raises(ConfigError, match="unknown split"):
        S.shape_classes("train")  # type: ignore[arg-type]


def test_random_keys_of_all_classes_are_distinct():
    keys = [S._key(c.name) for c in (*S.ALL_SHAPE_CLASSES, *S.ALL_MOTION_CLASSES)]
    assert len(set(keys)) == len(keys)


def test_per_class_balance():
    pair = S.synth_shapes_pair()
    assert set(Counter(pair.train.targets).values()) == {60}
    assert set(Counter(pair.test.targets).values()) == {20}
    assert sorted(Counter(pair.train.targets)) == list(range(100))
    motion = S.synth_motion_pair()
    assert set(Counter(motion.train.targets).values()) == {40}


# ----------------------------------------------------------------------------- difficulty


def test_raw_pixel_nearest_mean_is_above_chance_but_far_from_perfect():
    pair = S.synth_shapes_pair()

    def flat(ds):
        return ds.data.flatten(1).float() / 255, torch.tensor(ds.targets)

    acc = _ncm_accuracy(*flat(pair.train), *flat(pair.test))
    assert 2 / 100 < acc < 0.9, acc  # chance is 1/100 (measured: ~0.07)


def test_motion_siblings_are_permutations_of_the_same_poses():
    """Same instances, two orders: identical mean frame, different frame sequences."""
    n, frames, size = 6, 8, 32
    layout = motion_layout("heart", "red", "horizontal", n, frames, stream(0), size, MotionStyle())
    poses = render(layout, size).view(n, frames, 3, size, size).float()
    right, left = (
        poses[:, frame_order("forward", frames)],
        poses[:, frame_order("backward", frames)],
    )
    torch.testing.assert_close(right.mean(1), left.mean(1))
    assert (right - left).abs().mean() > 5.0  # grey levels; the object moves ~12 px
    for order in S.ORDERS:
        assert sorted(frame_order(order, frames).tolist()) == list(range(frames))
        assert sorted(frame_order(order, 13).tolist()) == list(range(13))


def test_motion_mean_frame_cannot_tell_siblings_apart_but_frame_order_can():
    """On independent clips of the 4 horizontal siblings (right, left, right-and-back,
    left-and-back): nearest-mean on the mean frame is at chance (1/4); on the trajectory of the
    changing pixels' centroid (which needs the frame order) it is nearly perfect."""
    classes = [S.MotionClass("heart", "red", "horizontal", o) for o in S.ORDERS]
    train, test = S.SynthMotion(classes, 100, "train"), S.SynthMotion(classes, 100, "test")
    y_train, y_test = torch.tensor(train.targets), torch.tensor(test.targets)

    def mean_frame(ds) -> Tensor:
        return ds.data.float().mean(1).flatten(1)  # (N, 3 * H * W)

    def trajectory(ds) -> Tensor:
        v = ds.data.float()  # (N, T, 3, H, W)
        change = (v - v.mean(1, keepdim=True)).abs().sum(2)  # (N, T, H, W)
        xs = torch.arange(v.shape[-1], dtype=torch.float32)
        cx = (change.sum(2) * xs).sum(-1) / change.sum((2, 3)).clamp_min(1e-6)  # (N, T)
        return cx - cx.mean(1, keepdim=True)

    acc_mean = _ncm_accuracy(mean_frame(train), y_train, mean_frame(test), y_test)
    acc_order = _ncm_accuracy(trajectory(train), y_train, trajectory(test), y_test)
    assert acc_mean < 0.4, acc_mean  # chance 0.25 (measured: ~0.24)
    assert acc_order > 0.9, acc_order  # (measured: 1.0)


def test_difficulty_knobs_change_the_images():
    classes = S.shape_classes()[:2]
    easy = ShapeStyle(position_jitter=0.0, rotation=0.0, noise=0.0, background_tint=0.0)
    a = S.SynthShapes(classes, per_class=4, style=easy).data
    assert not torch.equal(a, S.SynthShapes(classes, per_class=4).data)


def test_continual_benchmark_is_drawn_closer_up_than_pretraining():
    """synth-shapes-10's domain shift: every object is larger than any pretraining object."""
    from promptcl.data.synth_sample import CLOSE_UP, shape_layout

    shipped = datasets.get("synth-shapes-10")(DataConfig(), None, 0)
    first = S.shape_classes()[:1]
    assert torch.equal(shipped.train.data[:60], S.SynthShapes(first, 60, style=CLOSE_UP).data)
    radii = {
        name: shape_layout("circle", "red", "plain", 500, stream(name == "close"), 32, st).radius
        for name, st in (("close", CLOSE_UP), ("pretrain", ShapeStyle()))
    }
    assert radii["close"].min() > radii["pretrain"].max()
