"""Real image datasets: CIFAR-100, ImageNet-R, CUB-200-2011 and a generic class-per-folder layout.

Each builder returns a ``DatasetPair`` whose items are ``(transform(PIL RGB image), label)`` with
labels 0..C-1, a ``targets`` list and readable class names (used for CLIP captions). File-based
datasets open each image only when it is read; CIFAR-100 is held in memory, as its pickles are.

Accepted layouts (``data.root`` may also point at the inner dataset folder):

- ``cifar100``: ``root/cifar-100-python/{train,test,meta}``, the Python pickles of
  cifar-100-python.tar.gz (dicts with ``data`` (N, 3072) uint8 rows in CHW order and
  ``fine_labels``; ``meta`` holds ``fine_label_names``). ``data.download: true`` lets torchvision
  fetch and md5-check the archive when the files are missing.
- ``imagenet-r``: ``root/imagenet-r/<wnid>/<image>`` (200 WordNet-id folders). Without
  ``data.split_file`` each class is split 80/20 at random with the run seed. With it, the
  CODA-Prompt / mammoth split files are read: YAML mappings with equal-length lists ``data``
  (image paths whose last two parts are ``<wnid>/<file>``, e.g. ``data/imagenet-r/n01443537/
  art_0.jpg``) and ``targets`` (int labels). ``split_file`` is a directory holding
  ``imagenet-r_train.yaml`` and ``imagenet-r_test.yaml``, or one of the two files (the other is
  found by swapping ``train``/``test`` in its name).
- ``cub200``: the official ``root/CUB_200_2011/{images.txt, image_class_labels.txt,
  train_test_split.txt, classes.txt, images/...}``; labels are the 1-based class ids minus one.
- ``folder``: ``root/{train,test}/<class>/<image>`` with extensions jpg/jpeg/png/bmp/webp;
  classes sorted by folder name, the same class folders in both splits.

File-based builders check their files right after listing them (``data.verify``: ``quick`` reads
headers, ``full`` decodes, ``off``; see ``promptcl.data.verify``): a damaged file stops the build
with its path, or is left out with ``data.on_bad_file: skip`` and listed in ``DatasetPair.skipped``.
CIFAR-100 pickles are read by ``promptcl.data.safe_pickle.load_restricted``, which loads only plain
data and (allowed here) numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml
from PIL import Image
from torch.utils.data import Dataset

from promptcl.config import DataConfig
from promptcl.data.base import DatasetPair, Preprocessing
from promptcl.data.imagenet_r_classes import IMAGENET_R_CLASSES
from promptcl.data.safe_pickle import ForbiddenGlobal, load_restricted
from promptcl.data.verify import Items, verify_splits
from promptcl.errors import DataError
from promptcl.registry import datasets

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
Transform = Callable[[Image.Image], Any] | None

_WNID = re.compile(r"n\d{8}")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_LAYOUTS = {
    "cifar100": "<data.root>/cifar-100-python/{train,test,meta} (from cifar-100-python.tar.gz)",
    "imagenet-r": "<data.root>/imagenet-r/<wnid>/<image>.jpg (200 folders such as n01443537)",
    "cub200": "<data.root>/CUB_200_2011/{images.txt, image_class_labels.txt, "
    "train_test_split.txt, classes.txt, images/<class>/<image>.jpg}",
    "folder": "<data.root>/{train,test}/<class name>/<image>.{jpg,jpeg,png,bmp,webp}",
}
_SOURCES = {
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html, or set `data.download: true`",
    "imagenet-r": "https://github.com/hendrycks/imagenet-r (imagenet-r.tar)",
    "cub200": "the Caltech-UCSD Birds-200-2011 page, "
    "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
    "folder": "your own images, one folder per class",
}


def _error(name: str, problem: str, root: Path | None) -> DataError:
    """A DataError that says what is wrong, the layout expected, and where the data comes from."""
    return DataError(
        f"dataset {name!r}: {problem}\n"
        f"  expected layout: {_LAYOUTS[name]}\n"
        f"  get the data from: {_SOURCES[name]}\n"
        f"  then set the config key `data.root` to the folder shown as <data.root> (now: {root})"
    )


class ImageFileDataset(Dataset):
    """Images listed by path, opened and converted to RGB only when an item is read."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], transform: Transform = None):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Exception as err:  # damaged after verification, or data.verify: off
            raise DataError(f"cannot read image {path}: {err}") from err
        return (self.transform(rgb) if self.transform is not None else rgb), self.targets[index]


