"""The transfer benchmarks of STAR-Prompt (ECCV'24, aimagelab/mammoth): Stanford Cars-196,
EuroSAT (RGB), NWPU-RESISC45, ISIC 2018 task 3, ChestX-ray8 (NIH) and CropDisease (PlantVillage).

The builders follow ``promptcl.data.images``: items are ``(transform(PIL RGB image), label)``
with labels 0..C-1 in the order given below, readable class names (CLIP captions), images opened
only when read, files checked after listing (``data.verify``, ``data.on_bad_file``), and a
missing folder or file stops the build with the path expected and where the data comes from.
``data.root`` may point at the folder named first in each layout or at the folder above it.

mammoth (``datasets/seq_*.py``) reads ready-made copies (tensors, pickles, split lists) it
downloads from its own mirrors; these builders read the public releases instead, with mammoth's
class sets and label orders, and read mammoth's split lists where they are plain files. Where
neither the release nor such a list gives a split, each class is split 80/20 at random with the
run seed (as ``imagenet-r`` without ``data.split_file``): ``_split_per_class``.

- ``cars196`` (196 classes, 8,144 train / 8,041 test, the official split; mammoth's copy is the
  same split, from activeloop's ``stanford-cars-{train,test}``, labels = class id - 1 and names
  from ``cars_meta.mat``). Layouts: the devkit release, as torchvision's ``StanfordCars``:
  ``stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat,
  cars_test_annos_withlabels.mat, cars_train/<file>.jpg, cars_test/<file>.jpg}`` (the test
  labels may also sit in ``devkit/``; ``cars_train/cars_train/`` nesting, as on Kaggle, is
  accepted); its ``.mat`` files need scipy. Or the CSV copy of Kaggle's "Stanford Car Dataset by
  classes folder": ``{names.csv, anno_train.csv, anno_test.csv, car_data/car_data/{train,test}/
  <class>/<file>.jpg}`` (``names.csv``: one class name a row, in class-id order; ``anno_*.csv``:
  rows ``<file>,x1,y1,x2,y2,<class id 1..196>`` without a header). Names as in the metadata
  ("AM General Hummer SUV 2000"). mammoth splits 196 classes as ``[20] * 9 + [16]``: give that
  as ``data.task_sizes`` (196 does not split into the default 10 equal tasks).
- ``eurosat`` (10 classes, 27,000 64x64 images): ``EuroSAT_RGB/<Class>/<Class>_<n>.jpg``
  (zenodo's EuroSAT_RGB.zip; ``2750/`` of the older EuroSAT.zip, as torchvision, also works).
  Labels: class folders sorted by name (AnnualCrop, Forest, HerbaceousVegetation, Highway,
  Industrial, Pasture, PermanentCrop, Residential, River, SeaLake), names split at capitals
  ("annual crop"), seeded 80/20 split. mammoth reads CoOp's split (``split.json`` in its data
  folder, CoOp's ``split_zhou_EuroSAT.json``: ``{"train"|"val"|"test": [[<Class>/<file>, label,
  name], ...]}``, 13,500 / 5,400 / 8,100) and trains on ``train``, tests on ``test``, ``val``
  unused, with CoOp's names ("Annual Crop Land"). That file is read when ``data.split_file``
  names it (or a folder holding it), or when it lies in ``data.root`` or the image folder as
  ``split.json`` / ``split_zhou_EuroSAT.json``; labels, names and the train/test lists are then
  the file's (``val`` left out, as in mammoth). 5 tasks of 2 classes by default, as mammoth.
- ``resisc45`` (45 classes, 700 256x256 images each): ``NWPU-RESISC45/<class>/<class>_<nnn>.jpg``
  (the authors' NWPU-RESISC45.rar). Labels: class folders sorted by name, as mammoth's list
  (airplane, airport, baseball_diamond, ...); names with ``_`` as spaces. Split: mammoth's
  ``resisc45_train.yaml`` / ``resisc45_test.yaml`` (the ImageNet-R split-file format: ``data``
  paths ending ``<class>/<file>``, ``targets``) when ``data.split_file`` names them (a folder or
  one of the two) or they lie in ``data.root`` or the image folder; else the seeded 80/20 split.
  9 tasks of 5 classes, as mammoth.
- ``isic`` (6 classes): ISIC 2018 task 3 (HAM10000) training data, the part CD-FSL uses:
  ``{ISIC2018_Task3_Training_Input/ISIC_<id>.jpg, ISIC2018_Task3_Training_GroundTruth/
  ISIC2018_Task3_Training_GroundTruth.csv}`` (the CSV may also sit next to the input folder;
  columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one-hot). mammoth keeps 6 of the 7 classes:
  melanoma, basal cell carcinoma, actinic keratosis or intraepithelial carcinoma, benign
  keratosis, dermatofibroma, vascular skin lesion (labels 0..5 in that order, the CSV's column
  order); NV (melanocytic nevus, 6,705 of the 10,015 images) is left out. Its code gives no
  reason and ships only pickled arrays, so its split cannot be read: seeded 80/20 split of the
  3,310 images kept. 3 tasks of 2 classes, as mammoth.
- ``chestx`` (6 classes): NIH ChestX-ray (the CD-FSL "ChestX" source):
  ``{Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv), images/<name>.png}``, the images also
  accepted in the ``images_001/images/`` ... ``images_012/images/`` folders of the Kaggle copy.
  As CD-FSL, only images with a single finding are used (``Finding Labels`` without ``|``), and
  only mammoth's six: Cardiomegaly, Consolidation, Edema, Fibrosis, Pleural Thickening,
  Pneumothorax (labels 0..5 in that order); mammoth says it drops the classes with the fewest and
  the most samples against the imbalance (its pickles do not show from which set). Split: the
  official patient-wise ``train_val_list.txt`` / ``test_list.txt`` when both are in the folder,
  else the seeded 80/20 split (which may put one patient's images on both sides). 2 tasks of
  3 classes, as mammoth.
- ``cropdisease`` (35 classes): PlantVillage, one folder per class named ``<Crop>___<condition>``:
  CD-FSL's Kaggle copy (``dataset/train/``), the original ``raw/color/`` or Mendeley's
  ``Plant_leave_diseases_dataset_without_augmentation/``. Folder names are matched to mammoth's
  35 classes with crop qualifiers and trailing ``_`` dropped (``Corn_(maize)___Common_rust_`` is
  ``Corn___Common_rust``); mammoth's list leaves out Apple___Cedar_apple_rust, Peach___healthy
  and Potato___healthy (PlantVillage's three smallest classes; mammoth states no reason;
  35 = 7 tasks of 5), and other folders (Background_without_leaves) are ignored. Labels: mammoth's order (its folder names sorted);
  names are mammoth's with ``_`` as spaces and runs of spaces collapsed ("Apple Apple scab").
  Split: mammoth's ``train.json`` / ``test.json`` (``{"data": [<path under images/>], "labels":
  [0..34]}``, images under ``<data.root>/images/``) when ``data.split_file`` names them (a folder
  or one of the two) or they lie in ``data.root``; else the seeded 80/20 split of the classes
  found. 7 tasks of 5 classes, as mammoth.

``data.split_file`` is refused by ``cars196``, ``isic`` and ``chestx``, which read no split file.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from promptcl.config import DataConfig
from promptcl.data.base import DatasetPair, Preprocessing
from promptcl.data.images import (
    _LAYOUTS,
    _SOURCES,
    IMAGE_EXTENSIONS,
    _class_folders,
    _error,
    _file_pair,
    _images_in,
    _readable,
    _root,
    _split_from_files,
    _split_per_class,
)
from promptcl.data.verify import Items
from promptcl.registry import datasets

# images.py's messages (``_error``, ``_root``) look the layout and source up by dataset name
_LAYOUTS.update(
    {
        "cars196": "<data.root>/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
        "cars_test_annos_withlabels.mat, cars_train/*.jpg, cars_test/*.jpg}, or <data.root>/"
        "{names.csv, anno_train.csv, anno_test.csv, car_data/car_data/{train,test}/<class>/*.jpg}",
        "eurosat": "<data.root>/EuroSAT_RGB/<Class>/<Class>_<n>.jpg (10 folders such as "
        "AnnualCrop), optionally with CoOp's split file split.json / split_zhou_EuroSAT.json",
        "resisc45": "<data.root>/NWPU-RESISC45/<class>/<class>_<nnn>.jpg (45 folders such as "
        "airplane), optionally with mammoth's resisc45_train.yaml and resisc45_test.yaml",
        "isic": "<data.root>/{ISIC2018_Task3_Training_Input/ISIC_<id>.jpg, "
        "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv}",
        "chestx": "<data.root>/{Data_Entry_2017.csv, images/<name>.png (or images_001/images/...)"
        ", optionally train_val_list.txt and test_list.txt}",
        "cropdisease": "<data.root>/<Crop>___<condition>/<image> (PlantVillage class folders; "
        "also under dataset/train, raw/color or Plant_leave_diseases_dataset_without_"
        "augmentation), or mammoth's <data.root>/{train.json, test.json, images/...}",
    }
)
_SOURCES.update(
    {
        "cars196": "the Stanford Cars release (devkit + cars_train.tgz + cars_test.tgz + "
        "cars_test_annos_withlabels.mat; the original site is offline: see torchvision's "
        "StanfordCars notes for mirrors such as Kaggle's stanford-cars-dataset), or Kaggle's "
        "'Stanford Car Dataset by classes folder' (CSV annotations)",
        "eurosat": "https://zenodo.org/records/7711810 (EuroSAT_RGB.zip), "
        "https://github.com/phelber/EuroSAT; CoOp's split: KaiyangZhou/CoOp DATASETS.md",
        "resisc45": "the NWPU-RESISC45 release of Cheng et al. (NWPU-RESISC45.rar, linked from "
        "TensorFlow Datasets' and torchgeo's resisc45 pages)",
        "isic": "https://challenge.isic-archive.com/data/#2018 (Task 3 training input and "
        "ground truth zips)",
        "chestx": "https://nihcc.app.box.com/v/ChestXray-NIHCC (images_*.tar.gz, "
        "Data_Entry_2017.csv, train_val_list.txt, test_list.txt), or Kaggle's nih-chest-xrays/data",
        "cropdisease": "PlantVillage: https://www.kaggle.com/saroz014/plant-disease (CD-FSL), "
        "https://github.com/spMohanty/PlantVillage-Dataset (raw/color) or Mendeley Data "
        "tywbtsjrjv",
    }
)

Rows = list[tuple[str, int]]  # (file name or relative path, label) from an annotation file


def _first(candidates: Iterable[Path], accept: Callable[[Path], bool]) -> Path | None:
    return next((c for c in candidates if accept(c)), None)


def _no_split_file(cfg: DataConfig, name: str, root: Path) -> None:
    if cfg.split_file is not None:
        raise _error(
            name,
            f"data.split_file ({cfg.split_file}) is not read by this dataset (its split is "
            "described in promptcl.data.transfer); unset it",
            root,
        )


def _require_files(name: str, items: Items, root: Path, listed_in: str) -> None:
    missing = [p for p, _ in items if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise _error(
            name, f"{len(missing)} images listed in {listed_in} are missing, e.g. {shown}", root
        )


def _has_class_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a sub-folder with at least one image file."""
    if not folder.is_dir():
        return False
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in sub.iterdir()):
                return True
    return False


