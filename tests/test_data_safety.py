"""Bad data must never cost a run nor run code: restricted CIFAR pickles, image checks at build."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_images import WNIDS, build, save_image, write_cifar, write_cub, write_imagenet_r

from promptcl.data import verify
from promptcl.data.images import ImageFileDataset
from promptcl.errors import DataError

# --- CIFAR-100: a restricted unpickler ---------------------------------------------------------


class Payload:
    """Pickles as a call of ``function(*args)``, as a crafted file would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": Payload(builtins.eval, f"__import__('os').system('touch {marker}')"),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("file", ["meta", "train"])
def test_cifar_crafted_pickle_runs_nothing(tmp_path: Path, kind: str, file: str) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "marker"
    payload = payloads(marker)[kind]
    target = tmp_path / "cifar-100-python" / file
    key = "fine_label_names" if file == "meta" else "fine_labels"
    target.write_bytes(pickle.dumps({key: payload}))
    with pytest.raises(DataError) as err:
        build("cifar100", tmp_path)
    message = str(err.value)
    name = f"{payload.function.__module__}.{payload.function.__name__}"  # posix.system on Linux
    assert "not a genuine CIFAR-100 pickle" in message and "re-download" in message
    assert str(target) in message and name in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_protocols_load(tmp_path: Path, protocol: int) -> None:
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        entry = pickle.loads((folder / name).read_bytes())
        if name != "meta":  # bytes keys and numpy scalars, as Python 2 / numpy files may hold
            entry = {
                b"data": entry["data"],
                "fine_labels": [np.int64(y) for y in entry["fine_labels"]],
            }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
    pair = build("cifar100", tmp_path)
    assert pair.class_names == ["apple", "aquarium fish", "baby"]
    assert pair.train.targets == [0, 1, 2, 0, 1, 2] and len(pair.test) == 4


