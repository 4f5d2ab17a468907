"""Real video datasets from their official layouts: UCF101, HMDB51, Something-Something V2,
Breakfast, and a generic class-per-folder layout; vCLIMB splits.

Each builder lists ``(video, label)`` pairs with labels 0..C-1 and readable class names (CLIP
captions: "ApplyEyeMakeup" -> "apply eye makeup", "brush_hair" -> "brush hair"), then hands them
to ``promptcl.data.video_io.video_pair``, which checks the files (``data.verify``,
``data.on_bad_file``) and decodes clips (``data.frames``, ``frame_sampler``, ...). The listing
functions (``list_ucf101``, ...) do no decoding and are usable on their own. ``data.root`` may
point at the folder named first in each layout or at the folder above it. A missing folder or
list stops the build with the layout expected, where the data comes from and the config key to
set.

A video is named by a list (``v_X_g01_c01.avi``) or by its stem (vCLIMB and SSv2 ids). It is
found, in its folder, as (1) the file as named, else (2) a video file of the same stem with
another extension (``X.mp4`` for ``X.avi``, the first by name; extensions: ``VIDEO_EXTENSIONS``),
else (3) a folder ``X/`` of the same stem holding the extracted frames (images read in file-name
order by ``video_io``). So pre-extracted frames may replace any video file; where both exist the
file is read. Folder scans (``video-folder``, Breakfast) take one video per stem by the same rule.

- ``ucf101`` (101 classes, 13,320 videos): ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (UCF101.rar)
  and ``ucfTrainTestlist/{classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt}``
  (UCF101TrainTestSplits-RecognitionTask.zip; the lists may also sit in the parent of
  ``UCF-101``). ``classInd.txt`` gives labels ("1 ApplyEyeMakeup" -> label 0); ``data.official_split``
  picks the train/test lists (1-3; split 1 has 9,537 / 3,783 videos). 101 classes do not split
  into 10 equal tasks: configs give TCD's ``base_classes: 51, num_tasks: 11`` (51 + 10x5), or a
  vCLIMB split.
- vCLIMB (``data.split_file`` on ``ucf101`` or ``video-folder``): ojedaf/vCLIMB_Benchmark's
  ``UCF101_data.pkl`` / ``UCF101_data_20tasks.pkl`` (or the same content as JSON):
  ``{"train"|"val"|"test": [per task {class name: [video ids]}]}``, ids such as
  ``v_ApplyEyeMakeup_g08_c01`` (UCF101's file stems; the class is the dict key, e.g.
  ``HandstandPushups`` for ``v_HandStandPushups_g05_c03``). The pickle is read with
  ``safe_pickle.load_restricted`` (plain data only: a crafted file cannot run code). Videos are
  ``UCF-101/<class>/<id>`` (``ucf101``) or ``<data.root>/<class>/<id>`` (``video-folder``, vCLIMB's
  ``path_frames``), each a video file or a frame folder. Labels are numbered task by task in the
  file's order and ``DatasetPair.task_sizes`` holds the file's task sizes (UCF101: 11 + 9x10 or
  6 + 19x5), which the scenario then runs as they are (``promptcl.data.scenario``; the config must
  set ``data.shuffle_classes: false``). Training uses ``train``, testing ``test``; ``val`` is
  checked but not used. vCLIMB's split is its own random one (every group g01-g25 is in every
  part), not an official list, so ``data.official_split`` is then ignored.
- ``hmdb51`` (51 classes, 6,766 videos): ``hmdb51/<class>/<video>.avi`` (``hmdb51_org`` also
  accepted; each class's .rar unpacked) and ``testTrainMulti_7030_splits/<class>_test_split{1,2,
  3}.txt`` (test_train_splits.rar), lines ``<video>.avi <0|1|2>``: 1 train, 2 test, 0 unused (70
  / 30 / 0 per class). Classes sorted by name. ``data.official_split`` 1-3.
- ``ssv2`` (174 classes, 168,913 train / 24,777 validation): ``20bn-something-something-v2/<id>
  .webm`` and ``labels/{labels.json, train.json, validation.json}``; a video's class is its
  ``template`` with the brackets of "[something]" removed, looked up in ``labels.json`` (template
  -> index string). The test set is ``validation.json`` (test labels are not public). Names are
  the templates with a lower-case first letter ("putting something on a surface"). Clips are not
  mirrored (``video_io``).
- ``breakfast`` (10 activities, 1,712 videos): ``BreakfastII_15fps_qvga_sync/P<NN>/<camera>/
  P<NN>_<activity>.avi``, cameras cam01, cam02, webcam01, webcam02 and stereo (any folder name is
  read). The stereo camera's two channels ``P<NN>_<activity>_ch0.avi`` / ``_ch1.avi`` are one
  recording: only ``ch0`` is used, as in the lists of ViS4mer / VideoMamba (``_ch0`` only; 1,712
  videos in all, the dataset's count). Labels: the activities sorted by name (cereals, coffee,
  friedegg, juice, milk, pancake, salat, sandwich, scrambledegg, tea; names "fried egg", "salad",
  "scrambled egg"). ``data.official_split`` 1-4 picks the standard split by participant: test
  P03-P15, P16-P28, P29-P41 or P42-P54, train the others. With ``data.split_file`` the train/test
  lists of other code are read instead: a folder with ``train.csv`` / ``test.csv`` (or ``.txt``)
  or one of the two files (the other found by swapping train/test in its name). Rows are
  ``<path> <label>`` or ``<path>,<label>[,...]`` (VideoMamba's ``path,label,duration``; a header
  row is skipped), paths relative to the Breakfast folder or ``data.root`` (or absolute), or
  ViS4mer's ``file_name,duration,action,class_id`` CSV with ids ``P03-cam01-P03_cereals`` (=
  ``P03/cam01/P03_cereals``). Labels are the file's; names come from the activities in the file
  names. ViS4mer's lists (train P03-P46, 1,357 / test P47-P54, 355) are not one of the four
  standard splits. 5 tasks of 2 classes by default.
- ``video-folder``: ``{train,test}/<class>/<video file or frame folder>``, classes sorted by folder
  name, the same class folders in both splits (as the image ``folder`` builder).

``data.split_file`` is refused by ``hmdb51`` and ``ssv2``, which read no split file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from promptcl.config import DataConfig
from promptcl.data.base import DatasetPair, Preprocessing
from promptcl.data.images import _LAYOUTS, _SOURCES, _error, _root
from promptcl.data.safe_pickle import ForbiddenGlobal, load_restricted
from promptcl.errors import DataError
from promptcl.registry import datasets

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv"}
)
Items = list[tuple[Path, int]]

_FRAMES = "; a folder of extracted frames <video stem>/ may replace any video file"
_LAYOUTS.update(
    {
        "ucf101": "<data.root>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi and <data.root>/"
        "ucfTrainTestlist/{classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt} "
        "(data.official_split: 1-3), or with data.split_file a vCLIMB split "
        "(UCF101_data.pkl or .json) naming <data.root>/UCF-101/<Class>/<video id>.avi" + _FRAMES,
        "hmdb51": "<data.root>/hmdb51/<class>/<video>.avi (each class's .rar unpacked) and "
        "<data.root>/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt "
        "(data.official_split: 1-3)" + _FRAMES,
        "ssv2": "<data.root>/20bn-something-something-v2/<id>.webm and "
        "<data.root>/labels/{labels.json, train.json, validation.json}" + _FRAMES,
        "breakfast": "<data.root>/BreakfastII_15fps_qvga_sync/P<NN>/<camera>/P<NN>_<activity>"
        ".avi (cameras cam01, cam02, webcam01, webcam02, stereo; split by participant: "
        "data.official_split 1-4), or train/test list files given as data.split_file" + _FRAMES,
        "video-folder": "<data.root>/{train,test}/<class name>/<video file or folder of frames>, "
        "or with data.split_file a vCLIMB split naming <data.root>/<class name>/<video id>",
    }
)
_SOURCES.update(
    {
        "ucf101": "https://www.crcv.ucf.edu/data/UCF101.php (UCF101.rar and "
        "UCF101TrainTestSplits-RecognitionTask.zip); vCLIMB splits: "
        "https://github.com/ojedaf/vCLIMB_Benchmark (data/UCF101_data.pkl)",
        "hmdb51": "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/ "
        "(hmdb51_org.rar and test_train_splits.rar)",
        "ssv2": "https://developer.qualcomm.com/software/ai-datasets/something-something "
        "(the video archive parts and the labels archive)",
        "breakfast": "https://serre-lab.clps.brown.edu/resource/breakfast-actions-dataset/ "
        "(BreakfastII_15fps_qvga_sync.tar.gz)",
        "video-folder": "your own videos, one folder per class",
    }
)


@dataclass
class VideoListing:
    """What a listing function found: the two splits and one readable name per label."""

    train: Items
    test: Items
    class_names: list[str]
    task_sizes: list[int] | None = None  # fixed by a vCLIMB split file
    can_delete: bool = True  # False when the videos are named in list files
    default_tasks: int = 10
    flips: bool = True  # False when a mirrored clip changes its label (SSv2's directions)


# --- names -------------------------------------------------------------------------------------


def readable_class_name(name: str) -> str:
    """A folder or list name as words for captions: "ApplyEyeMakeup" -> "apply eye makeup",
    "brush_hair" -> "brush hair", "YoYo" -> "yo yo"."""
    text = name.replace("_", " ").replace("-", " ")
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    return " ".join(text.split()).lower()


# --- finding videos ----------------------------------------------------------------------------


class _VideoFolder:
    """The entries of one folder, listed once: video files by name and stem, sub-folders by name."""

    def __init__(self, path: Path):
        self.files: dict[str, Path] = {}
        self.by_stem: dict[str, list[Path]] = {}
        self.dirs: dict[str, Path] = {}
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:  # missing, or not a folder: nothing is found in it
            entries = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                self.dirs[entry.name] = Path(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in VIDEO_EXTENSIONS:
                self.files[entry.name] = Path(entry.path)
                self.by_stem.setdefault(os.path.splitext(entry.name)[0], []).append(
                    Path(entry.path)
                )

    def find(self, name: str) -> Path | None:
        """The video ``name`` (a file name or a stem) by the module's rule, or None."""
        if name in self.files:
            return self.files[name]
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in VIDEO_EXTENSIONS:
            stem = name
        if stem in self.by_stem:
            return self.by_stem[stem][0]
        return self.dirs.get(stem)

    def videos(self) -> list[Path]:
        """One video per stem, sorted by stem: the first video file of the stem, else its folder."""
        stems = sorted(self.by_stem.keys() | self.dirs.keys())
        return [self.by_stem[s][0] if s in self.by_stem else self.dirs[s] for s in stems]


