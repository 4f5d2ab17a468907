"""What a dataset builder returns, and the image transforms every image dataset shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


class LabelledDataset(Protocol):
    """A map-style dataset of ``(input, label)`` pairs that also exposes all labels at once."""

    targets: list[int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int): ...


@dataclass
class DatasetPair:
    """The train and test sets of one benchmark, with labels 0..C-1 and one name per class."""

    train: LabelledDataset
    test: LabelledDataset
    class_names: list[str]
    default_tasks: int = 10  # the benchmark's usual number of tasks, when the config gives none

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Transforms:
    train: v2.Transform
    test: v2.Transform


def image_transforms(
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool = True,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> Transforms:
    """Train/test transforms for PIL images or uint8 tensors, sized and normalised for a backbone.

    Train: random-resized crop + horizontal flip (as in L2P / DualPrompt / CODA-Prompt) when
    ``augment``; test: resize + centre crop.
    """
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    norm = v2.Normalize(mean=list(mean), std=list(std))
    test = v2.Compose(
        [*to_float, v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), norm]
    )
    if not augment:
        return Transforms(train=test, test=test)
    train = v2.Compose(
        [
            *to_float,
            v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
            v2.RandomHorizontalFlip(),
            norm,
        ]
    )
    return Transforms(train=train, test=test)


class TransformedSubset(Dataset):
    """A dataset whose items pass through a transform (train/test views of one source)."""

    def __init__(self, source: LabelledDataset, transform: v2.Transform | None):
        self.source, self.transform = source, transform
        self.targets = list(source.targets)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        x, y = self.source[index]
        return (self.transform(x) if self.transform is not None else x), y