class ArrayImageDataset(Dataset):
    """Images held as one uint8 array (N, H, W, 3), turned into PIL images when read."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], transform: Transform = None):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _root(cfg: DataConfig, name: str) -> Path:
    if cfg.root is None:
        raise _error(name, "`data.root` is not set", None)
    return Path(cfg.root).expanduser()


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside a folder, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.name,
    )


def _readable(name: str) -> str:
    return name.replace("_", " ").strip()


def _file_pair(
    name: str,
    cfg: DataConfig,
    train: Items,
    test: Items,
    class_names: list[str],
    pre: Preprocessing,
    can_delete: bool = True,
) -> DatasetPair:
    """The DatasetPair of listed files, after checking them (``data.verify``, ``on_bad_file``)."""
    train, test, skipped = verify_splits(
        name, train, test, class_names, cfg.verify, cfg.on_bad_file, can_delete=can_delete
    )
    transforms = pre.transforms("image")
    return DatasetPair(
        train=ImageFileDataset(*_unzip(train), transform=transforms.train),
        test=ImageFileDataset(*_unzip(test), transform=transforms.test),
        class_names=class_names,
        skipped=skipped,
    )


def _unzip(items: Items) -> tuple[list[Path], list[int]]:
    return [p for p, _ in items], [y for _, y in items]


# --- CIFAR-100 ---------------------------------------------------------------------------------

_CIFAR_DIR = "cifar-100-python"
_CIFAR_FILES = ("train", "test", "meta")


def _find_cifar(root: Path) -> Path | None:
    for candidate in (root / _CIFAR_DIR, root):
        if all((candidate / f).is_file() for f in _CIFAR_FILES):
            return candidate
    return None


def _numpy_global(name: str, *modules: str) -> Any:
    """``name`` from the first of ``modules`` that has it (numpy 2 or numpy 1 module names)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
# The only globals a CIFAR-100 pickle holds besides plain data (numpy arrays, dtypes and
# scalars), under numpy 1 (numpy.core) and numpy 2 (numpy._core) names; protocol-2 bytes
# (``_codecs.encode``) are plain data to ``load_restricted``.
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _numpy_global("_reconstruct", *_MULTIARRAY) for m in _MULTIARRAY},
    **{(m, "scalar"): _numpy_global("scalar", *_MULTIARRAY) for m in _MULTIARRAY},
    **{(m, "_frombuffer"): _numpy_global("_frombuffer", *_NUMERIC) for m in _NUMERIC},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_CIFAR_GLOBALS = {key: obj for key, obj in _CIFAR_GLOBALS.items() if obj is not None}


def _unpickle(path: Path, root: Path) -> dict[str, Any]:
    """The dict in one CIFAR-100 pickle, read with ``load_restricted`` (plain data and numpy)."""
    try:
        raw = load_restricted(path, _CIFAR_GLOBALS, encoding="latin1")
    except ForbiddenGlobal as err:
        raise _error(
            "cifar100",
            f"{path} is not a genuine CIFAR-100 pickle: it asks to load the global "
            f"{err.global_name}, which CIFAR-100 files never hold (nothing was run); re-download it",
            root,
        ) from None
    except Exception as err:  # a damaged or crafted pickle can raise nearly anything
        raise _error("cifar100", f"cannot read {path}: {err}", root) from None
    if not isinstance(raw, dict):
        raise _error("cifar100", f"{path} does not hold a dict", root)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar_split(path: Path, root: Path, num_classes: int) -> tuple[np.ndarray, list[int]]:
    entry = _unpickle(path, root)
    if "data" not in entry or "fine_labels" not in entry:
        raise _error("cifar100", f"{path} lacks the keys 'data' and 'fine_labels'", root)
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = [int(y) for y in entry["fine_labels"]]
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise _error("cifar100", f"{path}: expected 'data' of shape (N, 3072) and N labels", root)
    if labels and not 0 <= min(labels) <= max(labels) < num_classes:
        raise _error("cifar100", f"{path}: labels outside 0..{num_classes - 1}", root)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