class _Finder:
    """Finds named videos, listing each folder once; collects the missing ones."""

    def __init__(self) -> None:
        self._folders: dict[Path, _VideoFolder] = {}
        self.missing: list[Path] = []

    def folder(self, path: Path) -> _VideoFolder:
        if path not in self._folders:
            self._folders[path] = _VideoFolder(path)
        return self._folders[path]

    def find(self, folder: Path, name: str) -> Path | None:
        found = self.folder(folder).find(name)
        if found is None:
            self.missing.append(folder / name)
        return found

    def check(self, dataset: str, where: str, root: Path) -> None:
        if self.missing:
            shown = ", ".join(str(p) for p in self.missing[:3])
            raise _error(
                dataset,
                f"{len(self.missing)} videos named in {where} are missing (neither the file, nor "
                f"one of the same name with another extension, nor a folder of frames), e.g. "
                f"{shown}",
                root,
            )


def _holds_class(folder: Path, classes: Iterable[str] | None) -> bool:
    if not folder.is_dir():
        return False
    if classes is None:
        return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    return any((folder / c).is_dir() for c in classes)


def _video_root(name: str, root: Path, names: Sequence[str], classes: Sequence[str] | None) -> Path:
    """The folder holding the class folders: ``root/<one of names>``, else ``root`` itself."""
    for candidate in [root / n for n in names] + [root]:
        if _holds_class(candidate, classes):
            return candidate
    shown = f" ({', '.join(list(classes)[:3])}, ...)" if classes else ""
    problem = "does not exist" if not root.exists() else "holds none of the class folders"
    raise _error(
        name,
        f"expected the folder {root / names[0]} holding the class folders{shown}; "
        f"{root if not root.exists() else root / names[0]} {problem}",
        root,
    )


