"""Video dataset listings on tiny fake copies of UCF101, HMDB51, SSv2, Breakfast and a folder set;
vCLIMB split files (restricted pickle / JSON) and the fixed tasks they give the scenario."""

from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from promptcl.config import DataConfig
from promptcl.data.base import DatasetPair, Preprocessing
from promptcl.data.safe_pickle import ForbiddenGlobal, load_restricted
from promptcl.data.scenario import Scenario
from promptcl.data.videos import (
    BREAKFAST_ACTIVITIES,
    list_breakfast,
    list_hmdb51,
    list_ssv2,
    list_ucf101,
    list_video_folder,
    read_vclimb_split,
    readable_class_name,
)
from promptcl.errors import ConfigError, DataError
from promptcl.registry import datasets


def cfg(name: str, root: Path | None, **kwargs) -> DataConfig:
    return DataConfig(name=name, root=root, verify="off", **kwargs)


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def labelled(items) -> list[tuple[str, int]]:
    return [(p.name, y) for p, y in items]


# --- UCF101 ------------------------------------------------------------------------------------

UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


def ucf_file(cls: str, group: int, clip: int) -> str:
    stem = "HandStandPushups" if cls == "HandstandPushups" else cls  # the real files' spelling
    return f"v_{stem}_g{group:02d}_c{clip:02d}.avi"