def _finish(
    name: str,
    cfg: DataConfig,
    train: Items,
    test: Items,
    class_names: list[str],
    pre: Preprocessing,
    can_delete: bool,
    tasks: int,
) -> DatasetPair:
    """``images._file_pair`` (checks the files), with the benchmark's usual number of tasks."""
    pair = _file_pair(name, cfg, train, test, class_names, pre, can_delete=can_delete)
    return replace(pair, default_tasks=tasks)


def _by_label(items: Items) -> Items:
    """Items ordered by label, then path (a fixed order whatever the annotation file's)."""
    return sorted(items, key=lambda item: (item[1], str(item[0])))


def _read_csv(name: str, path: Path, root: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise _error(name, f"cannot read {path}: {err}", root) from None


def _columns(name: str, path: Path, root: Path, header: list[str], wanted: Sequence[str]):
    """The positions of the ``wanted`` columns in a CSV header."""
    index = {column.strip(): i for i, column in enumerate(header)}
    missing = [c for c in wanted if c not in index]
    if missing:
        raise _error(name, f"{path} lacks the columns {missing} (header: {header})", root)
    return [index[c] for c in wanted]


def _split_json_pair(
    name: str, split: Path, files: tuple[str, str], root: Path
) -> tuple[Path, Path]:
    """Train and test files from a folder holding ``files`` or from one of the two files (the
    other found by swapping ``train``/``test`` in its name), as ``images._split_paths``."""
    if split.is_dir():
        return split / files[0], split / files[1]
    for this, other in (("train", "test"), ("test", "train")):
        if this in split.name:
            head, _, tail = split.name.rpartition(this)
            pair = split.with_name(head + other + tail)
            return (split, pair) if this == "train" else (pair, split)
    raise _error(
        name,
        f"data.split_file {split} must be a directory with {files[0]} and {files[1]}, or a "
        "file whose name contains 'train' or 'test'",
        root,
    )


def _load_json(name: str, path: Path, root: Path, fmt: str) -> Any:
    if not path.is_file():
        raise _error(name, f"the split file {path} does not exist (expected {fmt})", root)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _error(name, f"cannot read the split file {path}: {err}", root) from None


def _tail(entry: object, parts: int) -> PurePosixPath:
    """The last ``parts`` parts of a stored path (``/`` or ``\\`` separated)."""
    path = PurePosixPath(str(entry).replace("\\", "/"))
    return PurePosixPath(*path.parts[-parts:])


# --- Stanford Cars-196 -------------------------------------------------------------------------

_CARS_DIRS = ("stanford_cars", "stanford-cars", "cars196")
_CARS_TEST_LABELS = "cars_test_annos_withlabels.mat"


def _loadmat(path: Path, root: Path) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise _error(
            "cars196",
            f"reading {path.name} (a MATLAB file) needs scipy: `pip install scipy`",
            root,
        ) from None
    if not path.is_file():
        raise _error("cars196", f"expected the file {path}", root)
    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises ValueError, OSError, NotImplementedError (v7.3)...
        raise _error("cars196", f"cannot read {path}: {err}", root) from None


def _cars_annotations(path: Path, root: Path) -> Rows:
    """``(fname, class id)`` rows of a devkit annotation file (struct array ``annotations``)."""
    raw = _loadmat(path, root).get("annotations")
    records = np.atleast_1d(raw) if raw is not None else None
    fields = records.dtype.names if records is not None else None
    if fields is None or not {"fname", "class"} <= set(fields):
        hint = " (use cars_test_annos_withlabels.mat)" if path.name == "cars_test_annos.mat" else ""
        raise _error(
            "cars196",
            f"{path} lacks a struct array 'annotations' with fields 'fname' and 'class'{hint}",
            root,
        )
    try:
        return [(str(r["fname"]).strip(), int(r["class"])) for r in records]
    except (TypeError, ValueError) as err:
        raise _error("cars196", f"{path}: bad annotation ({err})", root) from None


def _cars_devkit(folder: Path, root: Path) -> tuple[list[str], list[Items]]:
    """The devkit release: names from cars_meta.mat, images in cars_train/ and cars_test/."""
    devkit = folder / "devkit"
    meta = _loadmat(devkit / "cars_meta.mat", root).get("class_names")
    if meta is None:
        raise _error("cars196", f"{devkit / 'cars_meta.mat'} lacks 'class_names'", root)
    names = [str(n).strip() for n in np.atleast_1d(meta)]
    test_file = _first((folder / _CARS_TEST_LABELS, devkit / _CARS_TEST_LABELS), Path.is_file)
    if test_file is None:
        raise _error(
            "cars196",
            f"expected the test labels {folder / _CARS_TEST_LABELS} (released apart from the "
            "devkit, whose cars_test_annos.mat has no classes)",
            root,
        )
    splits = []
    for rows_file, images in (
        (devkit / "cars_train_annos.mat", "cars_train"),
        (test_file, "cars_test"),
    ):
        image_dir = _first((folder / images / images, folder / images), Path.is_dir)
        image_dir = image_dir or folder / images
        rows = _cars_annotations(rows_file, root)
        splits.append(_cars_items(rows, names, root, lambda f, d=image_dir: d / f))
    return names, splits


def _cars_csv(folder: Path, root: Path) -> tuple[list[str], list[Items]]:
    """The CSV copy: names.csv, anno_{train,test}.csv, images anywhere below the split folders."""
    names = [",".join(row).strip() for row in _read_csv("cars196", folder / "names.csv", root)]
    splits = []
    for split in ("train", "test"):
        path = folder / f"anno_{split}.csv"
        if not path.is_file():
            raise _error("cars196", f"expected the file {path}", root)
        rows = []
        for number, row in enumerate(_read_csv("cars196", path, root), start=1):
            if len(row) < 2 or not row[-1].strip().isdigit():
                raise _error(
                    "cars196",
                    f"{path}, row {number}: expected '<file>,x1,y1,x2,y2,<class id>', got {row}",
                    root,
                )
            rows.append((row[0].strip(), int(row[-1])))
        dirs = (folder / "car_data" / "car_data" / split, folder / "car_data" / split)
        image_dir = _first(dirs + (folder / split,), Path.is_dir) or dirs[0]
        by_name = _images_below(image_dir)
        splits.append(
            _cars_items(rows, names, root, lambda f, d=image_dir, m=by_name: m.get(f, d / f))
        )
    return names, splits


def _images_below(folder: Path) -> dict[str, Path]:
    """Image files anywhere below ``folder``, by file name."""
    if not folder.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    }


