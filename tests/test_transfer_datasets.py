"""The STAR-Prompt transfer datasets (promptcl.data.transfer) on tiny fake copies of each release."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from promptcl.config import DataConfig
from promptcl.data.base import Preprocessing
from promptcl.data.transfer import CHESTX_CLASSES, CROPDISEASE_CLASSES
from promptcl.errors import DataError
from promptcl.registry import datasets

SIZE = 32
PREPROCESSING = Preprocessing(SIZE, augment=False)


def build(name: str, root: Path | None, seed: int = 0, **kwargs):
    cfg = DataConfig(name=name, root=root, **kwargs)
    return datasets.get(name)(cfg, PREPROCESSING, seed)


def save_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value % 256, dtype=np.uint8)).save(path)
    return path


def check_items(pair, num_classes: int, tasks: int) -> None:
    assert pair.num_classes == num_classes and pair.default_tasks == tasks
    for split in (pair.train, pair.test):
        assert len(split.targets) == len(split) > 0
        assert set(split.targets) <= set(range(num_classes))
        x, y = split[0]
        assert isinstance(x, torch.Tensor) and x.shape == (3, SIZE, SIZE)
        assert y == split.targets[0]


def labels_by_name(split) -> dict[str, int]:
    return {p.name: y for p, y in zip(split.paths, split.targets, strict=True)}


def missing_root_message(name: str, root: Path) -> str:
    with pytest.raises(DataError) as err:
        build(name, root)
    message = str(err.value)
    assert "data.root" in message and "get the data from" in message
    return message


def test_all_registered() -> None:
    for name in ("cars196", "eurosat", "resisc45", "isic", "chestx", "cropdisease"):
        assert name in datasets


# --- Stanford Cars-196 -------------------------------------------------------------------------

CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]


def write_annotations(path: Path, rows: list[tuple[str, int]]) -> None:
    from scipy.io import savemat

    fields = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    records = np.array([(1, 2, 7, 7, c, f) for f, c in rows], dtype=fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"annotations": records.reshape(1, -1)})


def write_cars_devkit(root: Path) -> Path:
    from scipy.io import savemat

    folder = root / "stanford_cars"
    (folder / "devkit").mkdir(parents=True)
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": np.array(CAR_NAMES, dtype=object)})
    train = [(f"{i:05d}.jpg", 1 + i % 3) for i in range(1, 7)]  # classes 2, 3, 1, 2, 3, 1
    test = [(f"{i:05d}.jpg", 3 - i % 3) for i in range(1, 4)]  # the same names, other files
    write_annotations(folder / "devkit" / "cars_train_annos.mat", train)
    write_annotations(folder / "cars_test_annos_withlabels.mat", test)
    for split, rows in (("cars_train", train), ("cars_test", test)):
        for i, (fname, _) in enumerate(rows):
            save_image(folder / split / fname, 10 * i)
    return folder


def test_cars196_devkit(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    folder = write_cars_devkit(tmp_path)
    for root in (tmp_path, folder):
        pair = build("cars196", root)
        check_items(pair, 3, tasks=10)
        assert pair.class_names == CAR_NAMES
        assert (len(pair.train), len(pair.test)) == (6, 3)
        assert pair.train.targets == [1, 2, 0, 1, 2, 0]
        assert pair.train.paths[0] == folder / "cars_train" / "00001.jpg"
        assert labels_by_name(pair.test) == {"00001.jpg": 1, "00002.jpg": 0, "00003.jpg": 2}
        assert all(p.parent.name == "cars_test" for p in pair.test.paths)


def test_cars196_devkit_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("scipy")
    folder = write_cars_devkit(tmp_path)
    (folder / "cars_test" / "00002.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images listed .* missing, e\.g\. .*00002\.jpg"):
        build("cars196", tmp_path)
    (folder / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat"):
        build("cars196", tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(DataError, match="pip install scipy"):
        build("cars196", tmp_path)
    with pytest.raises(DataError, match="split_file"):
        build("cars196", tmp_path, split_file=tmp_path)


def test_cars196_csv_copy(tmp_path: Path) -> None:
    (tmp_path / "names.csv").write_text("".join(f"{n}\n" for n in CAR_NAMES))
    rows = {
        "train": [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 3)],
        "test": [("00001.jpg", 2)],
    }
    for split, entries in rows.items():
        lines = [f"{f},1,2,7,7,{c}\n" for f, c in entries]
        (tmp_path / f"anno_{split}.csv").write_text("".join(lines))
        for f, c in entries:
            class_dir = CAR_NAMES[c - 1].replace("/", "-")
            save_image(tmp_path / "car_data" / "car_data" / split / class_dir / f, c)
    pair = build("cars196", tmp_path)
    check_items(pair, 3, tasks=10)
    assert pair.class_names == CAR_NAMES
    assert pair.train.targets == [2, 0, 2] and pair.test.targets == [1]
    assert pair.test.paths[0].parent.name == "Acura RL Sedan 2012"
    assert pair.test.paths[0].parts[-3] == "test"
    (tmp_path / "anno_test.csv").write_text("00001.jpg,1,2,7,7,9\n")
    with pytest.raises(DataError, match="class id 9 outside 1..3"):
        build("cars196", tmp_path)


def test_cars196_missing_root(tmp_path: Path) -> None:
    message = missing_root_message("cars196", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "stanford_cars") in message and "devkit" in message


# --- EuroSAT -----------------------------------------------------------------------------------

EUROSAT = ["AnnualCrop", "HerbaceousVegetation", "SeaLake"]


def write_eurosat(folder: Path, per_class: int = 5) -> None:
    for c, name in enumerate(EUROSAT):
        for i in range(1, per_class + 1):
            save_image(folder / name / f"{name}_{i}.jpg", 50 * c + i)


def test_eurosat_seeded_split(tmp_path: Path) -> None:
    write_eurosat(tmp_path / "EuroSAT_RGB")
    pair = build("eurosat", tmp_path, seed=0)
    check_items(pair, 3, tasks=5)
    assert pair.class_names == ["annual crop", "herbaceous vegetation", "sea lake"]
    assert (len(pair.train), len(pair.test)) == (12, 3) and pair.test.targets == [0, 1, 2]
    for path, label in zip(
        pair.train.paths + pair.test.paths, pair.train.targets + pair.test.targets, strict=True
    ):
        assert path.parent.name == EUROSAT[label]
    assert not set(pair.train.paths) & set(pair.test.paths)
    again = build("eurosat", tmp_path / "EuroSAT_RGB", seed=0)  # root may be the inner folder
    assert again.test.paths == pair.test.paths
    assert build("eurosat", tmp_path, seed=3).test.paths != pair.test.paths


def write_coop_split(path: Path) -> None:
    names = ["Annual Crop Land", "Herbaceous Vegetation Land", "Sea or Lake"]

    def entries(numbers):
        return [[f"{c}/{c}_{i}.jpg", y, names[y]] for y, c in enumerate(EUROSAT) for i in numbers]

    split = {"train": entries((1, 2, 3)), "val": entries((4,)), "test": entries((5,))}
    path.write_text(json.dumps(split))


def test_eurosat_coop_split(tmp_path: Path) -> None:
    root = tmp_path / "eurosat"
    write_eurosat(root)  # mammoth's folder: class folders and split.json in data.root
    write_coop_split(root / "split.json")
    pair = build("eurosat", root)
    check_items(pair, 3, tasks=5)
    assert pair.class_names == ["Annual Crop Land", "Herbaceous Vegetation Land", "Sea or Lake"]
    assert (len(pair.train), len(pair.test)) == (9, 3)  # val left out
    assert labels_by_name(pair.test) == {
        "AnnualCrop_5.jpg": 0,
        "HerbaceousVegetation_5.jpg": 1,
        "SeaLake_5.jpg": 2,
    }
    assert pair.train.paths[0] == root / "AnnualCrop" / "AnnualCrop_1.jpg"
    moved = tmp_path / "splits" / "split_zhou_EuroSAT.json"
    moved.parent.mkdir()
    (root / "split.json").rename(moved)
    for split_file in (moved, moved.parent):
        assert build("eurosat", root, split_file=split_file).test.paths == pair.test.paths
    seeded = build("eurosat", root)  # no split file: seeded 80/20, folder names
    assert len(seeded.test) == 3 and seeded.class_names[0] == "annual crop"
    with pytest.raises(DataError, match="does not exist"):
        build("eurosat", root, split_file=tmp_path / "gone.json")


def test_eurosat_missing_root(tmp_path: Path) -> None:
    message = missing_root_message("eurosat", tmp_path)
    assert str(tmp_path / "EuroSAT_RGB") in message and "zenodo" in message


# --- NWPU-RESISC45 -----------------------------------------------------------------------------

RESISC = ["airplane", "baseball_diamond", "wetland"]


def write_resisc(folder: Path, per_class: int = 5) -> None:
    for c, name in enumerate(RESISC):
        for i in range(1, per_class + 1):
            save_image(folder / name / f"{name}_{i:03d}.jpg", 50 * c + i)


def test_resisc45_seeded_split(tmp_path: Path) -> None:
    write_resisc(tmp_path / "NWPU-RESISC45")
    pair = build("resisc45", tmp_path, seed=1)
    check_items(pair, 3, tasks=9)
    assert pair.class_names == ["airplane", "baseball diamond", "wetland"]
    assert (len(pair.train), len(pair.test)) == (12, 3) and pair.train.targets == [0] * 4 + [
        1
    ] * 4 + [2] * 4
    assert all(
        p.name.startswith(RESISC[y])
        for p, y in zip(pair.test.paths, pair.test.targets, strict=True)
    )


def test_resisc45_mammoth_split(tmp_path: Path) -> None:
    write_resisc(tmp_path / "NWPU-RESISC45", per_class=3)
    label = {"wetland": 0, "airplane": 1, "baseball_diamond": 2}  # any order the files give
    for split, numbers in (("train", (1, 2)), ("test", (3,))):
        rows = [(f"NWPU-RESISC45/{c}/{c}_{i:03d}.jpg", label[c]) for c in RESISC for i in numbers]
        data = {"data": [r for r, _ in rows], "targets": [t for _, t in rows]}
        (tmp_path / f"resisc45_{split}.yaml").write_text(yaml.safe_dump(data))
    pair = build("resisc45", tmp_path)
    check_items(pair, 3, tasks=9)
    assert pair.class_names == ["wetland", "airplane", "baseball diamond"]
    assert (len(pair.train), len(pair.test)) == (6, 3)
    assert labels_by_name(pair.test) == {
        "airplane_003.jpg": 1,
        "baseball_diamond_003.jpg": 2,
        "wetland_003.jpg": 0,
    }
    one_file = build("resisc45", tmp_path, split_file=tmp_path / "resisc45_test.yaml")
    assert one_file.train.paths == pair.train.paths
    (tmp_path / "NWPU-RESISC45" / "wetland" / "wetland_003.jpg").unlink()
    with pytest.raises(DataError, match="missing"):
        build("resisc45", tmp_path)


def test_resisc45_missing_root(tmp_path: Path) -> None:
    message = missing_root_message("resisc45", tmp_path)
    assert str(tmp_path / "NWPU-RESISC45") in message and "NWPU-RESISC45.rar" in message


# --- ISIC 2018 task 3 --------------------------------------------------------------------------

ISIC_COLUMNS = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def write_isic(root: Path, per_class: int = 5) -> dict[str, str]:
    """Images of every class (NV too), one-hot rows; returns image id -> class column."""
    rows, truth = ["image," + ",".join(ISIC_COLUMNS)], {}
    number = 24306
    for c, column in enumerate(ISIC_COLUMNS):
        for _ in range(per_class):
            image = f"ISIC_{number:07d}"
            hot = ",".join("1.0" if k == c else "0.0" for k in range(len(ISIC_COLUMNS)))
            rows.append(f"{image},{hot}")
            save_image(root / "ISIC2018_Task3_Training_Input" / f"{image}.jpg", number)
            truth[image], number = column, number + 1
    csv_path = (
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    )
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("\n".join(rows) + "\n")
    return truth


def test_isic_six_classes(tmp_path: Path) -> None:
    truth = write_isic(tmp_path)
    pair = build("isic", tmp_path, seed=0)
    check_items(pair, 6, tasks=3)
    assert pair.class_names == [
        "melanoma",
        "basal cell carcinoma",
        "actinic keratosis or intraepithelial carcinoma",
        "benign keratosis",
        "dermatofibroma",
        "vascular skin lesion",
    ]
    assert (len(pair.train), len(pair.test)) == (24, 6)  # 5 NV images left out
    kept = ["MEL", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    seen = {**labels_by_name(pair.train), **labels_by_name(pair.test)}
    assert len(seen) == 30 and all(truth[n[:-4]] == kept[y] for n, y in seen.items())
    assert seen["ISIC_0024306.jpg"] == 0 and seen["ISIC_0024316.jpg"] == 1  # MEL, BCC
    assert "ISIC_0024311.jpg" not in seen  # NV


def test_isic_errors(tmp_path: Path) -> None:
    write_isic(tmp_path, per_class=3)
    csv_path = (
        tmp_path / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    )
    csv_path.write_text(csv_path.read_text() + "ISIC_9,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n")
    with pytest.raises(DataError, match="not one-hot"):
        build("isic", tmp_path)
    csv_path.write_text("image,MEL,BCC\nISIC_1,1.0,0.0\n")
    with pytest.raises(DataError, match="lacks the columns"):
        build("isic", tmp_path)


def test_isic_missing_root(tmp_path: Path) -> None:
    message = missing_root_message("isic", tmp_path)
    assert "ISIC2018_Task3_Training_GroundTruth.csv" in message
    assert str(tmp_path / "ISIC2018_Task3_Training_Input") in message
    assert "challenge.isic-archive.com" in message


# --- ChestX (NIH) ------------------------------------------------------------------------------


def write_chestx(root: Path, per_class: int = 5) -> None:
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    entries = [(f"{c}_{i}.png", c) for c in CHESTX_CLASSES for i in range(per_class)]
    entries += [
        ("multi.png", "Cardiomegaly|Edema"),
        ("none.png", "No Finding"),
        ("hernia.png", "Hernia"),
    ]
    for number, (name, finding) in enumerate(entries):
        lines.append(f"{name},{finding},0,{number}")
        part = "images_001" if number % 2 else "images_002"
        save_image(root / part / "images" / name, number)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")


def test_chestx_seeded_split(tmp_path: Path) -> None:
    write_chestx(tmp_path / "chestX")
    pair = build("chestx", tmp_path)
    check_items(pair, 6, tasks=2)
    assert pair.class_names == [
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Fibrosis",
        "Pleural Thickening",
        "Pneumothorax",
    ]
    assert (len(pair.train), len(pair.test)) == (24, 6) and pair.test.targets == [0, 1, 2, 3, 4, 5]
    seen = {**labels_by_name(pair.train), **labels_by_name(pair.test)}
    assert seen["Edema_3.png"] == 2 and seen["Pleural_Thickening_0.png"] == 4
    assert not {"multi.png", "none.png", "hernia.png"} & set(seen)
    assert {p.parts[-3] for p in pair.train.paths} == {"images_001", "images_002"}


def test_chestx_official_lists(tmp_path: Path) -> None:
    write_chestx(tmp_path, per_class=2)
    test_names = [f"{c}_1.png" for c in CHESTX_CLASSES] + ["none.png"]
    train_names = [f"{c}_0.png" for c in CHESTX_CLASSES] + ["multi.png", "hernia.png"]
    (tmp_path / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_names) + "\n")
    pair = build("chestx", tmp_path)
    assert [p.name for p in pair.test.paths] == test_names[:6] and pair.test.targets == list(
        range(6)
    )
    assert [p.name for p in pair.train.paths] == train_names[:6]
    (tmp_path / "test_list.txt").write_text("\n".join(test_names[1:]) + "\n")
    with pytest.raises(DataError, match="every image once"):
        build("chestx", tmp_path)


def test_chestx_missing_root(tmp_path: Path) -> None:
    message = missing_root_message("chestx", tmp_path)
    assert str(tmp_path / "Data_Entry_2017.csv") in message and "nihcc" in message
    write_chestx(tmp_path, per_class=2)
    (tmp_path / "images_002" / "images" / "Cardiomegaly_0.png").unlink()
    with pytest.raises(DataError, match="missing"):
        build("chestx", tmp_path)


# --- CropDisease (PlantVillage) ----------------------------------------------------------------


def test_cropdisease_class_folders(tmp_path: Path) -> None:
    folder = tmp_path / "dataset" / "train"  # CD-FSL's Kaggle copy
    folders = [
        "Corn_(maize)___Common_rust_",  # label 7 of mammoth's 35
        "Apple___Apple_scab",  # 0
        "Cherry_(including_sour)___healthy",  # 5: after Powdery_mildew, as mammoth sorts
        "Cherry_(including_sour)___Powdery_mildew",  # 4
        "Apple___Cedar_apple_rust",  # not in mammoth's list
        "Background_without_leaves",
    ]
    for c, name in enumerate(folders):
        for i in range(5):
            save_image(folder / name / f"image ({i}).JPG", 40 * c + i)
    pair = build("cropdisease", tmp_path, seed=0)
    check_items(pair, 4, tasks=7)
    names = ["Apple Apple scab", "Cherry Powdery mildew", "Cherry healthy", "Corn Common rust"]
    assert pair.class_names == names
    assert (len(pair.train), len(pair.test)) == (16, 4)
    expected = {
        "Apple___Apple_scab": 0,
        "Cherry_(including_sour)___Powdery_mildew": 1,
        "Cherry_(including_sour)___healthy": 2,
        "Corn_(maize)___Common_rust_": 3,
    }
    for path, label in zip(
        pair.train.paths + pair.test.paths, pair.train.targets + pair.test.targets, strict=True
    ):
        assert expected[path.parent.name] == label
    assert build("cropdisease", folder, seed=0).test.paths == pair.test.paths


def test_cropdisease_mammoth_split(tmp_path: Path) -> None:
    files = {"train": [("a/0.jpg", 0), ("a/1.jpg", 34)], "test": [("b/2.jpg", 34)]}
    for split, rows in files.items():
        for rel, y in rows:
            save_image(tmp_path / "images" / rel, y)
        data = {"data": [r for r, _ in rows], "labels": [y for _, y in rows]}
        (tmp_path / f"{split}.json").write_text(json.dumps(data))
    pair = build("cropdisease", tmp_path)
    assert pair.num_classes == 35 == len(CROPDISEASE_CLASSES)
    assert pair.class_names[0] == "Apple Apple scab" and pair.class_names[34] == "Tomato healthy"
    assert pair.class_names[6] == "Corn Cercospora leaf spot Gray leaf spot"
    assert pair.train.targets == [0, 34] and pair.test.paths == [
        tmp_path / "images" / "b" / "2.jpg"
    ]
    (tmp_path / "test.json").write_text(json.dumps({"data": ["b/2.jpg"], "labels": [35]}))
    with pytest.raises(DataError, match=r"outside 0\.\.34"):
        build("cropdisease", tmp_path)


def test_cropdisease_missing_root(tmp_path: Path) -> None:
    message = missing_root_message("cropdisease", tmp_path)
    assert str(tmp_path / "Apple___Apple_scab") in message and "train.json" in message
    assert "plant-disease" in message