def write_ucf101(root: Path, groups: int = 4, clips: int = 2, writer=touch) -> Path:
    """UCF-101/<Class>/<video>.avi and ucfTrainTestlist/: split k tests on group k."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text(
        "".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES))
    )
    for k in (1, 2, 3):
        train, test = [], []
        for i, cls in enumerate(UCF_CLASSES):
            for g in range(1, groups + 1):
                for c in range(1, clips + 1):
                    entry = f"{cls}/{ucf_file(cls, g, c)}"
                    (test if g == k else train).append(entry if g == k else f"{entry} {i + 1}")
        (lists / f"trainlist0{k}.txt").write_text("\r\n".join(train) + "\r\n")
        (lists / f"testlist0{k}.txt").write_text("\r\n".join(test) + "\r\n")
    for cls in UCF_CLASSES:
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                writer(root / "UCF-101" / cls / ucf_file(cls, g, c))
    return root


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_official_splits(tmp_path: Path, split: int) -> None:
    write_ucf101(tmp_path)
    listing = list_ucf101(cfg("ucf101", tmp_path, official_split=split))
    assert listing.class_names == ["apply eye makeup", "handstand pushups", "yo yo"]
    assert (len(listing.train), len(listing.test)) == (18, 6)
    assert {p.name.split("_g")[1][:2] for p, _ in listing.test} == {f"{split:02d}"}
    assert f"_g{split:02d}_" not in "".join(p.name for p, _ in listing.train)
    for path, label in listing.train + listing.test:
        assert path.is_file() and path.parent.name == UCF_CLASSES[label]
    assert [y for _, y in listing.test] == [0, 0, 1, 1, 2, 2]
    assert not listing.can_delete and listing.task_sizes is None


def test_ucf101_root_may_be_the_video_folder(tmp_path: Path) -> None:
    write_ucf101(tmp_path)
    inner = list_ucf101(cfg("ucf101", tmp_path / "UCF-101"))
    outer = list_ucf101(cfg("ucf101", tmp_path))
    assert inner.train == outer.train and inner.test == outer.test


def test_ucf101_wrong_label_in_trainlist(tmp_path: Path) -> None:
    write_ucf101(tmp_path)
    trainlist = tmp_path / "ucfTrainTestlist" / "trainlist01.txt"
    trainlist.write_bytes(trainlist.read_bytes().replace(b" 3\r\n", b" 2\r\n", 1))
    with pytest.raises(DataError, match=r"trainlist01.txt, line \d+: expected"):
        list_ucf101(cfg("ucf101", tmp_path))


def test_frame_folders_replace_video_files(tmp_path: Path) -> None:
    """The rule: the file as named, else another extension of the stem, else a folder X/."""
    write_ucf101(tmp_path)
    folder = tmp_path / "UCF-101" / "YoYo"
    (folder / "v_YoYo_g02_c01.avi").unlink()  # frames only
    touch(folder / "v_YoYo_g02_c01" / "img_00001.jpg")
    (folder / "v_YoYo_g03_c01.avi").rename(folder / "v_YoYo_g03_c01.mp4")  # transcoded
    touch(folder / "v_YoYo_g03_c01" / "img_00001.jpg")  # ... with frames too: the file wins
    touch(folder / "v_YoYo_g04_c01" / "img_00001.jpg")  # frames beside the named file
    listing = list_ucf101(cfg("ucf101", tmp_path))
    found = {p.name: p for p, _ in listing.train}
    assert found["v_YoYo_g02_c01"].is_dir()
    assert found["v_YoYo_g03_c01.mp4"].is_file()
    assert found["v_YoYo_g04_c01.avi"].is_file() and "v_YoYo_g04_c01" not in found
    assert len(listing.train) == 18


def test_ucf101_missing_videos_are_named(tmp_path: Path) -> None:
    write_ucf101(tmp_path)
    gone = tmp_path / "UCF-101" / "YoYo" / "v_YoYo_g02_c02.avi"
    gone.unlink()
    with pytest.raises(DataError) as err:
        list_ucf101(cfg("ucf101", tmp_path))
    message = str(err.value)
    assert "1 videos named in" in message and str(gone) in message
    assert "UCF-101/<Class>/v_<Class>_gXX_cYY.avi" in message and "data.root" in message


def test_ucf101_missing_root_and_lists_explain(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        list_ucf101(cfg("ucf101", tmp_path / "nowhere"))
    message = str(err.value)
    assert "ucfTrainTestlist" in message and "UCF-101/<Class>" in message
    assert "https://www.crcv.ucf.edu/data/UCF101.php" in message and "`data.root`" in message
    with pytest.raises(DataError, match="`data.root` is not set"):
        list_ucf101(cfg("ucf101", None))
    write_ucf101(tmp_path)
    (tmp_path / "ucfTrainTestlist" / "testlist03.txt").unlink()
    list_ucf101(cfg("ucf101", tmp_path, official_split=2))
    with pytest.raises(DataError) as err:
        list_ucf101(cfg("ucf101", tmp_path, official_split=3))
    message = str(err.value)
    assert "testlist03.txt" in message and "data.official_split: 3" in message
    assert "data.split_file" in message
    with pytest.raises(DataError, match=r"official splits 1\.\.3: set data.official_split"):
        list_ucf101(cfg("ucf101", tmp_path, official_split=4))


def test_ucf101_class_folders_missing(tmp_path: Path) -> None:
    write_ucf101(tmp_path)
    (tmp_path / "UCF-101").rename(tmp_path / "videos")
    with pytest.raises(DataError, match=r"expected the folder .*UCF-101 holding the class folders"):
        list_ucf101(cfg("ucf101", tmp_path))


# --- HMDB51 ------------------------------------------------------------------------------------

HMDB_CLASSES = ["brush_hair", "climb_stairs", "cartwheel"]


def write_hmdb51(root: Path, videos: int = 6) -> None:
    """Video i of a class: split k marks it test if i % 3 == k - 1, unused if i == 5, else train."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for cls in HMDB_CLASSES:
        names = [f"{cls}_video_{i}.avi" for i in range(videos)]
        for name in names:
            touch(root / "hmdb51" / cls / name)
        for k in (1, 2, 3):
            flags = ["0" if i == 5 else "2" if i % 3 == k - 1 else "1" for i in range(videos)]
            lines = "".join(f"{n} {f} \n" for n, f in zip(names, flags, strict=True))
            (splits / f"{cls}_test_split{k}.txt").write_text(lines)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_official_splits(tmp_path: Path, split: int) -> None:
    write_hmdb51(tmp_path)
    listing = list_hmdb51(cfg("hmdb51", tmp_path, official_split=split))
    assert listing.class_names == ["brush hair", "cartwheel", "climb stairs"]  # sorted folders
    test_ids = {i for i in range(5) if i % 3 == split - 1}
    assert len(listing.test) == 3 * len(test_ids) and len(listing.train) == 3 * (5 - len(test_ids))
    for path, label in listing.test:
        assert int(path.stem.rsplit("_", 1)[1]) in test_ids
        assert path.parent.name == sorted(HMDB_CLASSES)[label]
    assert not any(p.stem.endswith("_5") for p, _ in listing.train + listing.test)  # flag 0


