"""Checks image and video files before training, so that a damaged file stops a run at once, by
name.

Images (``kind="image"``): ``data.verify: quick`` opens every file and reads its header: files
PIL cannot identify, broken headers, PNGs with bad chunk checksums and JPEGs without their end
marker (truncated; such a file is then decoded to be sure) are found in seconds. ``full`` decodes
every image, as training will; ``off`` checks nothing.

Videos (``kind="video"``, see ``promptcl.data.video_io.source_problem``): ``quick`` opens the
container, finds a video stream, reads its frame count and decodes the last frame a sampler may
pick (a seek near the end), which catches truncated files cheaply; ``full`` decodes every frame.
A folder of extracted frames is checked as image files: its first and last image (quick) or all.

``data.on_bad_file`` says what a damaged file does: ``error`` stops with the list of files,
``skip`` leaves them out (``DatasetPair.skipped``) with a warning.

Results are cached per file (path, size, modification time) for the life of the process, so the
second build of a run (the plain view of the training data) does not read the files again.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Literal

from PIL import Image, UnidentifiedImageError

from promptcl.errors import DataError

VerifyMode = Literal["quick", "full", "off"]
OnBadFile = Literal["error", "skip"]
FileKind = Literal["image", "video"]
Items = list[tuple[Path, int]]

MAX_LISTED = 20  # damaged files named in one message; the rest are counted
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_JPEG_END = b"\xff\xd9"
_WORKERS = min(32, (os.cpu_count() or 1) + 4)

# (path, size, mtime_ns, full, kind) -> the problem found, or None for a good file
_CACHE: dict[tuple[str, int, int, bool, FileKind], str | None] = {}


def clear_cache() -> None:
    """Forget every cached check (files are then read again by the next build)."""
    _CACHE.clear()


def _jpeg_complete(fp: BinaryIO) -> bool:
    """Whether a JPEG file ends with its end-of-image marker (a cut file does not)."""
    position = fp.tell()
    try:
        fp.seek(-len(_JPEG_END), os.SEEK_END)
        return fp.read(len(_JPEG_END)) == _JPEG_END
    finally:
        fp.seek(position)


def _reason(err: Exception) -> str:
    """A short description of why a file does not read as an image."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image PIL can identify (unknown format or damaged header)"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def image_problem(path: Path, full: bool = False) -> str | None:
    """Why ``path`` cannot be read as an image, or None when it reads (see the module notes)."""
    try:
        with path.open("rb") as fp, Image.open(fp) as image:
            if full or (image.format in _JPEG_FORMATS and not _jpeg_complete(fp)):
                image.convert("RGB")  # decodes every pixel, as ImageFileDataset will
            else:
                image.verify()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        return _reason(err)
    return None


def video_problem(path: Path, full: bool = False) -> str | None:
    """Why ``path`` (a video file or a folder of frames) cannot be read as a video, or None."""
    from promptcl.data.video_io import source_problem  # imports this module; PyAV is optional

    return source_problem(path, full)


def _cached_problem(path: Path, full: bool, kind: FileKind = "image") -> str | None:
    try:
        stat = path.stat()
    except OSError as err:
        return _reason(err)
    key = (str(path), stat.st_size, stat.st_mtime_ns, full, kind)
    if key not in _CACHE:
        check = image_problem if kind == "image" else video_problem
        _CACHE[key] = check(path, full)
    return _CACHE[key]


def find_bad_files(
    paths: Sequence[Path], full: bool = False, kind: FileKind = "image"
) -> dict[Path, str]:
    """The files among ``paths`` that do not read as ``kind``, each with its reason, in order."""
    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(paths))) as pool:
        problems = list(pool.map(lambda p: _cached_problem(p, full, kind), paths))
    return {p: reason for p, reason in zip(paths, problems, strict=True) if reason is not None}


def find_bad_images(paths: Sequence[Path], full: bool = False) -> dict[Path, str]:
    """The files among ``paths`` that do not read as images, each with its reason, in order."""
    return find_bad_files(paths, full, "image")


def _listing(paths: Iterable[Path], bad: dict[Path, str]) -> str:
    """One line per damaged file (at most MAX_LISTED), then how many more there are."""
    paths = list(paths)
    lines = [f"    {p}: {bad[p]}" for p in paths[:MAX_LISTED]]
    if len(paths) > MAX_LISTED:
        lines.append(f"    ... and {len(paths) - MAX_LISTED} more")
    return "\n".join(lines)


def _emptied_classes(items: Items, kept: Items) -> list[int]:
    """Labels that had files in ``items`` but have none left in ``kept``."""
    return sorted({y for _, y in items} - {y for _, y in kept})


def verify_splits(
    dataset: str,
    train: Items,
    test: Items,
    class_names: Sequence[str],
    mode: VerifyMode = "quick",
    on_bad_file: OnBadFile = "error",
    can_delete: bool = True,
    kind: FileKind = "image",
) -> tuple[Items, Items, list[str]]:
    """Check the files of both splits; return the splits without damaged files and those paths.

    Raises a DataError naming every damaged file when ``on_bad_file`` is ``error``, and, even with
    ``skip``, when a class would lose all its files in a split. ``can_delete=False`` for datasets
    whose files are named in list files (deleting one is then an error of its own). ``kind`` says
    whether the files are images or videos (video files or folders of frames).
    """
    if mode == "off":
        return train, test, []
    bad = find_bad_files([p for p, _ in train + test], mode == "full", kind)
    if not bad:
        return train, test, []
    fix = "replace or delete these files" if can_delete else "replace these files (re-download)"
    if on_bad_file == "error":
        raise DataError(
            f"dataset {dataset!r}: {len(bad)} of {len(train) + len(test)} {kind} files cannot be "
            f"read (data.verify: {mode}):\n{_listing(bad, bad)}\n"
            f"  {fix}, or set data.on_bad_file: skip to leave them out"
        )
    kept_train = [(p, y) for p, y in train if p not in bad]
    kept_test = [(p, y) for p, y in test if p not in bad]
    for split, items, kept in (("train", train, kept_train), ("test", test, kept_test)):
        for label in _emptied_classes(items, kept):
            raise DataError(
                f"dataset {dataset!r}: every {split} {kind} of class {class_names[label]!r} "
                f"(label {label}) is damaged, so data.on_bad_file: skip would leave the class "
                f"empty:\n{_listing((p for p, y in items if y == label), bad)}\n  {fix}"
            )
    skipped = [str(p) for p in bad]
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    warnings.warn(
        f"dataset {dataset!r}: left out {len(skipped)} damaged {kind} files "
        f"(data.on_bad_file: skip): {shown}",
        stacklevel=2,  # the builder's line: the two builds of a run warn once
    )
    return kept_train, kept_test, skipped
