"""What a dataset builder gets (``Preprocessing``) and returns (``DatasetPair``), and the transforms
every dataset shares."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
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
    modality: Modality = "image"  # items are images (C, H, W) or clips (T, C, H, W)
    skipped: list[str] = field(default_factory=list)  # damaged files left out (data.on_bad_file)
    # Classes per task fixed by the data's own split file (vCLIMB), or None. Labels are then
    # numbered task by task in the file's order: task t holds labels [sum(sizes[:t]), ...), and
    # the scenario learns them in label order (``Scenario.from_config``).
    task_sizes: list[int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Transforms:
    train: v2.Transform | None
    test: v2.Transform | None


Modality = Literal["image", "video"]


@dataclass(frozen=True)
class Preprocessing:
    """How a run's inputs are made: the backbone's input size and the run's augmentation.

    A dataset builder asks it for the transforms of its modality (``transforms``). They turn a PIL
    image or uint8 tensor (C, H, W) ("image"), or a uint8 clip (T, C, H, W) ("video"), into float
    pixels in [0, 1] of size ``image_size``; normalisation is each backbone's own
    (``Backbone.normalize``), so that two backbones with different statistics read one batch.

    Train: random-resized crop + horizontal flip (as in L2P / DualPrompt / CODA-Prompt) when
    ``augment``; test: resize + centre crop. A clip's frames all get the same crop and flip.
    ``image_size=None`` gives no transforms at all (raw items).
    """

    image_size: int | None
    augment: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def plain(self) -> Preprocessing:
        """The same preprocessing without augmentation (the test-time view of training data)."""
        return replace(self, augment=False)

    def transforms(self, modality: Modality = "image", flips: bool = True) -> Transforms:
        """``flips=False`` for data whose labels a mirror image changes (a motion's direction)."""
        if self.image_size is None:
            return Transforms(None, None)
        size = self.image_size
        wrap = v2.ToImage() if modality == "image" else v2.Lambda(tv_tensors.Video)
        to_float = [wrap, v2.ToDtype(torch.float32, scale=True)]
        test = v2.Compose([*to_float, v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        if not self.augment:
            return Transforms(train=test, test=test)
        crop = v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True)
        flip = [v2.RandomHorizontalFlip()] if flips else []
        return Transforms(train=v2.Compose([*to_float, crop, *flip]), test=test)


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