def test_hmdb51_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        list_hmdb51(cfg("hmdb51", tmp_path))
    message = str(err.value)
    assert "testTrainMulti_7030_splits/<class>_test_split1.txt" in message
    assert "data.official_split: 1" in message and "hmdb51_org.rar" in message
    write_hmdb51(tmp_path)
    with pytest.raises(DataError, match=r"data.split_file .* is not read by 'hmdb51'"):
        list_hmdb51(cfg("hmdb51", tmp_path, split_file=tmp_path / "x.pkl"))
    split = tmp_path / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt"
    split.write_text(split.read_text() + "extra.avi 7\n")
    with pytest.raises(DataError, match=r"cartwheel_test_split1.txt, line 7"):
        list_hmdb51(cfg("hmdb51", tmp_path))


# --- Something-Something V2 --------------------------------------------------------------------

SSV2_TEMPLATES = [
    "Putting something on a surface",
    "Pushing something from left to right",
    "Moving something and something closer to each other",
]


def write_ssv2(root: Path) -> None:
    labels = root / "labels"
    labels.mkdir(parents=True)
    (labels / "labels.json").write_text(
        json.dumps({t: str(i) for i, t in reversed(list(enumerate(SSV2_TEMPLATES)))})
    )
    bracketed = [
        "Putting [something] on a surface",
        "Pushing [something] from left to right",
        "Moving [something] and [something] closer to each other",
    ]
    video_id = 100
    for part, per_class in (("train", 3), ("validation", 2)):
        entries = []
        for template in bracketed:
            for _ in range(per_class):
                video_id += 1
                entries.append(
                    {"id": str(video_id), "label": "x", "template": template, "placeholders": []}
                )
                touch(root / "20bn-something-something-v2" / f"{video_id}.webm")
        (labels / f"{part}.json").write_text(json.dumps(entries))


def test_ssv2_lists_templates(tmp_path: Path) -> None:
    write_ssv2(tmp_path)
    listing = list_ssv2(cfg("ssv2", tmp_path))
    assert listing.class_names == [t[0].lower() + t[1:] for t in SSV2_TEMPLATES]
    assert (len(listing.train), len(listing.test)) == (9, 6)
    assert [y for _, y in listing.train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert not listing.flips  # "from left to right" must not be mirrored into its opposite
    assert listing.test[0][0].name == "110.webm" and listing.test[-1] == (
        tmp_path / "20bn-something-something-v2" / "115.webm",
        2,
    )


def test_ssv2_unknown_template_and_missing_labels(tmp_path: Path) -> None:
    write_ssv2(tmp_path)
    train = tmp_path / "labels" / "train.json"
    entries = json.loads(train.read_text())
    entries[0]["template"] = "Folding [something]"
    train.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"class 'Folding something' is not in labels.json"):
        list_ssv2(cfg("ssv2", tmp_path))
    (tmp_path / "labels" / "labels.json").unlink()
    with pytest.raises(DataError) as err:
        list_ssv2(cfg("ssv2", tmp_path))
    assert "labels.json, train.json, validation.json" in str(err.value)
    assert "something-something" in str(err.value) and "data.root" in str(err.value)


