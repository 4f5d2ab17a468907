"""Video reading: exact frames by index from files and frame folders, seeking, damaged files,
frame samplers, multi-view test items, and multi-view averaging in evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from promptcl.config import DataConfig
from promptcl.data.base import Preprocessing
from promptcl.data.video_io import (
    FrameSampler,
    VideoFileDataset,
    count_frames,
    open_video,
    read_frames,
    three_crops,
    video_pair,
)
from promptcl.engine.evaluate import predict
from promptcl.errors import DataError

av = pytest.importorskip("av")

FRAMES, HEIGHT, WIDTH = 120, 24, 32


def colour(k: int) -> tuple[int, int, int]:
    """The flat RGB colour of frame k (distinct for k < 128)."""
    return 2 * k % 256, 255 - 2 * k % 256, 37 * k % 256


def expected(indices: list[int]) -> torch.Tensor:
    """uint8 (T, 3, H, W) of the flat frames at ``indices``."""
    rgb = torch.tensor([colour(k) for k in indices], dtype=torch.uint8)
    return rgb[:, :, None, None].expand(-1, 3, HEIGHT, WIDTH).contiguous()


def write_video(path: Path, frames: int = FRAMES, gop: int = 10) -> Path:
    """A lossless (FFV1) clip whose frame k is the flat ``colour(k)``, a keyframe every ``gop``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "bgr0"
        stream.codec_context.gop_size = gop
        for k in range(frames):
            rgb = np.full((HEIGHT, WIDTH, 3), colour(k), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frames(folder: Path, frames: int = FRAMES) -> Path:
    folder.mkdir(parents=True)
    for k in range(frames):
        image = Image.fromarray(np.full((HEIGHT, WIDTH, 3), colour(k), np.uint8))
        image.save(folder / f"img_{k + 1:05d}.png")
    return folder


def truncate(path: Path, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "mkv": write_video(root / "clip.mkv"),  # no frame count in the header: from duration
        "avi": write_video(root / "clip.avi"),  # a frame count in the header
        "frames": write_frames(root / "clip_frames"),
    }


# --- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mkv", "avi", "frames"])
def test_read_frames_by_index(videos: dict[str, Path], kind: str) -> None:
    source = videos[kind]
    assert count_frames(source) == FRAMES
    indices = [5, 0, 119, 5, 60, 3, 60, 1]  # repeated, out of order, up to the last frame
    assert torch.equal(read_frames(source, indices), expected(indices))


def test_frame_folder_reads_as_the_video(videos: dict[str, Path]) -> None:
    indices = [7, 90, 33, 33, 118]
    assert torch.equal(read_frames(videos["frames"], indices), read_frames(videos["mkv"], indices))


def test_unpadded_frame_numbers_read_in_numeric_order(tmp_path: Path) -> None:
    folder = tmp_path / "v_x"  # vCLIMB's layout: frame1.jpg ... frame12.jpg, no zero padding
    folder.mkdir()
    for k in range(12):
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), colour(k), np.uint8)).save(
            folder / f"frame{k + 1}.png"
        )
    assert torch.equal(read_frames(folder, [1, 9, 10, 11]), expected([1, 9, 10, 11]))


@pytest.mark.parametrize("kind", ["mkv", "avi"])
def test_far_frames_are_reached_by_seeking(videos: dict[str, Path], kind: str) -> None:
    with open_video(videos[kind]) as video:
        frames = video.read([112, 117])
        assert video.decoded <= 10  # from the keyframe at 110, not from the start
    assert torch.equal(frames, expected([112, 117]))
    with open_video(videos[kind]) as video:
        frames = video.read([2, 100, 101])  # two groups far apart: decode, seek, decode
        assert video.decoded <= 10
    assert torch.equal(frames, expected([2, 100, 101]))


def test_indices_past_the_end_take_the_last_frame(videos: dict[str, Path]) -> None:
    # a header may over-count by a frame or two: those indices get the last decoded frame
    assert torch.equal(read_frames(videos["mkv"], [118, 120, 121]), expected([118, 119, 119]))