def _check_every_class(name: str, train: Items, test: Items, names: list[str], root: Path) -> None:
    for split, items in (("train", train), ("test", test)):
        empty = sorted(set(range(len(names))) - {y for _, y in items})
        if empty:
            shown = ", ".join(repr(names[y]) for y in empty[:5])
            raise _error(name, f"no {split} videos for {len(empty)} classes: {shown}", root)


def _official_split(cfg: DataConfig, name: str, count: int, root: Path) -> int:
    if not 1 <= cfg.official_split <= count:
        raise _error(
            name,
            f"data.official_split is {cfg.official_split}, but {name} has the official splits "
            f"1..{count}: set data.official_split to one of them",
            root,
        )
    return cfg.official_split


def _no_split_file(cfg: DataConfig, name: str, root: Path) -> None:
    if cfg.split_file is not None:
        raise _error(
            name,
            f"data.split_file ({cfg.split_file}) is not read by {name!r}, whose splits are the "
            "official ones (data.official_split): remove the key",
            root,
        )


def _lines(path: Path, name: str, root: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise _error(name, f"cannot read {path}: {err}", root) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


# --- vCLIMB split files ------------------------------------------------------------------------

_VCLIMB_FORMAT = (
    "{'train': [per task {class name: [video ids]}], 'val': [...], 'test': [...]} "
    "(ojedaf/vCLIMB_Benchmark data/*.pkl, or the same content as JSON)"
)


@dataclass
class VclimbSplit:
    """A vCLIMB split: class names in the file's order, task sizes, and the ids of each part."""

    classes: list[str]
    task_sizes: list[int]
    parts: dict[str, dict[str, list[str]]]  # 'train' / 'val' / 'test' -> class -> ids


def _load_split_content(path: Path, name: str, root: Path) -> Any:
    if not path.is_file():
        raise _error(
            name,
            f"the split file {path} (data.split_file) does not exist; expected a vCLIMB split "
            f"{_VCLIMB_FORMAT}",
            root,
        )
    try:
        raw = path.read_bytes()
        if raw.lstrip()[:1] in (b"{", b"["):
            return json.loads(raw.decode("utf-8-sig"))
        return load_restricted(io.BytesIO(raw))
    except ForbiddenGlobal as err:
        raise _error(
            name,
            f"the split file {path} (data.split_file) was refused: it names the global "
            f"{err.global_name}, and loading it would run code; a vCLIMB split holds only "
            "dicts, lists and strings (nothing was run): use the benchmark's own file",
            root,
        ) from None
    except Exception as err:  # a damaged or crafted file can raise nearly anything
        raise _error(name, f"cannot read the split file {path}: {err}", root) from None


def read_vclimb_split(path: Path, name: str = "ucf101", root: Path | None = None) -> VclimbSplit:
    """Read and check a vCLIMB split file (pickle, read with ``load_restricted``, or JSON)."""
    root = root if root is not None else path.parent
    content = _load_split_content(path, name, root)

    def bad(problem: str) -> DataError:
        return _error(name, f"the split file {path}: {problem}; expected {_VCLIMB_FORMAT}", root)

    if not isinstance(content, dict) or "train" not in content or "test" not in content:
        raise bad("it is not a dict with the keys 'train' and 'test'")
    parts: dict[str, dict[str, list[str]]] = {}
    tasks: dict[str, list[list[str]]] = {}
    for part in ("train", "val", "test"):
        if part not in content:
            continue
        entry = content[part]
        if not isinstance(entry, list) or not entry:
            raise bad(f"{part!r} is not a non-empty list of tasks")
        tasks[part], parts[part] = [], {}
        for t, task in enumerate(entry):
            if not isinstance(task, dict) or not task:
                raise bad(f"{part!r} task {t} is not a non-empty dict")
            for cls, ids in task.items():
                if not isinstance(cls, str) or not isinstance(ids, list):
                    raise bad(f"{part!r} task {t}: {cls!r} does not map a class name to a list")
                if not all(isinstance(i, str) for i in ids):
                    raise bad(f"{part!r} task {t}, class {cls!r}: video ids must be strings")
                if cls in parts[part]:
                    raise bad(f"class {cls!r} appears in two tasks of {part!r}")
                parts[part][cls] = list(ids)
            tasks[part].append(list(task))
    for part in tasks:
        if [set(t) for t in tasks[part]] != [set(t) for t in tasks["train"]]:
            raise bad(f"the tasks of {part!r} do not hold the classes of the 'train' tasks")
    for cls, ids in parts["train"].items():
        if not ids:
            raise bad(f"class {cls!r} has no training videos")
    classes = [cls for task in tasks["train"] for cls in task]
    return VclimbSplit(classes, [len(t) for t in tasks["train"]], parts)


def vclimb_listing(name: str, split: VclimbSplit, folder: Path, root: Path) -> VideoListing:
    """The videos of a vCLIMB split, found under ``folder/<class>/<id>``."""
    finder = _Finder()
    label = {cls: i for i, cls in enumerate(split.classes)}
    items: dict[str, Items] = {}
    for part in ("train", "test"):
        items[part] = []
        for cls, ids in split.parts[part].items():
            for video_id in ids:
                found = finder.find(folder / cls, video_id)
                if found is not None:
                    items[part].append((found, label[cls]))
    finder.check(name, f"the vCLIMB split file (data.split_file), under {folder}", root)
    names = [readable_class_name(c) for c in split.classes]
    _check_every_class(name, items["train"], items["test"], names, root)
    return VideoListing(
        items["train"],
        items["test"],
        names,
        task_sizes=split.task_sizes,
        can_delete=False,
        default_tasks=len(split.task_sizes),
    )


# --- UCF101 ------------------------------------------------------------------------------------

_UCF_DIRS = ("UCF-101", "UCF101")
_UCF_LISTS = "ucfTrainTestlist"


def _find_lists(root: Path, dirname: str, required: Sequence[str]) -> Path | None:
    """The folder holding ``required`` files: ``root/dirname``, its parent's, or root itself."""
    for candidate in (root / dirname, root.parent / dirname, root):
        if all((candidate / f).is_file() for f in required):
            return candidate
    return None


def _ucf_classes(path: Path, root: Path) -> list[str]:
    ids: dict[int, str] = {}
    for number, line in enumerate(_lines(path, "ucf101", root), start=1):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise _error(
                "ucf101", f"{path}, line {number}: expected '<id> <Class>', got {line!r}", root
            )
        ids[int(fields[0])] = fields[1]
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise _error("ucf101", f"{path} must number the classes 1..N", root)
    return [ids[i] for i in sorted(ids)]


def list_ucf101(cfg: DataConfig) -> VideoListing:
    """UCF101's official train/test lists (``data.official_split``), or a vCLIMB split."""
    root = _root(cfg, "ucf101")
    if cfg.split_file is not None:
        split = read_vclimb_split(Path(cfg.split_file).expanduser(), "ucf101", root)
        folder = _video_root("ucf101", root, _UCF_DIRS, split.classes)
        return vclimb_listing("ucf101", split, folder, root)
    k = _official_split(cfg, "ucf101", 3, root)
    files = ("classInd.txt", f"trainlist0{k}.txt", f"testlist0{k}.txt")
    lists = next(
        (
            found
            for base in [root] + [root / d for d in _UCF_DIRS]
            if (found := _find_lists(base, _UCF_LISTS, files)) is not None
        ),
        None,
    )
    if lists is None:
        raise _error(
            "ucf101",
            f"expected the split lists {root / _UCF_LISTS}/{{{', '.join(files)}}} "
            f"(data.official_split: {k}), or set data.split_file to a vCLIMB split",
            root,
        )
    classes = _ucf_classes(lists / "classInd.txt", root)
    label_of = {c: i for i, c in enumerate(classes)}
    folder = _video_root("ucf101", root, _UCF_DIRS, classes)
    finder = _Finder()
    items: dict[str, Items] = {"train": [], "test": []}
    for part, filename in (("train", files[1]), ("test", files[2])):
        path = lists / filename
        for number, line in enumerate(_lines(path, "ucf101", root), start=1):
            fields = line.split()
            parts = PurePosixPath(fields[0].replace("\\", "/")).parts
            ok = len(parts) == 2 and parts[0] in label_of and len(fields) <= 2
            if ok and len(fields) == 2:  # trainlist: "<Class>/<video>.avi <class id>"
                ok = fields[1].isdigit() and int(fields[1]) - 1 == label_of[parts[0]]
            if not ok:
                raise _error(
                    "ucf101",
                    f"{path}, line {number}: expected '<Class>/<video>.avi[ <class id>]' with a "
                    f"class of classInd.txt (and its id), got {line!r}",
                    root,
                )
            found = finder.find(folder / parts[0], parts[1])
            if found is not None:
                items[part].append((found, label_of[parts[0]]))
    finder.check("ucf101", f"{lists}/{{{files[1]}, {files[2]}}}, under {folder}", root)
    names = [readable_class_name(c) for c in classes]
    _check_every_class("ucf101", items["train"], items["test"], names, root)
    return VideoListing(items["train"], items["test"], names, can_delete=False)


# --- HMDB51 ------------------------------------------------------------------------------------

_HMDB_DIRS = ("hmdb51", "hmdb51_org", "HMDB51")
_HMDB_SPLITS = ("testTrainMulti_7030_splits", "test_train_splits")


def list_hmdb51(cfg: DataConfig) -> VideoListing:
    """HMDB51's official 70/30 split ``data.official_split`` (1-3)."""
    root = _root(cfg, "hmdb51")
    _no_split_file(cfg, "hmdb51", root)
    k = _official_split(cfg, "hmdb51", 3, root)
    suffix = f"_test_split{k}.txt"
    bases = [root, root.parent] + [root / d for d in _HMDB_DIRS]
    lists = next(
        (
            d
            for base in bases
            for d in [base / s for s in _HMDB_SPLITS]
            if d.is_dir() and any(d.glob(f"*{suffix}"))
        ),
        None,
    )
    if lists is None:
        raise _error(
            "hmdb51",
            f"expected the split files {root / _HMDB_SPLITS[0]}/<class>{suffix} "
            f"(data.official_split: {k})",
            root,
        )
    split_files = sorted(lists.glob(f"*{suffix}"), key=lambda p: p.name)
    classes = [p.name[: -len(suffix)] for p in split_files]
    folder = _video_root("hmdb51", root, _HMDB_DIRS, classes)
    finder = _Finder()
    items: dict[str, Items] = {"train": [], "test": []}
    for label, (cls, path) in enumerate(zip(classes, split_files, strict=True)):
        for number, line in enumerate(_lines(path, "hmdb51", root), start=1):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise _error(
                    "hmdb51",
                    f"{path}, line {number}: expected '<video>.avi <0|1|2>', got {line!r}",
                    root,
                )
            if fields[1] == "0":
                continue
            found = finder.find(folder / cls, fields[0])
            if found is not None:
                items["train" if fields[1] == "1" else "test"].append((found, label))
    finder.check("hmdb51", f"{lists}/<class>{suffix}, under {folder}", root)
    names = [readable_class_name(c) for c in classes]
    _check_every_class("hmdb51", items["train"], items["test"], names, root)
    return VideoListing(items["train"], items["test"], names, can_delete=False)


# --- Something-Something V2 --------------------------------------------------------------------

_SSV2_DIR = "20bn-something-something-v2"
_SSV2_LABELS = ("labels.json", "train.json", "validation.json")


def _json(path: Path, root: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        raise _error("ssv2", f"cannot read {path}: {err}", root) from None


def ssv2_class_of(template: str) -> str:
    """The class of a video from its template: "Putting [something] on a surface" -> "Putting
    something on a surface" (the keys of labels.json)."""
    return template.replace("[", "").replace("]", "")


def list_ssv2(cfg: DataConfig) -> VideoListing:
    """Something-Something V2: train.json for training, validation.json for testing."""
    root = _root(cfg, "ssv2")
    _no_split_file(cfg, "ssv2", root)
    labels = next(
        (
            d
            for d in (root / "labels", root.parent / "labels", root)
            if all((d / f).is_file() for f in _SSV2_LABELS)
        ),
        None,
    )
    if labels is None:
        raise _error(
            "ssv2",
            f"expected the label files {root / 'labels'}/{{{', '.join(_SSV2_LABELS)}}}",
            root,
        )
    table = _json(labels / "labels.json", root)
    if not isinstance(table, dict) or not all(
        isinstance(v, str | int) and str(v).isdigit() for v in table.values()
    ):
        raise _error("ssv2", f"{labels / 'labels.json'} must map templates to index strings", root)
    index = {str(k): int(v) for k, v in table.items()}
    if sorted(index.values()) != list(range(len(index))):
        raise _error("ssv2", f"{labels / 'labels.json'} must number the classes 0..N-1", root)
    by_label = {v: k for k, v in index.items()}
    names = [by_label[i][:1].lower() + by_label[i][1:] for i in range(len(index))]
    folder = root / _SSV2_DIR if (root / _SSV2_DIR).is_dir() else root
    finder = _Finder()
    items: dict[str, Items] = {"train": [], "test": []}
    for part, filename in (("train", "train.json"), ("test", "validation.json")):
        path = labels / filename
        entries = _json(path, root)
        if not isinstance(entries, list):
            raise _error("ssv2", f"{path} must be a list of {{'id', 'template', ...}}", root)
        for entry in entries:
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise _error("ssv2", f"{path}: an entry lacks 'id' or 'template': {entry!r}", root)
            cls = ssv2_class_of(str(entry["template"]))
            if cls not in index:
                raise _error(
                    "ssv2",
                    f"{path}: video {entry['id']} has the template {entry['template']!r}, whose "
                    f"class {cls!r} is not in labels.json",
                    root,
                )
            found = finder.find(folder, str(entry["id"]))
            if found is not None:
                items[part].append((found, index[cls]))
    finder.check("ssv2", f"{labels}/{{train,validation}}.json, under {folder}", root)
    _check_every_class("ssv2", items["train"], items["test"], names, root)
    return VideoListing(items["train"], items["test"], names, can_delete=False, flips=False)


# --- Breakfast ---------------------------------------------------------------------------------

_BREAKFAST_DIR = "BreakfastII_15fps_qvga_sync"
BREAKFAST_ACTIVITIES = (
    "cereals",
    "coffee",
    "friedegg",
    "juice",
    "milk",
    "pancake",
    "salat",
    "sandwich",
    "scrambledegg",
    "tea",
)
_BREAKFAST_NAMES = {"friedegg": "fried egg", "salat": "salad", "scrambledegg": "scrambled egg"}
# The standard 4-fold split by participant: split k tests on these participants.
BREAKFAST_TEST_PARTICIPANTS = {
    1: range(3, 16),
    2: range(16, 29),
    3: range(29, 42),
    4: range(42, 55),
}
_BREAKFAST_STEM = re.compile(r"P(\d+)_([A-Za-z]+)(?:_ch(\d+))?")
_PARTICIPANT = re.compile(r"P\d+")
_VIS4MER_ID = re.compile(r"(P\d+)-([A-Za-z0-9]+)-(P\d+_\w+)")


def _breakfast_folder(root: Path) -> Path:
    for candidate in (root / _BREAKFAST_DIR, root):
        if candidate.is_dir() and any(
            p.is_dir() and _PARTICIPANT.fullmatch(p.name) for p in candidate.iterdir()
        ):
            return candidate
    raise _error(
        "breakfast",
        f"expected the folder {root / _BREAKFAST_DIR} holding the participant folders P03 ... P54",
        root,
    )


def _breakfast_name(activity: str) -> str:
    return _BREAKFAST_NAMES.get(activity, activity)


def _scan_breakfast(folder: Path, root: Path, k: int) -> VideoListing:
    test_ids = BREAKFAST_TEST_PARTICIPANTS[k]
    label_of = {a: i for i, a in enumerate(BREAKFAST_ACTIVITIES)}
    items: dict[str, Items] = {"train": [], "test": []}
    unknown: list[Path] = []
    participants = sorted(
        (p for p in folder.iterdir() if p.is_dir() and _PARTICIPANT.fullmatch(p.name)),
        key=lambda p: p.name,
    )
    for participant in participants:
        cameras = sorted(
            (c for c in participant.iterdir() if c.is_dir() and not c.name.startswith(".")),
            key=lambda p: p.name,
        )
        for camera in cameras:
            for video in _VideoFolder(camera).videos():
                stem = video.stem if video.is_file() else video.name
                match = _BREAKFAST_STEM.fullmatch(stem)
                if match is None or match.group(2).lower() not in label_of:
                    unknown.append(video)
                    continue
                if match.group(3) not in (None, "0"):  # the stereo camera's second channel
                    continue
                label = label_of[match.group(2).lower()]
                part = "test" if int(match.group(1)) in test_ids else "train"
                items[part].append((video, label))
    if unknown:
        shown = ", ".join(str(p) for p in unknown[:3])
        warnings.warn(
            f"dataset 'breakfast': left out {len(unknown)} videos whose names are not "
            f"P<NN>_<activity>[_ch0].avi with one of the 10 activities: {shown}",
            stacklevel=3,
        )
    names = [_breakfast_name(a) for a in BREAKFAST_ACTIVITIES]
    _check_every_class("breakfast", items["train"], items["test"], names, root)
    return VideoListing(items["train"], items["test"], names, default_tasks=5)


def _list_pair(split: Path, root: Path) -> tuple[Path, Path]:
    """The train and test list files of ``data.split_file`` (a folder, or one of the two)."""
    if split.is_dir():
        for ext in (".csv", ".txt"):
            if (split / f"train{ext}").is_file() and (split / f"test{ext}").is_file():
                return split / f"train{ext}", split / f"test{ext}"
        raise _error(
            "breakfast",
            f"data.split_file {split} is a folder without train.csv and test.csv "
            "(or train.txt and test.txt)",
            root,
        )
    name = split.name
    for this, other in (("train", "test"), ("test", "train")):
        if this in name:
            head, _, tail = name.rpartition(this)
            pair = split.with_name(head + other + tail)
            return (split, pair) if this == "train" else (pair, split)
    raise _error(
        "breakfast",
        f"data.split_file {split} must be a folder holding train.csv and test.csv, or a list "
        "file whose name contains 'train' or 'test'",
        root,
    )


def _list_rows(path: Path, root: Path) -> list[tuple[str, int, str | None]]:
    """``(path, label, activity or None)`` rows of one list file (see the module notes)."""
    fmt = "rows '<path> <label>' or '<path>,<label>[,...]', or ViS4mer's file_name,...,class_id"
    if not path.is_file():
        raise _error("breakfast", f"the list file {path} (data.split_file) does not exist", root)
    lines = _lines(path, "breakfast", root)
    if not lines:
        raise _error("breakfast", f"the list file {path} is empty ({fmt})", root)
    header = next(csv.reader([lines[0]]))
    rows: list[tuple[str, int, str | None]] = []
    if (
        "file_name" in header and "class_id" in header
    ):  # ViS4mer: file_name,duration,action,class_id
        column = {c: i for i, c in enumerate(header)}
        for number, fields in enumerate(csv.reader(lines[1:]), start=2):
            try:
                entry, label = fields[column["file_name"]], int(fields[column["class_id"]])
            except (IndexError, ValueError):
                raise _error(
                    "breakfast", f"{path}, line {number}: bad row {fields!r} ({fmt})", root
                ) from None
            match = _VIS4MER_ID.fullmatch(entry)
            entry = "/".join(match.groups()) if match else entry
            activity = fields[column["action"]] if "action" in column else None
            rows.append((entry, label, activity))
        return rows
    for number, line in enumerate(lines, start=1):
        fields = next(csv.reader([line])) if "," in line else line.split()
        if len(fields) < 2 or not fields[1].strip().lstrip("-").isdigit():
            if number == 1:
                continue  # a header row
            raise _error("breakfast", f"{path}, line {number}: bad row {line!r} ({fmt})", root)
        rows.append((fields[0].strip(), int(fields[1]), None))
    return rows


def _listed_breakfast(split: Path, folder: Path, root: Path) -> VideoListing:
    train_file, test_file = _list_pair(split, root)
    finder = _Finder()
    items: dict[str, Items] = {"train": [], "test": []}
    activities: dict[int, set[str]] = {}
    for part, path in (("train", train_file), ("test", test_file)):
        for entry, label, activity in _list_rows(path, root):
            listed = Path(entry.replace("\\", "/"))
            candidates = [listed] if listed.is_absolute() else [folder / listed, root / listed]
            found = next(
                (f for c in candidates if (f := finder.folder(c.parent).find(c.name)) is not None),
                None,
            )
            if found is None:
                finder.missing.append(candidates[0])
                continue
            if activity is None:
                stem = found.stem if found.is_file() else found.name
                match = _BREAKFAST_STEM.fullmatch(stem)
                activity = match.group(2) if match else f"<{stem}>"
            activities.setdefault(label, set()).add(activity.lower())
            items[part].append((found, label))
    finder.check("breakfast", f"{train_file} and {test_file} (data.split_file)", root)
    num_classes = max(activities) + 1 if activities else 0
    if sorted(activities) != list(range(num_classes)):
        raise _error(
            "breakfast",
            f"the list files {train_file}, {test_file} must use the labels 0..N-1",
            root,
        )
    names = []
    for label in range(num_classes):
        if len(activities[label]) != 1:
            raise _error(
                "breakfast",
                f"the list files {train_file}, {test_file}: label {label} is used for the "
                f"activities {sorted(activities[label])}, expected one per label (file names "
                "P<NN>_<activity>.avi)",
                root,
            )
        names.append(_breakfast_name(next(iter(activities[label]))))
    _check_every_class("breakfast", items["train"], items["test"], names, root)
    return VideoListing(items["train"], items["test"], names, can_delete=False, default_tasks=5)


def list_breakfast(cfg: DataConfig) -> VideoListing:
    """Breakfast: the standard split by participant (``data.official_split`` 1-4), or list files."""
    root = _root(cfg, "breakfast")
    folder = _breakfast_folder(root)
    if cfg.split_file is not None:
        return _listed_breakfast(Path(cfg.split_file).expanduser(), folder, root)
    return _scan_breakfast(folder, root, _official_split(cfg, "breakfast", 4, root))


# --- generic class-per-folder ------------------------------------------------------------------


def _class_videos(split_dir: Path, root: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise _error("video-folder", f"expected the folder {split_dir}", root)
    classes = {
        d.name: _VideoFolder(d).videos()
        for d in sorted(split_dir.iterdir(), key=lambda p: p.name)
        if d.is_dir() and not d.name.startswith(".")
    }
    if not classes:
        raise _error("video-folder", f"{split_dir} holds no class folders", root)
    empty = [c for c, videos in classes.items() if not videos]
    if empty:
        raise _error(
            "video-folder",
            f"class folders without videos or frame folders in {split_dir}: {empty}",
            root,
        )
    return classes


def list_video_folder(cfg: DataConfig) -> VideoListing:
    """``train/<class>/*`` and ``test/<class>/*``, or a vCLIMB split over ``<class>/<id>``."""
    root = _root(cfg, "video-folder")
    if cfg.split_file is not None:
        split = read_vclimb_split(Path(cfg.split_file).expanduser(), "video-folder", root)
        if not _holds_class(root, split.classes):
            raise _error(
                "video-folder",
                f"{root} holds none of the class folders of the vCLIMB split "
                f"({', '.join(split.classes[:3])}, ...)",
                root,
            )
        return vclimb_listing("video-folder", split, root, root)
    train = _class_videos(root / "train", root)
    test = _class_videos(root / "test", root)
    if set(train) != set(test):
        raise _error(
            "video-folder",
            f"train and test must hold the same class folders; only in train: "
            f"{sorted(set(train) - set(test))}, only in test: {sorted(set(test) - set(train))}",
            root,
        )
    order = sorted(train)

    def items(classes: dict[str, list[Path]]) -> Items:
        return [(p, label) for label, c in enumerate(order) for p in classes[c]]

    return VideoListing(items(train), items(test), [readable_class_name(c) for c in order])


# --- builders ----------------------------------------------------------------------------------


def _pair(name: str, cfg: DataConfig, listing: VideoListing, pre: Preprocessing) -> DatasetPair:
    """The listing's DatasetPair: files checked and clips decoded by ``video_io.video_pair``."""
    from promptcl.data.video_io import video_pair

    pair = video_pair(
        name,
        cfg,
        listing.train,
        listing.test,
        listing.class_names,
        pre,
        can_delete=listing.can_delete,
        default_tasks=listing.default_tasks,
        flips=listing.flips,
    )
    if listing.task_sizes is not None:
        pair = replace(pair, task_sizes=list(listing.task_sizes))
    return pair


@datasets.register("ucf101")
def build_ucf101(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """UCF101 (101 classes): official split ``data.official_split``, or a vCLIMB split file."""
    return _pair("ucf101", cfg, list_ucf101(cfg), pre)


@datasets.register("hmdb51")
def build_hmdb51(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """HMDB51 (51 classes, 3,570 / 1,530 per split): official split ``data.official_split``."""
    return _pair("hmdb51", cfg, list_hmdb51(cfg), pre)


@datasets.register("ssv2")
def build_ssv2(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Something-Something V2 (174 classes): train / validation."""
    return _pair("ssv2", cfg, list_ssv2(cfg), pre)


@datasets.register("breakfast")
def build_breakfast(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Breakfast Actions (10 activities): split by participant, or list files."""
    return _pair("breakfast", cfg, list_breakfast(cfg), pre)


@datasets.register("video-folder")
def build_video_folder(cfg: DataConfig, pre: Preprocessing, seed: int) -> DatasetPair:
    """Any video dataset laid out as ``train/<class>/*`` and ``test/<class>/*``."""
    return _pair("video-folder", cfg, list_video_folder(cfg), pre)