# --- Breakfast ---------------------------------------------------------------------------------

PARTICIPANTS = [3, 16, 29, 42, 50]  # one in each standard test fold, two in the last


def write_breakfast(root: Path) -> Path:
    """Every activity on cam01 for each participant; stereo ch0 and ch1 of cereals; a stray file."""
    folder = root / "BreakfastII_15fps_qvga_sync"
    for p in PARTICIPANTS:
        for activity in BREAKFAST_ACTIVITIES:
            touch(folder / f"P{p:02d}" / "cam01" / f"P{p:02d}_{activity}.avi")
            touch(folder / f"P{p:02d}" / "cam01" / f"P{p:02d}_{activity}.avi.labels")
        for channel in (0, 1):
            touch(folder / f"P{p:02d}" / "stereo" / f"P{p:02d}_cereals_ch{channel}.avi")
    touch(folder / "P03" / "webcam01" / "P03_tea")  # not a video: ignored
    return folder


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_breakfast_splits_by_participant(tmp_path: Path, split: int) -> None:
    write_breakfast(tmp_path)
    listing = list_breakfast(cfg("breakfast", tmp_path, official_split=split))
    assert listing.class_names[:3] == ["cereals", "coffee", "fried egg"]
    assert listing.class_names[6] == "salad" and len(listing.class_names) == 10
    tested = [[3], [16], [29], [42, 50]][split - 1]
    per_person = 11  # 10 activities + the stereo camera's ch0
    assert len(listing.test) == per_person * len(tested)
    assert len(listing.train) == per_person * (len(PARTICIPANTS) - len(tested))
    assert {p.name[:3] for p, _ in listing.test} == {f"P{n:02d}" for n in tested}
    assert not any("_ch1" in p.name for p, _ in listing.train + listing.test)
    for path, label in listing.train + listing.test:
        activity = path.stem.split("_")[1]
        assert BREAKFAST_ACTIVITIES[label] == activity
    assert listing.default_tasks == 5


def test_breakfast_frame_folder_and_stray_video(tmp_path: Path) -> None:
    folder = write_breakfast(tmp_path)
    (folder / "P03" / "cam01" / "P03_milk.avi").unlink()
    touch(folder / "P03" / "cam01" / "P03_milk" / "00001.png")
    touch(folder / "P03" / "cam01" / "P03_notes.avi")
    with pytest.warns(UserWarning, match=r"left out 1 videos .*P03_notes.avi"):
        listing = list_breakfast(cfg("breakfast", folder))  # root: the inner folder
    milk = [p for p, y in listing.test if y == BREAKFAST_ACTIVITIES.index("milk")]
    assert milk == [folder / "P03" / "cam01" / "P03_milk"]


