"""Image dataset builders on tiny fake copies of CIFAR-100, ImageNet-R, CUB-200 and a folder set."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from promptcl.config import DataConfig
from promptcl.data.base import Preprocessing
from promptcl.data.images import ImageFileDataset
from promptcl.errors import DataError
from promptcl.registry import datasets

SIZE = 16
PREPROCESSING = Preprocessing(SIZE)
WNIDS = ["n01443537", "n02099601", "n12267677"]  # goldfish, golden retriever, acorn


def build(name: str, root: Path | None, seed: int = 0, **kwargs):
    cfg = DataConfig(name=name, root=root, **kwargs)
    return datasets.get(name)(cfg, PREPROCESSING, seed)


def save_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((8, 8, 3), value % 256, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def check_items(pair, num_classes: int) -> None:
    assert pair.num_classes == num_classes
    for split in (pair.train, pair.test):
        assert len(split.targets) == len(split)
        assert set(split.targets) <= set(range(num_classes))
        x, y = split[0]
        assert isinstance(x, torch.Tensor) and x.shape == (3, SIZE, SIZE)
        assert x.dtype == torch.float32 and y == split.targets[0]


# --- CIFAR-100 ---------------------------------------------------------------------------------


def write_cifar(root: Path, n_train: int = 6, n_test: int = 4) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = ["apple", "aquarium_fish", "baby"]
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": [i % len(names) for i in range(n)],
            "coarse_labels": [0] * n,
        }
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))


def test_cifar100_reads_pickles(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    pair = build("cifar100", tmp_path)
    check_items(pair, 3)
    assert pair.class_names == ["apple", "aquarium fish", "baby"]
    assert (len(pair.train), len(pair.test)) == (6, 4)
    assert pair.train.targets == [0, 1, 2, 0, 1, 2]
    # root may also point at the cifar-100-python folder; existing files skip the download
    pair = build("cifar100", tmp_path / "cifar-100-python", download=True)
    assert len(pair.train) == 6


def test_cifar100_pixels_are_hwc(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    raw = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())
    cfg = DataConfig(name="cifar100", root=tmp_path)
    image, _ = datasets.get("cifar100")(cfg, Preprocessing(None), 0).train[1]
    expected = raw["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(image), expected)


def test_cifar100_missing_root_explains(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build("cifar100", tmp_path / "nowhere")
    message = str(err.value)
    assert "cifar-100-python" in message and "data.root" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "data.download" in message


def test_cifar100_malformed_pickle(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read"):
        build("cifar100", tmp_path)


def test_unset_root_is_a_data_error() -> None:
    with pytest.raises(DataError, match="data.root"):
        build("cifar100", None)


# --- ImageNet-R --------------------------------------------------------------------------------


def write_imagenet_r(root: Path, per_class: int = 10) -> list[Path]:
    files = []
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            suffix = ".jpg" if i % 2 else ".png"
            files.append(save_image(root / "imagenet-r" / wnid / f"art_{i}{suffix}", 40 * c + i))
    (root / "imagenet-r" / "README.txt").write_text("not a class")
    return files


def test_imagenet_r_seeded_split(tmp_path: Path) -> None:
    files = write_imagenet_r(tmp_path)
    pair = build("imagenet-r", tmp_path, seed=0)
    check_items(pair, 3)
    assert pair.class_names == ["goldfish", "golden retriever", "acorn"]
    train, test = set(pair.train.paths), set(pair.test.paths)
    assert not train & test and train | test == set(files)
    assert len(test) == 3 * 2 and pair.test.targets.count(1) == 2  # 80/20 per class
    for path, label in zip(pair.train.paths, pair.train.targets, strict=True):
        assert path.parent.name == WNIDS[label]
    again = build("imagenet-r", tmp_path, seed=0)
    assert again.train.paths == pair.train.paths and again.test.paths == pair.test.paths
    other = build("imagenet-r", tmp_path, seed=1)
    assert set(other.test.paths) != test
    # root may point directly at the imagenet-r folder
    direct = build("imagenet-r", tmp_path / "imagenet-r", seed=0)
    assert direct.test.paths == pair.test.paths


def write_split(path: Path, entries: list[tuple[str, int]]) -> None:
    data = {"data": [e for e, _ in entries], "targets": [t for _, t in entries]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


def test_imagenet_r_split_files(tmp_path: Path) -> None:
    write_imagenet_r(tmp_path, per_class=3)
    label = {"n12267677": 0, "n01443537": 1, "n02099601": 2}  # an arbitrary order, as in CODA
    entries = {
        split: [
            (f"data/imagenet-r/{w}/art_{i}.{'jpg' if i % 2 else 'png'}", label[w])
            for w in WNIDS
            for i in idx
        ]
        for split, idx in (("train", (0, 1)), ("test", (2,)))
    }
    splits = tmp_path / "splits"
    write_split(splits / "imagenet-r_train.yaml", entries["train"])
    write_split(splits / "imagenet-r_test.yaml", entries["test"])
    for split_file in (splits, splits / "imagenet-r_train.yaml", splits / "imagenet-r_test.yaml"):
        pair = build("imagenet-r", tmp_path, split_file=split_file)
        check_items(pair, 3)
        assert pair.class_names == ["acorn", "goldfish", "golden retriever"]
        assert (len(pair.train), len(pair.test)) == (6, 3)
        assert [p.name for p in pair.test.paths] == ["art_2.png"] * 3
        assert pair.test.targets == [1, 2, 0]
        assert pair.train.paths[0] == tmp_path / "imagenet-r" / WNIDS[0] / "art_0.png"


def test_imagenet_r_split_file_errors(tmp_path: Path) -> None:
    write_imagenet_r(tmp_path, per_class=2)
    splits = tmp_path / "splits"
    write_split(splits / "imagenet-r_train.yaml", [(f"x/{WNIDS[0]}/art_0.png", 0)])
    with pytest.raises(DataError, match="imagenet-r_test.yaml does not exist"):
        build("imagenet-r", tmp_path, split_file=splits)
    write_split(splits / "imagenet-r_test.yaml", [(f"x/{WNIDS[0]}/gone.png", 0)])
    with pytest.raises(DataError, match="missing"):
        build("imagenet-r", tmp_path, split_file=splits)
    (splits / "imagenet-r_test.yaml").write_text("data: [a/b.jpg]\n")
    with pytest.raises(DataError, match="`targets`"):
        build("imagenet-r", tmp_path, split_file=splits)


def test_imagenet_r_missing_root_explains(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build("imagenet-r", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "imagenet-r") in message and "data.root" in message
    assert "https://github.com/hendrycks/imagenet-r" in message


# --- CUB-200-2011 ------------------------------------------------------------------------------


def write_cub(root: Path) -> None:
    folder = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    rows = []
    for image_id in range(1, 7):
        class_id = 1 + (image_id - 1) % 2
        rel = f"{classes[class_id - 1]}/{classes[class_id - 1][4:]}_{image_id:04d}.jpg"
        save_image(folder / "images" / rel, image_id)
        rows.append((image_id, rel, class_id, int(image_id <= 4)))
    (folder / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    (folder / "images.txt").write_text("".join(f"{i} {r}\n" for i, r, _, _ in rows))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))


def test_cub200(tmp_path: Path) -> None:
    write_cub(tmp_path)
    for root in (tmp_path, tmp_path / "CUB_200_2011"):
        pair = build("cub200", root)
        check_items(pair, 2)
        assert pair.class_names == ["Black footed Albatross", "Laysan Albatross"]
        assert pair.train.targets == [0, 1, 0, 1] and pair.test.targets == [0, 1]
        assert pair.test.paths[0].name == "Black_footed_Albatross_0005.jpg"


def test_cub200_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build("cub200", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "CUB_200_2011") in message and "data.root" in message
    assert "Caltech-UCSD Birds-200-2011" in message and "images.txt" in message
    write_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\nbroken\n")
    with pytest.raises(DataError, match="line 2"):
        build("cub200", tmp_path)


# --- generic folders ---------------------------------------------------------------------------


def test_folder_dataset(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(["zebra", "apple_tree"]):
            for i in range(n):
                save_image(tmp_path / split / name / f"{i}.{['png', 'jpeg', 'webp'][i]}", c)
    (tmp_path / "train" / "zebra" / "notes.txt").write_text("skipped")
    pair = build("folder", tmp_path)
    check_items(pair, 2)
    assert pair.class_names == ["apple tree", "zebra"]
    assert pair.train.targets == [0, 0, 0, 1, 1, 1] and pair.test.targets == [0, 0, 1, 1]


def test_folder_class_sets_must_match(tmp_path: Path) -> None:
    save_image(tmp_path / "train" / "cat" / "0.png")
    save_image(tmp_path / "train" / "dog" / "0.png")
    save_image(tmp_path / "test" / "cat" / "0.png")
    with pytest.raises(DataError, match=r"only in train: \['dog'\]"):
        build("folder", tmp_path)


def test_folder_missing_split_explains(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build("folder", tmp_path)
    assert str(tmp_path / "train") in str(err.value) and "data.root" in str(err.value)


def test_images_load_lazily(tmp_path: Path) -> None:
    path = save_image(tmp_path / "a.png", 7)
    dataset = ImageFileDataset([path], [0])
    path.unlink()  # nothing was opened at construction
    save_image(path, 9)
    image, label = dataset[0]
    assert image.mode == "RGB" and np.asarray(image)[0, 0, 0] == 9 and label == 0