def test_cifar_numpy1_names_load(tmp_path: Path) -> None:
    """Pickles written under numpy 1 (and the real files) name ``numpy.core.multiarray``."""
    write_cifar(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    entry = pickle.loads(train.read_bytes())
    raw = pickle.dumps(entry, protocol=2)
    if b"numpy._core.multiarray" in raw:
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    train.write_bytes(raw)
    pair = build("cifar100", tmp_path)
    assert len(pair.train) == 6


# --- image files: checked when the dataset is built --------------------------------------------


def save_truncated(path: Path, fmt: str) -> Path:
    """An image of format ``fmt`` cut in half: its header still opens, its pixels do not decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(path) as image:  # the header is intact: only a deeper check finds it
        assert image.size == (64, 64)
    return path


def save_truncated_jpeg(path: Path) -> Path:
    return save_truncated(path, "JPEG")


def save_truncated_png(path: Path) -> Path:
    return save_truncated(path, "PNG")


def save_not_an_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"these bytes are not an image\n" * 20)
    return path


def write_folder(root: Path, per_class: int = 3) -> None:
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog"]):
            for i in range(per_class):
                save_image(root / split / name / f"{i}.jpg", 10 * c + i)


@pytest.mark.parametrize("mode", ["quick", "full"])
@pytest.mark.parametrize("save", [save_truncated_jpeg, save_truncated_png, save_not_an_image])
def test_damaged_image_named_at_build(tmp_path: Path, mode: str, save) -> None:
    files = write_imagenet_r(tmp_path)
    bad = save(files[3].with_suffix(".png" if save is save_truncated_png else ".jpg"))
    if bad != files[3]:
        files[3].unlink()
    with pytest.raises(DataError) as err:
        build("imagenet-r", tmp_path, verify=mode)
    message = str(err.value)
    assert str(bad) in message and f"data.verify: {mode}" in message
    assert "replace or delete these files, or set data.on_bad_file: skip" in message
    assert message.count(str(tmp_path)) == 1  # the good files are not listed


def test_damaged_image_in_folder_and_cub(tmp_path: Path) -> None:
    write_folder(tmp_path / "folder")
    bad = save_truncated_jpeg(tmp_path / "folder" / "test" / "dog" / "1.jpg")
    with pytest.raises(DataError, match="truncated") as err:
        build("folder", tmp_path / "folder")
    assert str(bad) in str(err.value)
    write_cub(tmp_path / "cub")
    bad = next((tmp_path / "cub").rglob("*_0003.jpg"))
    save_not_an_image(bad)
    with pytest.raises(DataError) as err:
        build("cub200", tmp_path / "cub")
    assert str(bad) in str(err.value) and "re-download" in str(err.value)


def test_skip_leaves_damaged_files_out(tmp_path: Path) -> None:
    files = write_imagenet_r(tmp_path)
    clean = build("imagenet-r", tmp_path, seed=0)
    bad = save_truncated_jpeg(files[13])  # class 1, an odd index: a .jpg
    with pytest.warns(UserWarning, match=r"left out 1 damaged image files"):
        pair = build("imagenet-r", tmp_path, seed=0, on_bad_file="skip")
    assert pair.skipped == [str(bad)]
    assert pair.class_names == clean.class_names
    assert len(pair.train) + len(pair.test) == len(clean.train) + len(clean.test) - 1
    for split, before in ((pair.train, clean.train), (pair.test, clean.test)):
        assert bad not in split.paths
        assert split.paths == [p for p in before.paths if p != bad]
        assert len(split.targets) == len(split.paths)
        for path, label in zip(split.paths, split.targets, strict=True):
            assert path.parent.name == WNIDS[label]
    assert clean.skipped == []


def test_skip_may_not_empty_a_class(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=1)
    bad = save_not_an_image(tmp_path / "test" / "dog" / "0.jpg")
    with pytest.raises(DataError, match=r"every test image of class 'dog'") as err:
        build("folder", tmp_path, on_bad_file="skip")
    assert str(bad) in str(err.value)


def test_many_damaged_files_are_counted(tmp_path: Path) -> None:
    write_folder(tmp_path)
    for i in range(25):
        save_not_an_image(tmp_path / "train" / "cat" / f"bad_{i:02d}.jpg")
    with pytest.raises(DataError) as err:
        build("folder", tmp_path)
    message = str(err.value)
    assert "25 of 37 image files cannot be read" in message
    assert (
        len(re.findall(r"bad_\d\d\.jpg", message)) == verify.MAX_LISTED and "and 5 more" in message
    )


def test_verify_off_opens_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path)
    bad = save_not_an_image(tmp_path / "train" / "dog" / "0.jpg")

    def refuse(*args, **kwargs):
        raise AssertionError("an image was opened")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", refuse)
        pair = build("folder", tmp_path, verify="off")
    assert bad in pair.train.paths and pair.skipped == []
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        pair.train[pair.train.paths.index(bad)]


def test_file_damaged_after_build_names_its_path(tmp_path: Path) -> None:
    write_folder(tmp_path)
    pair = build("folder", tmp_path)
    path = pair.test.paths[0]
    save_truncated_jpeg(path)
    with pytest.raises(DataError, match=f"cannot read image {path}") as err:
        pair.test[0]
    assert isinstance(err.value.__cause__, OSError)
    dataset = ImageFileDataset([save_not_an_image(tmp_path / "x.png")], [0])
    with pytest.raises(DataError, match="x.png"):
        dataset[0]


def test_checks_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path)
    calls: list[Path] = []
    check = verify.image_problem

    def counted(path: Path, full: bool = False) -> str | None:
        calls.append(path)
        return check(path, full)

    monkeypatch.setattr(verify, "image_problem", counted)
    build("folder", tmp_path)
    build("folder", tmp_path)  # a run builds twice (augmented and plain view)
    assert len(calls) == 12 and len(set(calls)) == 12
    changed = save_image(tmp_path / "train" / "cat" / "0.jpg", 200)
    os.utime(changed, ns=(0, 0))
    build("folder", tmp_path)
    assert calls[12:] == [changed]
    build("folder", tmp_path, verify="full")  # a deeper check is not answered by a quick one
    assert len(calls) == 25


def test_find_bad_images_reasons(tmp_path: Path) -> None:
    good = save_image(tmp_path / "good.jpg")
    cut = save_truncated_jpeg(tmp_path / "cut.jpg")
    junk = save_not_an_image(tmp_path / "junk.jpg")
    gone = tmp_path / "gone.jpg"
    bad = verify.find_bad_images([good, cut, junk, gone])
    assert list(bad) == [cut, junk, gone]
    assert "truncated" in bad[cut] and "not an image" in bad[junk]
    assert "FileNotFoundError" in bad[gone]
    # a JPEG followed by padding lacks the end marker at the very end, yet decodes: it is good
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(save_image(tmp_path / "src.jpg", 5).read_bytes() + b"\0" * 16)
    assert verify.find_bad_images([padded]) == {}