def test_breakfast_list_files(tmp_path: Path) -> None:
    folder = write_breakfast(tmp_path)
    vis4mer_order = ["cereals", "coffee", "tea", "pancake", "friedegg"]  # a 5-class subset
    lists = tmp_path / "lists"
    lists.mkdir()
    header = "file_name,duration,action,class_id\n"
    for part, people in (("train", (3, 16, 29)), ("test", (42, 50))):
        rows = [
            f"P{p:02d}-cam01-P{p:02d}_{a},10,{a},{i}"
            for p in people
            for i, a in enumerate(vis4mer_order)
        ]
        rows.append(f"P{people[0]:02d}-stereo-P{people[0]:02d}_cereals_ch0,10,cereals,0")
        (lists / f"{part}.csv").write_text(header + "\n".join(rows) + "\n")
    listing = list_breakfast(cfg("breakfast", tmp_path, split_file=lists))
    assert listing.class_names == ["cereals", "coffee", "tea", "pancake", "fried egg"]
    assert (len(listing.train), len(listing.test)) == (16, 11)
    assert listing.train[-1] == (folder / "P03" / "stereo" / "P03_cereals_ch0.avi", 0)
    # VideoMamba's rows: path,label,duration (no header); plain "path label" rows
    videomamba = lists / "vm_train.csv"
    videomamba.write_text("P03/cam01/P03_coffee.avi,1,20\nP16/cam01/P16_cereals.avi,0,20\n")
    (lists / "vm_test.csv").write_text(
        f"{folder}/P42/cam01/P42_coffee.avi 1\n"
        "BreakfastII_15fps_qvga_sync/P42/cam01/P42_cereals.avi 0\n"
    )
    listing = list_breakfast(cfg("breakfast", tmp_path, split_file=lists / "vm_test.csv"))
    assert listing.class_names == ["cereals", "coffee"]
    assert labelled(listing.train) == [("P03_coffee.avi", 1), ("P16_cereals.avi", 0)]
    assert labelled(listing.test) == [("P42_coffee.avi", 1), ("P42_cereals.avi", 0)]
    videomamba.write_text("P03/cam01/P03_coffee.avi,0\nP16/cam01/P16_cereals.avi,0\n")
    with pytest.raises(DataError, match=r"label 0 is used for the activities"):
        list_breakfast(cfg("breakfast", tmp_path, split_file=videomamba))


def test_breakfast_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        list_breakfast(cfg("breakfast", tmp_path))
    message = str(err.value)
    assert "BreakfastII_15fps_qvga_sync" in message and "participant folders" in message
    assert "breakfast-actions-dataset" in message and "data.official_split 1-4" in message
    write_breakfast(tmp_path)
    with pytest.raises(DataError, match=r"the list file .*train.csv \(data.split_file\)"):
        list_breakfast(cfg("breakfast", tmp_path, split_file=tmp_path / "test.csv"))


# --- generic folder ----------------------------------------------------------------------------