def _cars_items(rows: Rows, names: list[str], root: Path, locate: Callable[[str], Path]) -> Items:
    items = []
    for fname, class_id in rows:
        if not 1 <= class_id <= len(names):
            raise _error("cars196", f"{fname}: class id {class_id} outside 1..{len(names)}", root)
        items.append((locate(fname), class_id - 1))
    return items


@datasets.register("cars196")
def build_cars196(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Stanford Cars-196 with the official train/test split (8,144 / 8,041)."""
    root = _root(cfg, "cars196")
    _no_split_file(cfg, "cars196", root)
    candidates = [root / d for d in _CARS_DIRS] + [root]
    devkit = _first(candidates, lambda c: (c / "devkit" / "cars_meta.mat").is_file())
    kaggle = _first(candidates, lambda c: (c / "names.csv").is_file())
    if devkit is not None:
        names, (train, test) = _cars_devkit(devkit, root)
        listed_in = f"the annotation files of {devkit}"
    elif kaggle is not None:
        names, (train, test) = _cars_csv(kaggle, root)
        listed_in = f"{kaggle / 'anno_train.csv'} and anno_test.csv"
    else:
        raise _error(
            "cars196",
            f"expected the folder {root / 'stanford_cars'} with devkit/cars_meta.mat (or the "
            "CSV copy's names.csv)",
            root,
        )
    _require_files("cars196", train + test, root, listed_in)
    return _finish("cars196", cfg, train, test, names, pre, can_delete=False, tasks=10)


# --- EuroSAT (RGB) -----------------------------------------------------------------------------

_EUROSAT_DIRS = ("EuroSAT_RGB", "2750", "eurosat/2750", "EuroSAT/2750", "eurosat/EuroSAT_RGB")
_EUROSAT_SPLITS = ("split.json", "split_zhou_EuroSAT.json")
_EUROSAT_FMT = (
    'a JSON object with lists "train" and "test" of [<Class>/<file>, label, class name] '
    "(CoOp's split_zhou_EuroSAT.json)"
)


def _camel_words(name: str) -> str:
    """``AnnualCrop`` -> ``annual crop``."""
    return " ".join(re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)).lower() or name


def _eurosat_split_file(cfg: DataConfig, folder: Path, root: Path) -> Path | None:
    if cfg.split_file is not None:
        given = Path(cfg.split_file).expanduser()
        if given.is_dir():
            found = _first((given / f for f in _EUROSAT_SPLITS), Path.is_file)
            return found or given / _EUROSAT_SPLITS[0]
        return given
    return _first((d / f for d in (root, folder) for f in _EUROSAT_SPLITS), Path.is_file)


def _eurosat_from_split(path: Path, folder: Path, root: Path) -> tuple[Items, Items, list[str]]:
    raw = _load_json("eurosat", path, root, _EUROSAT_FMT)
    name_of: dict[int, str] = {}
    splits = []
    for split in ("train", "test"):
        entries = raw.get(split) if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise _error("eurosat", f"the split file {path} is not {_EUROSAT_FMT}", root)
        items = []
        for entry in entries:
            if (
                not isinstance(entry, list)
                or len(entry) != 3
                or not isinstance(entry[1], int)
                or entry[1] < 0
            ):
                raise _error("eurosat", f"{path}: bad {split} entry {entry!r}", root)
            rel, label, name = entry
            if name_of.setdefault(label, str(name)) != str(name):
                raise _error(
                    "eurosat", f"{path}: label {label} is {name_of[label]!r} and {name!r}", root
                )
            items.append((folder / _tail(rel, 2), label))
        splits.append(items)
    if sorted(name_of) != list(range(len(name_of))):
        raise _error("eurosat", f"{path}: labels must be 0..{len(name_of) - 1}", root)
    _require_files("eurosat", splits[0] + splits[1], root, str(path))
    return splits[0], splits[1], [name_of[i] for i in range(len(name_of))]


@datasets.register("eurosat")
def build_eurosat(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """EuroSAT RGB (10 land-cover classes): CoOp's split when given, else a seeded 80/20 split."""
    root = _root(cfg, "eurosat")
    folder = _first([root / d for d in _EUROSAT_DIRS] + [root], _has_class_folder)
    if folder is None:
        raise _error(
            "eurosat",
            f"expected the folder {root / 'EuroSAT_RGB'} holding class folders AnnualCrop, ...",
            root,
        )
    split = _eurosat_split_file(cfg, folder, root)
    if split is not None:
        train, test, names = _eurosat_from_split(split, folder, root)
        return _finish("eurosat", cfg, train, test, names, pre, can_delete=False, tasks=5)
    classes = _class_folders(folder, root, "eurosat")
    train, test = _split_per_class(list(classes.values()), seed)
    names = [_camel_words(c) for c in classes]
    return _finish("eurosat", cfg, train, test, names, pre, can_delete=True, tasks=5)


# --- NWPU-RESISC45 -----------------------------------------------------------------------------

_RESISC_DIRS = ("NWPU-RESISC45", "resisc45", "RESISC45")
_RESISC_SPLITS = ("resisc45_train.yaml", "resisc45_test.yaml")


@datasets.register("resisc45")
def build_resisc45(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """NWPU-RESISC45 (45 scene classes): mammoth's split files when given, else seeded 80/20."""
    root = _root(cfg, "resisc45")
    folder = _first([root / d for d in _RESISC_DIRS] + [root], _has_class_folder)
    if folder is None:
        raise _error(
            "resisc45",
            f"expected the folder {root / 'NWPU-RESISC45'} holding class folders airplane, ...",
            root,
        )
    if cfg.split_file is not None:
        split: Path | None = Path(cfg.split_file).expanduser()
    else:
        split = _first((root, folder), lambda d: all((d / f).is_file() for f in _RESISC_SPLITS))
    if split is not None:
        train, test, folders = _split_from_files(split, folder, root, "resisc45")
        names = [_readable(f) for f in folders]
        return _finish("resisc45", cfg, train, test, names, pre, can_delete=False, tasks=9)
    classes = _class_folders(folder, root, "resisc45")
    train, test = _split_per_class(list(classes.values()), seed)
    names = [_readable(c) for c in classes]
    return _finish("resisc45", cfg, train, test, names, pre, can_delete=True, tasks=9)


# --- ISIC 2018 task 3 --------------------------------------------------------------------------

_ISIC_DIRS = ("ISIC", "isic", "ISIC2018")
_ISIC_INPUT = "ISIC2018_Task3_Training_Input"
_ISIC_CSV = "ISIC2018_Task3_Training_GroundTruth.csv"
_ISIC_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
# mammoth's six classes (seq_isic.py), in its label order; NV is not among them
ISIC_CLASSES = {
    "MEL": "melanoma",
    "BCC": "basal cell carcinoma",
    "AKIEC": "actinic keratosis or intraepithelial carcinoma",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular skin lesion",
}


def _isic_csv(folder: Path) -> Path | None:
    return _first(
        (folder / "ISIC2018_Task3_Training_GroundTruth" / _ISIC_CSV, folder / _ISIC_CSV),
        Path.is_file,
    )


@datasets.register("isic")
def build_isic(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """ISIC 2018 task 3 training images, 6 of 7 classes (no NV), seeded 80/20 split."""
    root = _root(cfg, "isic")
    _no_split_file(cfg, "isic", root)
    folder = _first([root] + [root / d for d in _ISIC_DIRS], lambda c: _isic_csv(c) is not None)
    if folder is None:
        raise _error(
            "isic",
            f"expected {root / 'ISIC2018_Task3_Training_GroundTruth' / _ISIC_CSV} and the "
            f"images in {root / _ISIC_INPUT}",
            root,
        )
    path = _isic_csv(folder)
    assert path is not None
    rows = _read_csv("isic", path, root)
    if not rows:
        raise _error("isic", f"{path} is empty", root)
    image_col, *class_cols = _columns("isic", path, root, rows[0], ("image", *_ISIC_COLUMNS))
    kept = list(ISIC_CLASSES)
    per_class: list[list[Path]] = [[] for _ in kept]
    for number, row in enumerate(rows[1:], start=2):
        try:
            scores = [float(row[i]) for i in class_cols]
            image = row[image_col].strip()
        except (IndexError, ValueError):
            raise _error("isic", f"{path}, row {number}: bad row {row}", root) from None
        hot = [c for c, s in zip(_ISIC_COLUMNS, scores, strict=True) if s == 1.0]
        if len(hot) != 1 or sum(scores) != 1.0:
            raise _error("isic", f"{path}, row {number}: not one-hot: {row}", root)
        if hot[0] in ISIC_CLASSES:
            per_class[kept.index(hot[0])].append(folder / _ISIC_INPUT / f"{image}.jpg")
    empty = [ISIC_CLASSES[c] for c, files in zip(kept, per_class, strict=True) if not files]
    if empty:
        raise _error("isic", f"{path} lists no images of {empty}", root)
    train, test = _split_per_class([sorted(files) for files in per_class], seed)
    _require_files("isic", train + test, root, str(path))
    names = [ISIC_CLASSES[c] for c in kept]
    return _finish("isic", cfg, train, test, names, pre, can_delete=False, tasks=3)


# --- ChestX-ray8 (NIH) -------------------------------------------------------------------------

_CHESTX_DIRS = ("chestX", "chestx", "ChestX", "ChestX-ray8", "ChestXray-NIHCC")
_CHESTX_CSVS = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
_CHESTX_LISTS = ("train_val_list.txt", "test_list.txt")
# mammoth's six findings (seq_chestx.py), in its label order, as spelled in the CSV
CHESTX_CLASSES = (
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Fibrosis",
    "Pleural_Thickening",
    "Pneumothorax",
)


def _chestx_csv(folder: Path) -> Path | None:
    return _first((folder / f for f in _CHESTX_CSVS), Path.is_file)


def _chestx_images(folder: Path, wanted: set[str]) -> dict[str, Path]:
    """The wanted image files, from ``images/`` and the ``images_NNN[/images]`` folders."""
    dirs = [folder / "images"]
    for part in sorted(folder.glob("images_*")):
        dirs += [part / "images", part]
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in d.iterdir():
                if p.name in wanted and p.name not in found:
                    found[p.name] = p
    return found


def _read_list(path: Path, root: Path) -> set[str]:
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except (OSError, UnicodeDecodeError) as err:
        raise _error("chestx", f"cannot read {path}: {err}", root) from None


@datasets.register("chestx")
def build_chestx(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """NIH ChestX-ray single-finding images of 6 findings: official or seeded 80/20 split."""
    root = _root(cfg, "chestx")
    _no_split_file(cfg, "chestx", root)
    candidates = [root / d for d in _CHESTX_DIRS] + [root]
    folder = _first(candidates, lambda c: _chestx_csv(c) is not None)
    if folder is None:
        raise _error(
            "chestx",
            f"expected {root / 'Data_Entry_2017.csv'} (or in {root / 'chestX'}) and the images "
            f"in {root / 'images'}",
            root,
        )
    path = _chestx_csv(folder)
    assert path is not None
    rows = _read_csv("chestx", path, root)
    if not rows:
        raise _error("chestx", f"{path} is empty", root)
    image_col, finding_col = _columns(
        "chestx", path, root, rows[0], ("Image Index", "Finding Labels")
    )
    label_of: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) <= max(image_col, finding_col):
            raise _error("chestx", f"{path}, row {number}: bad row {row}", root)
        finding = row[finding_col].strip()
        if finding in CHESTX_CLASSES:  # one finding only (no '|'), one of mammoth's six
            label_of[row[image_col].strip()] = CHESTX_CLASSES.index(finding)
    found = _chestx_images(folder, set(label_of))
    items = [(found.get(n, folder / "images" / n), y) for n, y in label_of.items()]
    _require_files("chestx", items, root, str(path))
    names = [_readable(c) for c in CHESTX_CLASSES]
    empty = [names[y] for y in range(len(names)) if y not in label_of.values()]
    if empty:
        raise _error("chestx", f"{path} lists no single-finding images of {empty}", root)
    lists = [folder / f for f in _CHESTX_LISTS]
    if all(p.is_file() for p in lists):
        train_names, test_names = (_read_list(p, root) for p in lists)
        train = _by_label([(p, y) for p, y in items if p.name in train_names])
        test = _by_label([(p, y) for p, y in items if p.name in test_names])
        if len(train) + len(test) != len(items) or set(train) & set(test):
            raise _error(
                "chestx",
                f"{lists[0]} and {lists[1]} must list every image once between them",
                root,
            )
    else:
        per_class = [sorted(p for p, y in items if y == label) for label in range(len(names))]
        train, test = _split_per_class(per_class, seed)
    return _finish("chestx", cfg, train, test, names, pre, can_delete=False, tasks=2)


# --- CropDisease (PlantVillage) ----------------------------------------------------------------

# mammoth's 35 classes (seq_cropdisease.py), in its label order: PlantVillage's folder names,
# sorted, with crop qualifiers and trailing '_' removed, less three classes (see the module notes)
CROPDISEASE_CLASSES = (
    "Apple___Apple_scab",
    "Apple___Black_rot",
    "Apple___healthy",
    "Blueberry___healthy",
    "Cherry___Powdery_mildew",
    "Cherry___healthy",
    "Corn___Cercospora_leaf_spot Gray_leaf_spot",
    "Corn___Common_rust",
    "Corn___Northern_Leaf_Blight",
    "Corn___healthy",
    "Grape___Black_rot",
    "Grape___Esca_(Black_Measles)",
    "Grape___Leaf_blight_(Isariopsis_Leaf_Spot)",
    "Grape___healthy",
    "Orange___Haunglongbing_(Citrus_greening)",
    "Peach___Bacterial_spot",
    "Pepper,_bell___Bacterial_spot",
    "Pepper,_bell___healthy",
    "Potato___Early_blight",
    "Potato___Late_blight",
    "Raspberry___healthy",
    "Soybean___healthy",
    "Squash___Powdery_mildew",
    "Strawberry___Leaf_scorch",
    "Strawberry___healthy",
    "Tomato___Bacterial_spot",
    "Tomato___Early_blight",
    "Tomato___Late_blight",
    "Tomato___Leaf_Mold",
    "Tomato___Septoria_leaf_spot",
    "Tomato___Spider_mites Two-spotted_spider_mite",
    "Tomato___Target_Spot",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus",
    "Tomato___Tomato_mosaic_virus",
    "Tomato___healthy",
)
_CROP_DIRS = (
    "dataset/train",
    "train",
    "color",
    "raw/color",
    "Plant_leave_diseases_dataset_without_augmentation",
    "plantvillage dataset/color",
)
_CROP_SPLITS = ("train.json", "test.json")
_CROP_FMT = 'a JSON object with equal-length lists "data" (paths under images/) and "labels"'


def _plant_key(folder_name: str) -> str | None:
    """A PlantVillage folder name as in mammoth's list, lower-cased, or None if not one."""
    crop, sep, condition = folder_name.partition("___")
    if not sep:
        return None
    crop = re.sub(r"_\([^)]*\)$", "", crop.strip())  # Corn_(maize) -> Corn
    return f"{crop}___{condition.strip().rstrip('_')}".lower()


_CROP_LABEL = {_plant_key(c): i for i, c in enumerate(CROPDISEASE_CLASSES)}


def _crop_name(cls: str) -> str:
    return " ".join(cls.replace("_", " ").split())


def _crop_tree(folder: Path) -> dict[int, Path]:
    """mammoth's label -> class folder, for the class folders of ``folder``."""
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for sub in sorted(folder.iterdir(), key=lambda p: p.name):
        label = _CROP_LABEL.get(_plant_key(sub.name)) if sub.is_dir() else None
        if label is not None:
            found.setdefault(label, sub)
    return found


def _crop_from_json(split: Path, root: Path) -> tuple[Items, Items, list[str]]:
    images = root / "images"
    splits = []
    for path in _split_json_pair("cropdisease", split, _CROP_SPLITS, root):
        raw = _load_json("cropdisease", path, root, _CROP_FMT)
        data = raw.get("data") if isinstance(raw, dict) else None
        labels = raw.get("labels") if isinstance(raw, dict) else None
        if not isinstance(data, list) or not isinstance(labels, list) or len(data) != len(labels):
            raise _error("cropdisease", f"the split file {path} is not {_CROP_FMT}", root)
        bad = [y for y in labels if not isinstance(y, int) or not 0 <= y < 35]
        if bad:
            raise _error("cropdisease", f"{path}: labels outside 0..34, e.g. {bad[0]!r}", root)
        splits.append([(images / str(d), y) for d, y in zip(data, labels, strict=True)])
    _require_files("cropdisease", splits[0] + splits[1], root, f"the split files in {split}")
    return splits[0], splits[1], [_crop_name(c) for c in CROPDISEASE_CLASSES]


@datasets.register("cropdisease")
def build_cropdisease(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """PlantVillage as mammoth's 35-class CropDisease: its split files, or seeded 80/20."""
    root = _root(cfg, "cropdisease")
    if cfg.split_file is not None:
        split: Path | None = Path(cfg.split_file).expanduser()
    else:
        split = root if all((root / f).is_file() for f in _CROP_SPLITS) else None
    if split is not None:
        train, test, names = _crop_from_json(split, root)
        return _finish("cropdisease", cfg, train, test, names, pre, can_delete=False, tasks=7)
    folder = _first([root] + [root / d for d in _CROP_DIRS], lambda c: bool(_crop_tree(c)))
    if folder is None:
        raise _error(
            "cropdisease",
            f"expected PlantVillage class folders such as {root / 'Apple___Apple_scab'} (or "
            f"in {root / 'dataset' / 'train'}), or mammoth's {root / 'train.json'}",
            root,
        )
    tree = _crop_tree(folder)
    labels = sorted(tree)
    files = [_images_in(tree[y]) for y in labels]
    empty = [str(tree[y]) for y, f in zip(labels, files, strict=True) if not f]
    if empty:
        raise _error("cropdisease", f"class folders without images: {empty}", root)
    train, test = _split_per_class(files, seed)
    names = [_crop_name(CROPDISEASE_CLASSES[y]) for y in labels]
    return _finish("cropdisease", cfg, train, test, names, pre, can_delete=True, tasks=7)