def test_b_frames_in_avi_keep_their_indices(tmp_path: Path) -> None:
    """MPEG-4 with B-frames in AVI numbers its frames from pts 1: the index must not shift."""
    path = tmp_path / "bframes.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size, stream.codec_context.max_b_frames = 12, 2
        stream.codec_context.qscale = 1
        for k in range(60):
            grey = np.full((HEIGHT, WIDTH, 3), 4 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for indices in ([0, 30, 59, 45, 13], [45], [46, 47], [59]):  # the demuxer's seeks may land
        levels = read_frames(path, indices).float().mean(dim=(1, 2, 3)) / 4  # after the target
        assert (levels - torch.tensor(indices, dtype=torch.float)).abs().max() < 0.5


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_truncated_file_raises_a_data_error(tmp_path: Path, suffix: str) -> None:
    cut = truncate(write_video(tmp_path / f"good{suffix}"), tmp_path / f"cut{suffix}")
    with pytest.raises(DataError) as err:
        read_frames(cut, [110])
    message = str(err.value)
    assert f"cannot read video {cut}" in message
    assert "data.verify: full" in message and "data.on_bad_file: skip" in message
    assert not isinstance(err.value, av.FFmpegError)


def test_unreadable_sources_name_themselves(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    with pytest.raises(DataError, match=f"cannot read video {junk}"):
        count_frames(junk)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DataError, match=f"cannot read frame folder {empty}: .*no frame images"):
        read_frames(empty, [0])


# --- verification ------------------------------------------------------------------------------


def listed(tmp_path: Path, bad: Path) -> tuple[list, list]:
    good = [write_video(tmp_path / f"v{i}.mkv", frames=30, gop=10) for i in range(4)]
    train = [(good[0], 0), (good[1], 1), (bad, 1)]
    test = [(good[2], 0), (good[3], 1)]
    return train, test


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_verification_names_a_truncated_video(tmp_path: Path, mode: str) -> None:
    cut = truncate(write_video(tmp_path / "long.mkv"), tmp_path / "cut.mkv")
    train, test = listed(tmp_path, cut)
    with pytest.raises(DataError) as err:
        video_pair("ucf101", DataConfig(verify=mode), train, test, ["a", "b"], Preprocessing(16))
    message = str(err.value)
    assert f"1 of 5 video files cannot be read (data.verify: {mode})" in message
    assert str(cut) in message and message.count(str(tmp_path)) == 1


def test_skip_leaves_a_damaged_video_out(tmp_path: Path) -> None:
    cut = truncate(write_video(tmp_path / "long.avi"), tmp_path / "cut.avi")
    train, test = listed(tmp_path, cut)
    cfg = DataConfig(on_bad_file="skip")
    with pytest.warns(UserWarning, match="left out 1 damaged video files"):
        pair = video_pair("ucf101", cfg, train, test, ["a", "b"], Preprocessing(16))
    assert pair.skipped == [str(cut)] and pair.modality == "video"
    assert pair.train.paths == [train[0][0], train[1][0]] and pair.train.targets == [0, 1]
    assert len(pair.test) == 2


def test_verification_checks_frame_folders(tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "frames", frames=10)
    (folder / "img_00010.png").write_bytes(b"\x89PNG broken")
    train, test = listed(tmp_path, folder)
    with pytest.raises(DataError, match="img_00010.png") as err:
        video_pair("hmdb51", DataConfig(), train, test, ["a", "b"], Preprocessing(16))
    assert str(folder) in str(err.value)


# --- samplers ----------------------------------------------------------------------------------


def test_segment_sampler() -> None:
    sampler = FrameSampler(8, "segments")
    assert sampler.indices(100) == [6, 18, 31, 43, 56, 68, 81, 93]  # segment centres
    torch.manual_seed(0)
    draws = [sampler.indices(100, random=True) for _ in range(50)]
    bounds = [0, 12, 25, 37, 50, 62, 75, 87, 100]  # segment s: [bounds[s], bounds[s + 1])
    for draw in draws:  # one frame in each segment, in order
        assert all(bounds[s] <= i < bounds[s + 1] for s, i in enumerate(draw))
    assert {i - bounds[s] for draw in draws for s, i in enumerate(draw)} == set(range(13))
    assert len({tuple(d) for d in draws}) == 50
    torch.manual_seed(0)
    assert [sampler.indices(100, random=True) for _ in range(50)] == draws  # seeded: repeats
    short = sampler.indices(3, random=True)  # fewer frames than segments: repeats, in order
    assert short == sorted(short) and set(short) <= {0, 1, 2}


def test_dense_sampler() -> None:
    sampler = FrameSampler(4, "dense", stride=3)
    assert sampler.span == 10 and sampler.indices(100) == [45, 48, 51, 54]  # centred
    torch.manual_seed(0)
    starts = set()
    for _ in range(30):
        clip = sampler.indices(100, random=True)
        assert np.diff(clip).tolist() == [3, 3, 3] and 0 <= clip[0] <= 90
        starts.add(clip[0])
    assert len(starts) > 10
    assert sampler.indices(5) == [0, 3, 4, 4]  # shorter than the span: clamped to the last frame


def test_multi_view_clips_are_evenly_spread() -> None:
    assert FrameSampler(3).views(90, clips=3) == [[5, 35, 65], [15, 45, 75], [25, 55, 85]]
    assert FrameSampler(4, "dense", 2).views(107, clips=3) == [
        [0, 2, 4, 6],
        [50, 52, 54, 56],
        [100, 102, 104, 106],
    ]
    assert FrameSampler(3).views(90, clips=1) == [FrameSampler(3).indices(90)]


def test_three_crops() -> None:
    clip = torch.arange(WIDTH, dtype=torch.uint8).expand(2, 3, HEIGHT, WIDTH).contiguous()
    views = three_crops(clip)
    assert [v.shape for v in views] == [(2, 3, HEIGHT, HEIGHT)] * 3
    assert [int(v[0, 0, 0, 0]) for v in views] == [0, 4, 8]  # left, centre, right
    resized = three_crops(clip, 12)
    assert [v.shape for v in resized] == [(2, 3, 12, 12)] * 3
    assert len({v.float().mean().item() for v in resized}) == 3
    portrait = three_crops(clip.transpose(-1, -2).contiguous())  # 32 high, 24 wide
    assert [v.shape for v in portrait] == [(2, 3, HEIGHT, HEIGHT)] * 3
    assert [int(v[0, 0, 0, 0]) for v in portrait] == [0, 4, 8]  # top, centre, bottom


# --- the dataset -------------------------------------------------------------------------------


def test_video_pair_items(videos: dict[str, Path]) -> None:
    items = [(videos["mkv"], 0), (videos["frames"], 1)]
    cfg = DataConfig(frames=4, test_clips=2, test_crops=3)
    pair = video_pair("ucf101", cfg, items, items, ["a", "b"], Preprocessing(16))
    clip, label = pair.train[1]
    assert clip.shape == (4, 3, 16, 16) and clip.dtype == torch.float32 and label == 1
    assert 0 <= clip.min() and clip.max() <= 1
    views, label = pair.test[0]
    assert views.shape == (6, 4, 3, 16, 16) and views.dtype == torch.float32 and label == 0
    assert pair.train.random and not pair.test.random
    plain = video_pair("ucf101", cfg, items, items, ["a", "b"], Preprocessing(16).plain())
    assert not plain.train.random and plain.train.views == 1
    assert torch.equal(plain.train[0][0], plain.train[0][0])  # deterministic

    def flipping(pair) -> bool:
        return any(isinstance(t, v2.RandomHorizontalFlip) for t in pair.train.transform.transforms)

    assert flipping(pair)
    assert not flipping(
        video_pair("ssv2", cfg, items, items, ["a", "b"], Preprocessing(16), flips=False)
    )


def test_test_views_are_clip_major(videos: dict[str, Path]) -> None:
    sampler = FrameSampler(3)
    dataset = VideoFileDataset([videos["avi"]], [0], sampler, clips=2, crops=3)
    views, _ = dataset[0]  # raw uint8 crops (no transform)
    assert views.shape == (6, 3, 3, HEIGHT, HEIGHT)
    for v in range(6):
        clip = sampler.indices(FRAMES, clip=v // 3, clips=2)
        assert torch.equal(views[v], expected(clip)[..., :HEIGHT])


# --- multi-view evaluation ---------------------------------------------------------------------


class Views(torch.utils.data.Dataset):
    """Items whose V views each hold, as pixels, the logits a fake method returns for them."""

    def __init__(self, logits: list[list[list[float]]], labels: list[int]):
        self.x = torch.tensor(logits)[:, :, None, :, None, None]  # (N, V, T=1, C, 1, 1)
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.x[index], self.targets[index]


def test_predict_averages_the_views() -> None:
    # first view says class 0, the mean of the three says class 1; the third class is unseen
    logits = [[[3.0, 0.0, 9.0], [0.0, 2.0, 9.0], [0.0, 2.0, 9.0]], [[0.0, 1.0, 0.0]] * 3]
    dataset = Views(logits, [1, 1])
    calls = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return x.flatten(1)  # (B V, C): each view's logits

    preds, targets = predict(predict_fn, dataset, 2, 4, seed=0, device=torch.device("cpu"))
    assert preds.tolist() == [1, 1] and targets.tolist() == [1, 1]
    assert calls == [(6, 1, 3, 1, 1)]  # all views of the batch in one call
    first = Views([[views[0]] for views in logits], [1, 1])  # one view: 5-dim batches
    first.x = first.x[:, 0]
    preds, _ = predict(predict_fn, first, 2, 4, seed=0, device=torch.device("cpu"))
    assert sorted(preds.tolist()) == [0, 1]