def test_video_folder(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("wave_hand", "JumpRope"):
            for i in range(n):
                touch(tmp_path / split / cls / f"clip{i}.mp4")
            touch(tmp_path / split / cls / "clip9" / "0001.jpg")  # a frame folder
            touch(tmp_path / split / cls / "clip0" / "0001.jpg")  # beside clip0.mp4: once
            touch(tmp_path / split / cls / "notes.txt")
    listing = list_video_folder(cfg("video-folder", tmp_path))
    assert listing.class_names == ["jump rope", "wave hand"]
    assert (len(listing.train), len(listing.test)) == (8, 6)
    assert labelled(listing.test) == [
        ("clip0.mp4", 0),
        ("clip1.mp4", 0),
        ("clip9", 0),
        ("clip0.mp4", 1),
        ("clip1.mp4", 1),
        ("clip9", 1),
    ]
    (tmp_path / "test" / "Extra").mkdir()
    with pytest.raises(DataError, match=r"class folders without videos .*Extra"):
        list_video_folder(cfg("video-folder", tmp_path))
    with pytest.raises(DataError, match=r"expected the folder .*train"):
        list_video_folder(cfg("video-folder", tmp_path / "nowhere"))


def test_readable_class_names() -> None:
    cases = {
        "ApplyEyeMakeup": "apply eye makeup",
        "brush_hair": "brush hair",
        "YoYo": "yo yo",
        "CleanAndJerk": "clean and jerk",
        "TaiChi": "tai chi",
        "climb_stairs": "climb stairs",
    }
    assert {k: readable_class_name(k) for k in cases} == cases


# --- vCLIMB splits and the restricted reader ---------------------------------------------------

VCLIMB_TASKS = [["YoYo", "ApplyEyeMakeup"], ["HandstandPushups"]]


def vclimb_content() -> dict:
    """Per task {class: ids}: train groups 1-2, val 3, test 4 (vCLIMB ids are file stems)."""

    def part(gs):
        return [
            {cls: [ucf_file(cls, g, c)[:-4] for g in gs for c in (1, 2)] for cls in task}
            for task in VCLIMB_TASKS
        ]

    return {"train": part([1, 2]), "val": part([3]), "test": part([4])}


class Payload:
    """Pickles as a call of ``function(*args)``, as a crafted file would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_vclimb_pickle_and_json_read_identically(tmp_path: Path) -> None:
    write_ucf101(tmp_path / "data")
    content = vclimb_content()
    as_pickle = touch(tmp_path / "UCF101_data.pkl", pickle.dumps(content, protocol=4))
    as_json = touch(tmp_path / "UCF101_data.json", json.dumps(content, indent=1).encode())
    a = list_ucf101(cfg("ucf101", tmp_path / "data", split_file=as_pickle))
    b = list_ucf101(cfg("ucf101", tmp_path / "data", split_file=as_json))
    assert a == b
    assert a.class_names == ["yo yo", "apply eye makeup", "handstand pushups"]
    assert a.task_sizes == [2, 1] and a.default_tasks == 2
    assert (len(a.train), len(a.test)) == (12, 6)
    assert a.test[-1] == (
        tmp_path / "data/UCF-101/HandstandPushups/v_HandStandPushups_g04_c02.avi",
        2,
    )
    assert all("_g04_" in p.name for p, _ in a.test)
    assert read_vclimb_split(as_pickle).parts == read_vclimb_split(as_json).parts


@pytest.mark.parametrize(
    "function, args",
    [(os.system, ("echo pwned",)), (builtins.eval, ("__import__('os').system('echo pwned')",))],
)
def test_restricted_reader_refuses_code(tmp_path: Path, function, args) -> None:
    marker = tmp_path / "pwned"
    crafted = vclimb_content()
    crafted["train"][0]["YoYo"] = [Payload(function, *args)]
    path = touch(tmp_path / "split.pkl", pickle.dumps(crafted))
    name = f"{function.__module__}.{function.__name__}"  # posix.system on Linux
    with pytest.raises(ForbiddenGlobal) as err:
        load_restricted(path)
    assert err.value.global_name == name and "would run code" in str(err.value)
    assert str(path) in str(err.value)
    write_ucf101(tmp_path / "data")
    with pytest.raises(DataError) as err:
        list_ucf101(cfg("ucf101", tmp_path / "data", split_file=path))
    message = str(err.value)
    assert name in message and "would run code" in message and "data.split_file" in message
    assert not marker.exists()


def test_restricted_reader_loads_plain_data() -> None:
    value = {"a": [1, 2.5, None, True], b"k": (b"bytes", "text"), "s": {1, 2}, "c": 1 + 2j}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert load_restricted(pickle.dumps(value, protocol=protocol)) == value
    with pytest.raises(ForbiddenGlobal, match="numpy"):
        load_restricted(pickle.dumps(np.zeros(2)))  # numpy only where a caller allows it


def test_vclimb_split_gives_the_scenario_its_tasks(tmp_path: Path) -> None:
    write_ucf101(tmp_path / "data")
    split = touch(tmp_path / "split.pkl", pickle.dumps(vclimb_content()))
    config = cfg("ucf101", tmp_path / "data", split_file=split, shuffle_classes=False)
    pair = datasets.get("ucf101")(config, Preprocessing(None), 0)
    assert pair.task_sizes == [2, 1] and pair.modality == "video"
    scenario = Scenario.from_config(pair, config, seed=3)
    assert scenario.task_sizes == [2, 1] and scenario.class_order == [0, 1, 2]
    assert scenario.class_names() == ["yo yo", "apply eye makeup", "handstand pushups"]
    assert sorted(scenario.test_view(0).targets) == [0, 0, 1, 1]
    same = config.model_copy(update={"num_tasks": 2})
    assert Scenario.from_config(pair, same, seed=3).task_sizes == [2, 1]
    for update, key in (
        ({"shuffle_classes": True}, "data.shuffle_classes: false"),
        ({"num_tasks": 3}, "data.num_tasks"),
        ({"task_sizes": [1, 2]}, r"ask for \[1, 2\]"),
        ({"class_order": [2, 1, 0]}, "data.class_order"),
    ):
        with pytest.raises(ConfigError, match=key):
            Scenario.from_config(pair, config.model_copy(update=update), seed=3)


def test_vclimb_full_size_scenario() -> None:
    """UCF101's 10-task vCLIMB shape: 11 + 9x10 classes, learned in the file's order."""
    sizes = [11] + [10] * 9
    pair = DatasetPair(train=None, test=None, class_names=[f"c{i}" for i in range(101)])  # type: ignore[arg-type]
    pair.task_sizes = sizes
    scenario = Scenario.from_config(pair, DataConfig(shuffle_classes=False), seed=0)
    assert scenario.task_sizes == sizes and scenario.class_range(1) == (11, 21)
    pair.task_sizes = None  # without the file: the config's tasks, shuffled
    scenario = Scenario.from_config(pair, DataConfig(base_classes=51, num_tasks=11), seed=0)
    assert scenario.task_sizes == [51] + [5] * 10 and scenario.class_order != list(range(101))


def test_vclimb_bad_files_explain(tmp_path: Path) -> None:
    write_ucf101(tmp_path / "data")
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"does not exist; expected a vCLIMB split"):
        list_ucf101(cfg("ucf101", root, split_file=tmp_path / "none.pkl"))
    content = vclimb_content()
    content["test"][1]["YoYo"] = content["test"][0].pop("YoYo")
    path = touch(tmp_path / "moved.json", json.dumps(content).encode())
    with pytest.raises(DataError, match=r"tasks of 'test' do not hold the classes"):
        list_ucf101(cfg("ucf101", root, split_file=path))
    content = vclimb_content()
    content["train"][1]["HandstandPushups"].append("v_HandStandPushups_g09_c01")
    path = touch(tmp_path / "missing.json", json.dumps(content).encode())
    with pytest.raises(DataError, match=r"1 videos named in the vCLIMB split file"):
        list_ucf101(cfg("ucf101", root, split_file=path))


def test_vclimb_on_video_folder(tmp_path: Path) -> None:
    """vCLIMB's own layout: <path_frames>/<class>/<id>/ frame folders."""
    content = vclimb_content()
    for part in content.values():
        for task in part:
            for cls, ids in task.items():
                for video_id in ids:
                    touch(tmp_path / "frames" / cls / video_id / "frame1.jpg")
    split = touch(tmp_path / "split.json", json.dumps(content).encode())
    listing = list_video_folder(cfg("video-folder", tmp_path / "frames", split_file=split))
    assert listing.task_sizes == [2, 1] and (len(listing.train), len(listing.test)) == (12, 6)
    assert all(p.is_dir() for p, _ in listing.train)


# --- decoding real files -----------------------------------------------------------------------


def write_video(path: Path, frames: int = 16, size: int = 32, seed: int = 0) -> Path:
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_ucf101_decodes_real_videos(tmp_path: Path) -> None:
    counter = iter(range(1000))
    write_ucf101(tmp_path, groups=2, clips=1, writer=lambda p: write_video(p, seed=next(counter)))
    config = DataConfig(name="ucf101", root=tmp_path, frames=8)  # data.verify: quick
    pair = datasets.get("ucf101")(config, Preprocessing(32, augment=False), 0)
    assert pair.modality == "video" and pair.class_names[1] == "handstand pushups"
    assert (len(pair.train), len(pair.test)) == (3, 3) and pair.train.targets == [0, 1, 2]
    for split in (pair.train, pair.test):
        for i in range(len(split)):
            clip, label = split[i]
            assert clip.shape == (8, 3, 32, 32) and label == split.targets[i]
            assert 0.0 <= clip.min() and clip.max() <= 1.0 and clip.std() > 0.05
