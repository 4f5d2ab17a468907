"""Clips per second of ``read_frames`` (seek, then decode forward) against decoding whole videos.

Writes synthetic videos with PyAV (moving gradients with noise, 320x240, a keyframe every
``--gop`` frames) in the codecs given, then reads 8-frame TSN clips (random segments, as in
training) from them: with ``read_frames``, and with the floor of decoding every frame from the
start and converting only the 8 wanted ones to RGB (``--naive`` adds decoding and converting
every frame, as ``torchvision.io.read_video`` does). Each is timed in this process and through a
DataLoader with ``--workers`` workers; the ratio is ``read_frames`` over the floor, measured in
this run, and "decoded" is the mean number of frames decoded per clip.

    python benchmarks/video_decode.py [--frames 300 1200] [--codecs mpeg4 h264] [--clips 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from promptcl.data.video_io import DECODE_THREADS, FrameSampler, count_frames, open_video, to_rgb

Reader = Callable[[Path, list[int]], int]  # reads a clip; returns the frames it decoded

CONTAINERS = {"mpeg4": "avi", "h264": "mp4", "libx264": "mp4", "libvpx-vp9": "webm"}


def write_video(path: Path, codec: str, frames: int, gop: int, seed: int = 0) -> Path:
    """A ``frames``-long 320x240 clip at 25 fps: a moving gradient with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.gop_size = gop
        for k in range(frames):
            base = (x + 3 * k) % 256, (y + 2 * k) % 256, (x + y + k) % 256
            noise = rng.integers(0, 24, (240, 320, 3))
            rgb = (np.stack(base, -1) + noise).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def seek_and_decode(path: Path, indices: Sequence[int]) -> int:
    """``read_frames``, counting the frames it decodes."""
    with open_video(path) as video:
        video.read(indices)
        return video.decoded


def decode_all(path: Path, indices: Sequence[int], convert_all: bool) -> int:
    """Decode every frame from the start; convert the wanted ones (or all) to RGB, with the
    decoder and converter settings of ``read_frames``."""
    wanted, kept = set(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = DECODE_THREADS  # as read_frames decodes
        for k, frame in enumerate(container.decode(stream)):
            if convert_all or k in wanted:
                kept[k] = to_rgb(frame)
    last = max(kept)
    torch.from_numpy(np.stack([kept[min(i, last)] for i in indices])).permute(0, 3, 1, 2)
    return k + 1


class Clips(Dataset):
    """``n`` random TSN clips drawn from ``videos`` in turn, read by ``read``."""

    def __init__(self, videos: list[Path], n: int, read: Reader):
        self.videos, self.n, self.read = videos, n, read
        self.totals = [count_frames(v) for v in videos]
        self.sampler = FrameSampler(8, "segments")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        k = index % len(self.videos)
        return self.read(self.videos[k], self.sampler.indices(self.totals[k], random=True))


def clips_per_second(dataset: Clips, workers: int) -> tuple[float, float]:
    """Clips/s and mean frames decoded per clip over ``dataset`` (the first clip not timed)."""
    iterator = iter(DataLoader(dataset, batch_size=None, num_workers=workers, shuffle=False))
    next(iterator)  # starts the workers; warms the file cache
    start = time.perf_counter()
    decoded = [int(d) for d in iterator]
    return len(decoded) / (time.perf_counter() - start), sum(decoded) / len(decoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 1200])
    parser.add_argument("--codecs", nargs="+", default=["mpeg4", "h264"])
    parser.add_argument("--gop", type=int, default=40, help="frames between keyframes")
    parser.add_argument("--videos", type=int, default=4, help="videos of each kind")
    parser.add_argument("--clips", type=int, default=32, help="clips timed per measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--naive", action="store_true", help="also decode and convert all")
    args = parser.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    readers: dict[str, Reader] = {
        "read_frames": seek_and_decode,
        "decode all, convert 8 (floor)": lambda p, i: decode_all(p, i, convert_all=False),
    }
    if args.naive:
        readers["decode all, convert all"] = lambda p, i: decode_all(p, i, convert_all=True)
    print(
        f"| video | reader | decoded | clips/s, 1 process | clips/s, {args.workers} workers "
        "| vs floor, 1 process | vs floor, workers |\n|---|---|---|---|---|---|---|"
    )
    for codec in args.codecs:
        for frames in args.frames:
            suffix = CONTAINERS.get(codec, "mkv")
            videos = [
                write_video(tmp / f"{codec}-{frames}-{v}.{suffix}", codec, frames, args.gop, v)
                for v in range(args.videos)
            ]
            workers = (0, args.workers)
            rates = {}
            for name, read in readers.items():
                dataset = Clips(videos, args.clips, read)
                (single, decoded), (pool, _) = (clips_per_second(dataset, w) for w in workers)
                rates[name] = decoded, single, pool
            _, floor, floor_pool = rates["decode all, convert 8 (floor)"]
            for name, (decoded, single, pool) in rates.items():
                print(
                    f"| {codec} .{suffix}, {frames} frames | {name} | {decoded:.0f} "
                    f"| {single:.1f} | {pool:.1f} | {single / floor:.2f}x "
                    f"| {pool / floor_pool:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