@datasets.register("cifar100")
def build_cifar100(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Split CIFAR-100 (50k/10k, 32x32) from the Python pickles; torchvision downloads them."""
    transforms = pre.transforms("image")
    root = _root(cfg, "cifar100")
    folder = _find_cifar(root)
    if folder is None and cfg.download:
        try:
            from torchvision.datasets import CIFAR100

            CIFAR100(str(root), train=True, download=True)
        except Exception as err:  # network, disk or checksum failures
            raise _error("cifar100", f"downloading into {root} failed: {err}", root) from None
        folder = _find_cifar(root)
    if folder is None:
        raise _error(
            "cifar100",
            f"expected the folder {root / _CIFAR_DIR} with files train, test, meta",
            root,
        )
    meta = _unpickle(folder / "meta", root)
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise _error("cifar100", f"{folder / 'meta'} lacks 'fine_label_names'", root)
    class_names = [_readable(str(n)) for n in names]
    train = _cifar_split(folder / "train", root, len(class_names))
    test = _cifar_split(folder / "test", root, len(class_names))
    return DatasetPair(
        train=ArrayImageDataset(*train, transform=transforms.train),
        test=ArrayImageDataset(*test, transform=transforms.test),
        class_names=class_names,
    )


# --- ImageNet-R --------------------------------------------------------------------------------


def _wnid_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and _WNID.fullmatch(p.name)),
        key=lambda p: p.name,
    )


def _find_imagenet_r(root: Path) -> Path:
    for candidate in (root / "imagenet-r", root):
        if _wnid_folders(candidate):
            return candidate
    raise _error(
        "imagenet-r",
        f"expected the folder {root / 'imagenet-r'} holding class folders n01443537, ...",
        root,
    )


def _split_per_class(classes: Sequence[Sequence[Path]], seed: int) -> tuple[Items, Items]:
    """Per class (label = position in ``classes``), a seeded random 80/20 train/test split of its
    files (test share rounded, halves up); one generator draws the classes in label order."""
    rng = random.Random(seed)
    train: Items = []
    test: Items = []
    for label, class_files in enumerate(classes):
        files = list(class_files)
        rng.shuffle(files)
        n_test = (len(files) * 2 + 5) // 10  # round(0.2 n), halves up
        test += [(p, label) for p in sorted(files[:n_test])]
        train += [(p, label) for p in sorted(files[n_test:])]
    return train, test


def _seeded_split(folder: Path, root: Path, seed: int) -> tuple[list, list, list[str]]:
    """Per class, a seeded random 80/20 train/test split of the files (test share rounded)."""
    class_dirs = _wnid_folders(folder)
    files = []
    for class_dir in class_dirs:
        files.append(_images_in(class_dir))
        if not files[-1]:
            raise _error("imagenet-r", f"the class folder {class_dir} holds no images", root)
    train, test = _split_per_class(files, seed)
    return train, test, [d.name for d in class_dirs]


def _split_paths(split: Path, root: Path, name: str = "imagenet-r") -> tuple[Path, Path]:
    if split.is_dir():
        return split / f"{name}_train.yaml", split / f"{name}_test.yaml"
    name = split.name
    for this, other in (("train", "test"), ("test", "train")):
        if this in name:
            head, _, tail = name.rpartition(this)
            pair = split.with_name(head + other + tail)
            return (split, pair) if this == "train" else (pair, split)
    raise _error(
        name,
        f"data.split_file {split} must be a directory with {name}_train.yaml and "
        f"{name}_test.yaml, or a file whose name contains 'train' or 'test'",
        root,
    )


def _read_split_file(
    path: Path, folder: Path, root: Path, wnid_of: dict[int, str], name: str = "imagenet-r"
) -> list:
    """``(path, label)`` pairs from a CODA-Prompt / mammoth YAML split; fills ``wnid_of`` with the
    class folder (a wnid for ImageNet-R) of each label."""
    fmt = "a YAML mapping with equal-length lists `data` (paths .../<class>/<file>) and `targets`"
    if not path.is_file():
        raise _error(name, f"the split file {path} does not exist (expected {fmt})", root)
    try:
        raw = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise _error(name, f"cannot read the split file {path}: {err}", root) from None
    data = raw.get("data") if isinstance(raw, dict) else None
    targets = raw.get("targets") if isinstance(raw, dict) else None
    if not isinstance(data, list) or not isinstance(targets, list) or len(data) != len(targets):
        raise _error(name, f"the split file {path} is not {fmt}", root)
    items = []
    for entry, target in zip(data, targets, strict=True):
        parts = PurePosixPath(str(entry).replace("\\", "/")).parts
        if len(parts) < 2 or not isinstance(target, int) or target < 0:
            raise _error(name, f"{path}: bad entry {entry!r} -> {target!r} ({fmt})", root)
        wnid = parts[-2]
        if wnid_of.setdefault(target, wnid) != wnid:
            raise _error(
                name,
                f"{path}: label {target} is used for {wnid_of[target]} and {wnid}",
                root,
            )
        items.append((folder / wnid / parts[-1], target))
    return items


def _split_from_files(
    split: Path, folder: Path, root: Path, name: str = "imagenet-r"
) -> tuple[list, list, list[str]]:
    """Both YAML split files (``_split_paths``): the items and the class folder of each label."""
    train_file, test_file = _split_paths(split, root, name)
    wnid_of: dict[int, str] = {}
    train = _read_split_file(train_file, folder, root, wnid_of, name)
    test = _read_split_file(test_file, folder, root, wnid_of, name)
    num_classes = max(wnid_of) + 1 if wnid_of else 0
    if sorted(wnid_of) != list(range(num_classes)) or len(set(wnid_of.values())) != num_classes:
        unit = "wnid" if name == "imagenet-r" else "class folder"
        raise _error(
            name,
            f"the split files {train_file}, {test_file} must use labels "
            f"0..{num_classes - 1}, one {unit} each",
            root,
        )
    missing = [p for p, _ in train + test if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise _error(
            name,
            f"{len(missing)} images named in the split files are missing under "
            f"{folder}, e.g. {shown}",
            root,
        )
    return train, test, [wnid_of[i] for i in range(num_classes)]


@datasets.register("imagenet-r")
def build_imagenet_r(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Split ImageNet-R (200 classes, 24k/6k): from split files, or a seeded 80/20 split."""
    root = _root(cfg, "imagenet-r")
    folder = _find_imagenet_r(root)
    if cfg.split_file is not None:
        train, test, wnids = _split_from_files(Path(cfg.split_file).expanduser(), folder, root)
    else:
        train, test, wnids = _seeded_split(folder, root, seed)
    class_names = [IMAGENET_R_CLASSES.get(w, w) for w in wnids]
    return _file_pair(
        "imagenet-r", cfg, train, test, class_names, pre, can_delete=cfg.split_file is None
    )


# --- CUB-200-2011 ------------------------------------------------------------------------------

_CUB_DIR = "CUB_200_2011"
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _cub_table(path: Path, root: Path) -> dict[int, str]:
    """``<int id> <value>`` rows of a CUB metadata file, as a dict."""
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise _error(
                "cub200", f"{path}, line {number}: expected '<id> <value>', got {line!r}", root
            )
        table[int(fields[0])] = fields[1].strip()
    return table


@datasets.register("cub200")
def build_cub200(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Split CUB-200-2011 (200 classes, 5,994/5,794) with the official train/test split."""
    root = _root(cfg, "cub200")
    folder = next(
        (c for c in (root / _CUB_DIR, root) if all((c / f).is_file() for f in _CUB_FILES)), None
    )
    if folder is None:
        raise _error(
            "cub200", f"expected the folder {root / _CUB_DIR} with {', '.join(_CUB_FILES)}", root
        )
    images, labels, is_train, classes = (_cub_table(folder / f, root) for f in _CUB_FILES)
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise _error("cub200", f"{folder / 'classes.txt'} must number classes 1..N", root)
    class_names = [_readable(re.sub(r"^\d+\.", "", classes[i])) for i in sorted(classes)]
    train: list[tuple[Path, int]] = []
    test: list[tuple[Path, int]] = []
    for image_id in sorted(images):
        label, flag = labels.get(image_id, ""), is_train.get(image_id, "")
        if not label.isdigit() or not 1 <= int(label) <= len(classes) or flag not in ("0", "1"):
            raise _error(
                "cub200",
                f"image id {image_id} lacks a valid class in image_class_labels.txt "
                "or a 0/1 flag in train_test_split.txt",
                root,
            )
        (train if flag == "1" else test).append(
            (folder / "images" / images[image_id], int(label) - 1)
        )
    missing = [p for p, _ in train + test if not p.is_file()]
    if missing:
        raise _error(
            "cub200",
            f"{len(missing)} images listed in images.txt are missing, e.g. {missing[0]}",
            root,
        )
    return _file_pair("cub200", cfg, train, test, class_names, pre, can_delete=False)


# --- generic class-per-folder ------------------------------------------------------------------


def _class_folders(split_dir: Path, root: Path, name: str = "folder") -> dict[str, list[Path]]:
    """The image files of each class folder in ``split_dir``, by folder name (sorted)."""
    if not split_dir.is_dir():
        raise _error(name, f"expected the folder {split_dir}", root)
    classes = {
        d.name: _images_in(d)
        for d in sorted(split_dir.iterdir(), key=lambda p: p.name)
        if d.is_dir() and not d.name.startswith(".")
    }
    if not classes:
        raise _error(name, f"{split_dir} holds no class folders", root)
    empty = [folder for folder, files in classes.items() if not files]
    if empty:
        raise _error(name, f"class folders without images in {split_dir}: {empty}", root)
    return classes


@datasets.register("folder")
def build_folder(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Any dataset laid out as ``train/<class>/*`` and ``test/<class>/*``."""
    root = _root(cfg, "folder")
    train_classes = _class_folders(root / "train", root)
    test_classes = _class_folders(root / "test", root)
    if set(train_classes) != set(test_classes):
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise _error(
            "folder",
            f"train and test must hold the same class folders; only in train: "
            f"{only_train}, only in test: {only_test}",
            root,
        )
    names = sorted(train_classes)

    def items(classes: dict[str, list[Path]]) -> Items:
        return [(p, label) for label, name in enumerate(names) for p in classes[name]]

    class_names = [_readable(n) for n in names]
    return _file_pair("folder", cfg, items(train_classes), items(test_classes), class_names, pre)
