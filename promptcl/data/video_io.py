"""Reading video clips: frames from files or frame folders, frame samplers, the clip dataset.

A video *source* is a ``Path``: a video file (any container PyAV reads: .avi, .mp4, .webm, .mkv,
...) or a folder of pre-extracted frame images (jpg/jpeg/png/bmp/webp, in file-name order, e.g.
``img_00001.jpg``). Clip datasets read a handful of frames (8 or 16) per item, so reading is
built around that:

- ``read_frames`` seeks instead of decoding from the start: for each group of wanted frames it
  seeks to the keyframe at or before the first of them and decodes forward only until the last,
  and it seeks again for the next group when the gap to it is longer than the longest keyframe
  interval seen in that file (a keyframe then lies in between), or than ``SEEK_GAP`` frames
  before one is known. When a demuxer's seek lands after the wanted frame (AVI with B-frames
  does), it seeks further back. Only the wanted frames are converted to RGB. Decoded frames are
  matched to frame indices by their timestamps (index = round((pts - first pts) x time_base x
  average_rate)); a wanted index that no frame carries (variable frame rate) takes the next
  decoded frame. Decoding and conversion run on one thread (``DECODE_THREADS``): loader workers
  are the parallelism. Each process remembers per file (path, size, mtime) its frame count,
  first timestamp and keyframe interval, so a file is probed once per worker.
- ``count_frames`` trusts the container: the stream's frame count when the header has one (AVI,
  MP4), else its duration x average rate (Matroska / WebM). Headers may over-count by a frame or
  two (B-frame delay, rounding), so wanted indices past the last decodable frame are clamped to
  it, within ``count_slack`` frames; a file that ends earlier than that is damaged (truncated)
  and raises ``DataError``, as does any file PyAV cannot open or decode. The message names the
  file and the fix, never a bare PyAV traceback.
- ``FrameSampler`` picks the frames of a clip: TSN segments or dense strided clips, at random
  positions for training (torch's global RNG, which PyTorch seeds per loader worker) and at
  evenly spaced positions for (multi-view) testing.
- ``VideoFileDataset`` decodes in ``__getitem__``, so decoding runs in the DataLoader workers;
  ``video_pair`` verifies the listed sources (``promptcl.data.verify``) and builds the train and
  test sets, the test set with ``data.test_clips`` x ``data.test_crops`` views per video.

PyAV (the ``video`` extra) is imported only when a video file is opened: frame folders need only
PIL.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from promptcl.config import DataConfig
from promptcl.data import verify
from promptcl.data.base import DatasetPair, Preprocessing
from promptcl.data.images import IMAGE_EXTENSIONS
from promptcl.errors import DataError

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

SamplerMode = Literal["segments", "dense"]

SEEK_GAP = 64  # frames: seek again rather than decode through a longer gap (keyframes unknown)
# Decoder threads per open file: loader workers already decode in parallel, and threads inside
# each of them oversubscribe the cores (FFmpeg's default slice threads were up to 5x slower here).
DECODE_THREADS = 1
_SCALER_THREADS = True  # whether this PyAV's to_ndarray takes ``threads``
_DURATION_TAG = re.compile(r"(\d+):(\d+):(\d+(?:\.\d+)?)")  # Matroska's per-track DURATION
_FIX = (
    "replace the file, or set data.verify: full to find every damaged file before training "
    "and data.on_bad_file: skip to leave them out"
)


class _Damaged(Exception):
    """A source that cannot be read; the message is the reason (without the path)."""


@dataclass(slots=True)
class _StreamFacts:
    """What opening and reading a video file taught: kept per process for the next read."""

    total: int  # frames, from the header
    origin: int  # pts of the first frame
    gop: int | None = None  # the longest keyframe interval seen, once two keyframes were


# (path, size, mtime_ns) -> facts; each loader worker keeps its own
_FACTS: dict[tuple[str, int, int], _StreamFacts] = {}


def count_slack(total: int) -> int:
    """Frames a header may over-count before a file that ends early counts as truncated."""
    return max(2, math.ceil(0.05 * total))


def _av() -> ModuleType:
    try:
        return importlib.import_module("av")
    except ImportError:
        raise DataError(
            "reading video files needs PyAV: pip install 'promptcl[video]' (or pip install av), "
            "or give folders of extracted frames instead"
        ) from None


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _natural_key(name: str) -> list:
    """Sort key that orders numbers by value: frame2.jpg before frame10.jpg (vCLIMB's frame
    folders number their frames without zero padding)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _frame_files(folder: Path) -> list[Path]:
    """The frame images of a frame folder, in natural order of their file names."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: _natural_key(p.name),
    )


def _to_tensor(arrays: Sequence[np.ndarray]) -> Tensor:
    """(H, W, 3) uint8 arrays -> one (T, 3, H, W) uint8 tensor, channels last in memory (resizing
    reads that layout fastest; ``.contiguous()`` gives the plain layout)."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _check_indices(indices: Sequence[int]) -> list[int]:
    wanted = [int(i) for i in indices]
    if not wanted or min(wanted) < 0:
        raise ValueError(f"frame indices must be a non-empty list of indices >= 0, got {wanted}")
    return wanted


def to_rgb(frame: VideoFrame) -> np.ndarray:
    """A decoded frame as an (H, W, 3) uint8 RGB array, converted on this thread only (FFmpeg's
    automatic scaler threads made a 320x240 frame 10-100x slower on a busy 2-core machine)."""
    global _SCALER_THREADS
    try:
        if _SCALER_THREADS:
            try:
                return frame.to_ndarray(format="rgb24", threads=1)
            except TypeError:  # PyAV before ``threads`` existed
                _SCALER_THREADS = False
        return frame.to_ndarray(format="rgb24")
    except Exception as err:
        raise _Damaged(f"a frame does not convert to RGB ({_reason(err)})") from err


# --- sources -----------------------------------------------------------------------------------


class VideoFile:
    """An open video file: ``total`` frames (from the header) and ``read(indices)``.

    ``decoded`` counts the frames decoded so far (tests and benchmarks read it). Use it as a
    context manager, or call ``close``. Raises ``_Damaged`` (reason only); ``open_video`` and the
    public functions turn it into a ``DataError`` that names the file. The frame count, the first
    timestamp and the keyframe interval of a file are remembered for its next opening.
    """

    def __init__(self, path: Path, seek_gap: int = SEEK_GAP):
        av = _av()
        self.path, self.seek_gap, self.decoded = Path(path), seek_gap, 0
        try:
            stat = self.path.stat()
        except OSError as err:
            raise _Damaged(f"it cannot be found or read ({_reason(err)})") from err
        try:
            self.container: InputContainer = av.open(str(path))
        except Exception as err:
            raise _Damaged(f"PyAV cannot open it ({_reason(err)})") from err
        try:
            if not self.container.streams.video:
                raise _Damaged("it holds no video stream")
            self.stream: VideoStream = self.container.streams.video[0]
            self.stream.codec_context.thread_count = DECODE_THREADS
            rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
            if not rate:
                raise _Damaged("its video stream has no frame rate")
            self.rate, self.time_base = Fraction(rate), Fraction(self.stream.time_base)
            key = (str(self.path), stat.st_size, stat.st_mtime_ns)
            if key not in _FACTS:
                _FACTS[key] = _StreamFacts(self._count(), self._first_pts())
        except BaseException:
            self.container.close()
            raise
        self.facts = _FACTS[key]
        self.total = self.facts.total
        self._frames_per_pts = float(self.time_base * self.rate)

    # the frame count -------------------------------------------------------------------------

    def _count(self) -> int:
        if self.stream.frames > 0:
            return int(self.stream.frames)
        seconds = self._duration()
        if seconds is not None and round(seconds * self.rate) > 0:
            return round(seconds * self.rate)
        try:  # no header count nor duration (raw streams): count the packets
            total = sum(1 for p in self.container.demux(self.stream) if p.size)
        except Exception as err:
            raise _Damaged(f"cannot count its frames ({_reason(err)})") from err
        if total == 0:
            raise _Damaged("its video stream holds no frames")
        return total

    def _duration(self) -> Fraction | None:
        """The video stream's duration in seconds: its own, Matroska's tag, or the container's."""
        if self.stream.duration:
            return self.stream.duration * self.time_base
        tag = _DURATION_TAG.fullmatch(self.stream.metadata.get("DURATION", "").strip())
        if tag:
            hours, minutes, seconds = tag.groups()
            return Fraction(int(hours) * 3600 + int(minutes) * 60) + Fraction(seconds)
        if self.container.duration:
            return Fraction(self.container.duration, 1_000_000)  # AV_TIME_BASE
        return None

    # timestamps ------------------------------------------------------------------------------

    def _first_pts(self) -> int:
        """The pts of the first frame: of the first packet (AVI with B-frames starts at 1), or the
        stream's start time when later (edit lists drop the frames before it)."""
        start = self.stream.start_time or 0
        try:
            self.container.seek(0, stream=self.stream, backward=True, any_frame=False)
            packet = next((p for p in self.container.demux(self.stream) if p.pts is not None), None)
        except Exception as err:
            raise _Damaged(f"cannot read its first packet ({_reason(err)})") from err
        return max(packet.pts, start) if packet is not None else start

    def _index(self, frame: VideoFrame) -> int:
        return round((frame.pts - self.facts.origin) * self._frames_per_pts)

    def _timestamp(self, index: int) -> int:
        return self.facts.origin + math.floor(index / (self.time_base * self.rate))

    # decoding --------------------------------------------------------------------------------

    def _seek(self, index: int) -> None:
        """Move to the keyframe at or before frame ``index``."""
        try:
            self.container.seek(
                self._timestamp(index), stream=self.stream, backward=True, any_frame=False
            )
        except Exception as err:
            raise _Damaged(f"seeking to frame {index} fails ({_reason(err)})") from err

    def _decode(self) -> Iterator[VideoFrame]:
        """Frames from the position of the last seek onward."""
        frames = self.container.decode(self.stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except Exception as err:  # PyAV's errors (InvalidDataError, ...)
                raise _Damaged(f"decoding fails ({_reason(err)})") from err
            self.decoded += 1
            yield frame

    def _frames_from(self, target: int) -> Iterator[tuple[int, VideoFrame]]:
        """Frames with their indices, from the keyframe at or before ``target`` to the end.

        Seeks to ``target``; when the demuxer lands after it (or past the end of a file shorter
        than its header says), seeks further back, down to the first frame.
        """
        back = 0
        while True:
            start = max(0, target - back)
            self._seek(start)
            frames = self._decode()
            first = next(frames, None)
            if first is not None and first.pts is None:
                yield from self._numbered_from_start()
                return
            if first is not None and (start == 0 or self._index(first) <= target):
                yield self._index(first), first
                for frame in frames:
                    if frame.pts is None:
                        raise _Damaged("a decoded frame has no timestamp")
                    yield self._index(frame), frame
                return
            if start == 0:
                return
            back = max(2 * back, self.facts.gop or self.seek_gap)

    def _numbered_from_start(self) -> Iterator[tuple[int, VideoFrame]]:
        """Every frame from the first, numbered in decoding order (streams without timestamps)."""
        self._seek(0)
        yield from enumerate(self._decode())

    def _gap(self) -> int:
        """Seek again when the next wanted frame is further than this from the last decoded one:
        a keyframe interval (a keyframe then lies between them), or ``seek_gap`` until one is
        known."""
        return self.facts.gop or self.seek_gap

    def read(self, indices: Sequence[int]) -> Tensor:
        """The frames at ``indices`` (any order, repeats allowed): uint8 (T, 3, H, W), RGB."""
        wanted = _check_indices(indices)
        pending = deque(sorted(set(wanted)))
        found: dict[int, np.ndarray] = {}
        frames: Iterator[tuple[int, VideoFrame]] | None = None
        position, last, last_key = -1, None, None
        while pending:
            if frames is None or pending[0] - position > self._gap():
                frames = self._frames_from(pending[0])
            for position, frame in frames:
                last = frame
                if frame.key_frame:
                    if last_key is not None and position > last_key:
                        self.facts.gop = max(self.facts.gop or 0, position - last_key)
                    last_key = position
                if position >= pending[0]:  # serves every wanted index up to its own
                    rgb = to_rgb(frame)
                    while pending and pending[0] <= position:
                        found[pending.popleft()] = rgb
                    if not pending or pending[0] - position > self._gap():
                        break
            else:  # the end of the stream
                break
            last_key = None  # a seek follows: keyframe intervals restart
        if pending:
            self._clamp(pending, found, last, position)
        return _to_tensor([found[i] for i in wanted])

    def _clamp(
        self, pending: deque[int], found: dict[int, np.ndarray], last: Any, position: int
    ) -> None:
        """Give the wanted indices past the end the last frame, unless the file ends too early."""
        if last is None:
            raise _Damaged(f"no frame decodes (its header counts {self.total} frames)")
        if position < self.total - 1 - count_slack(self.total):
            raise _Damaged(
                f"it ends at frame {position + 1} of the {self.total} its header counts "
                "(truncated?)"
            )
        rgb = to_rgb(last)
        while pending:
            found[pending.popleft()] = rgb

    def decode_all(self) -> int:
        """Decode every frame (``data.verify: full``); the number of frames that decoded."""
        self._seek(0)
        count = sum(1 for _ in self._decode())
        if count < self.total - count_slack(self.total):
            raise _Damaged(f"only {count} of the {self.total} frames its header counts decode")
        return count

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class FrameFolder:
    """A folder of extracted frame images; the same interface as ``VideoFile``."""

    def __init__(self, path: Path):
        self.path, self.decoded = Path(path), 0
        try:
            self.files = _frame_files(self.path)
        except OSError as err:
            raise _Damaged(f"cannot list the folder ({_reason(err)})") from err
        if not self.files:
            raise _Damaged(f"the folder holds no frame images ({', '.join(IMAGE_EXTENSIONS)})")
        self.total = len(self.files)

    def read(self, indices: Sequence[int]) -> Tensor:
        """The frames at ``indices`` (any order, repeats allowed): uint8 (T, 3, H, W), RGB."""
        wanted = _check_indices(indices)
        found = {}
        for index in sorted(set(wanted)):
            file = self.files[min(index, self.total - 1)]
            try:
                with Image.open(file) as image:
                    found[index] = np.asarray(image.convert("RGB"))
            except Exception as err:
                raise _Damaged(f"cannot read the frame {file.name} ({_reason(err)})") from err
            self.decoded += 1
        sizes = {a.shape for a in found.values()}
        if len(sizes) > 1:
            raise _Damaged(f"its frames differ in size: {sorted(sizes)}")
        return _to_tensor([found[i] for i in wanted])

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameFolder:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        pass


def _data_error(source: Path, err: _Damaged) -> DataError:
    kind = "frame folder" if source.is_dir() else "video"
    return DataError(f"cannot read {kind} {source}: {err}\n  {_FIX}")


class _Open:
    """``open_video``'s context: every failure inside it becomes a DataError naming the source."""

    def __init__(self, source: Path, seek_gap: int):
        self.source = Path(source)
        try:
            if self.source.is_dir():
                self.video: VideoFile | FrameFolder = FrameFolder(self.source)
            else:
                self.video = VideoFile(self.source, seek_gap)
        except _Damaged as err:
            raise _data_error(self.source, err) from err.__cause__

    def __enter__(self) -> VideoFile | FrameFolder:
        return self.video

    def __exit__(self, kind: Any, err: Any, traceback: Any) -> None:
        self.video.close()
        if isinstance(err, _Damaged):
            raise _data_error(self.source, err) from err.__cause__


def open_video(source: Path, seek_gap: int = SEEK_GAP) -> _Open:
    """Open a video file or frame folder: ``with open_video(p) as v: v.total, v.read([...])``.

    Any failure to open or decode raises a ``DataError`` naming ``source`` and the fix.
    """
    return _Open(source, seek_gap)


def count_frames(source: Path) -> int:
    """Frames of a video file (header count, else duration x rate) or images of a frame folder."""
    with open_video(source) as video:
        return video.total


def read_frames(source: Path, indices: Sequence[int]) -> Tensor:
    """The frames at ``indices`` of a video file or frame folder: uint8 (T, 3, H, W), RGB.

    Indices may repeat and come in any order; indices past the last decodable frame get the last
    frame (see the module notes).
    """
    with open_video(source) as video:
        return video.read(indices)


def source_problem(path: Path, full: bool = False) -> str | None:
    """Why ``path`` cannot be read as a video source, or None (``data.verify`` for videos).

    A video file (quick): open it, find a video stream, count its frames and decode the last
    frame a sampler may pick (a truncated file fails here); full: decode every frame. A frame
    folder: check the first and last image (quick) or every image (full) as image files.
    """
    try:
        if path.is_dir():
            files = FrameFolder(path).files
            for file in files if full else dict.fromkeys([files[0], files[-1]]):
                problem = verify.image_problem(file, full)
                if problem is not None:
                    return f"frame {file.name}: {problem}"
            return None
        with VideoFile(path) as video:
            if full:
                video.decode_all()
            else:
                video.read([video.total - 1])
    except _Damaged as err:
        return str(err)
    except DataError:
        raise  # PyAV missing: every file would fail the same way
    except Exception as err:  # PyAV raises many kinds (InvalidDataError, EOFError, ...)
        return f"decoding fails ({_reason(err)})"
    return None


# --- frame samplers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSampler:
    """Which frames make a clip of ``frames`` frames (T) from a video of ``total`` frames.

    ``segments`` (TSN): [0, total) is cut into T segments of equal length (up to a frame; segment
    s is [s x total // T, (s + 1) x total // T)) and one frame is taken from each: a random one
    for training, the centre for testing. Videos shorter than T repeat frames (in order). ``dense``: T consecutive frames ``stride`` apart (a span of (T - 1) x stride + 1
    frames), starting at random for training and centred for testing; in a video shorter than
    the span the clip starts at 0 and indices past the end are clamped to the last frame (it
    repeats), as in SlowFast.

    Multi-view testing (``clips`` > 1) places clip ``c`` of C evenly: segments take the frame at
    offset (c + 0.5) / C inside every segment (TSN / SlowFast multi-clip testing); dense clips
    start at c / (C - 1) of the free range [0, total - span].
    """

    frames: int
    mode: SamplerMode = "segments"
    stride: int = 1

    def __post_init__(self) -> None:
        if self.frames < 1 or self.stride < 1:
            raise ValueError(f"frames and stride must be >= 1, got {self.frames}, {self.stride}")
        if self.mode not in ("segments", "dense"):
            raise ValueError(f"frame sampler mode must be 'segments' or 'dense', got {self.mode!r}")

    @classmethod
    def from_config(cls, cfg: DataConfig) -> FrameSampler:
        return cls(cfg.frames, cfg.frame_sampler, cfg.frame_stride)

    @property
    def span(self) -> int:
        """Frames from the first to the last of a dense clip."""
        return (self.frames - 1) * self.stride + 1

    def indices(self, total: int, random: bool = False, clip: int = 0, clips: int = 1) -> list[int]:
        """The T frame indices of one clip, in time order, inside [0, total).

        ``random`` for training; otherwise clip ``clip`` of ``clips`` evenly placed test clips.
        """
        if total < 1:
            raise ValueError(f"a video needs at least one frame, got total={total}")
        if not 0 <= clip < clips:
            raise ValueError(f"clip {clip} is not one of {clips} clips")
        if self.mode == "segments":
            return self._segments(total, random, clip, clips)
        return self._dense(total, random, clip, clips)

    def views(self, total: int, clips: int = 1) -> list[list[int]]:
        """The indices of ``clips`` evenly placed test clips."""
        return [self.indices(total, clip=c, clips=clips) for c in range(clips)]

    def _segments(self, total: int, random: bool, clip: int, clips: int) -> list[int]:
        t = self.frames
        bounds = [s * total // t for s in range(t + 1)]  # segment s: [bounds[s], bounds[s + 1])
        offsets = torch.rand(t).tolist() if random else [(clip + 0.5) / clips] * t
        indices = []
        for s, u in enumerate(offsets):
            length = bounds[s + 1] - bounds[s]
            if random or length == 0:
                offset = math.floor(u * length)
            else:  # floor((clip + 0.5) / clips x length), exactly
                offset = (2 * clip + 1) * length // (2 * clips)
            indices.append(min(bounds[s] + offset, total - 1))
        return indices

    def _dense(self, total: int, random: bool, clip: int, clips: int) -> list[int]:
        free = max(total - self.span, 0)
        if random:
            start = int(torch.randint(free + 1, ()).item())
        elif clips == 1:
            start = free // 2
        else:
            start = (2 * clip * free + clips - 1) // (2 * (clips - 1))  # round(clip * free / (C-1))
        return [min(start + i * self.stride, total - 1) for i in range(self.frames)]


# --- the dataset -------------------------------------------------------------------------------


def three_crops(clip: Tensor, size: int | None = None) -> list[Tensor]:
    """The standard 3-crop test views of a clip (T, C, H, W): the short side resized to ``size``
    (kept when None), then square crops at the start, centre and end of the long side (left /
    centre / right for landscape, top / centre / bottom for portrait)."""
    if size is not None and min(clip.shape[-2:]) != size:
        clip = TF.resize(clip, size, antialias=True)
    height, width = clip.shape[-2:]
    side = min(height, width)
    starts = [0, (max(height, width) - side) // 2, max(height, width) - side]
    if width >= height:
        return [clip[..., :, s : s + side] for s in starts]
    return [clip[..., s : s + side, :] for s in starts]


class VideoFileDataset(Dataset):
    """Videos listed by source (file or frame folder), decoded when an item is read.

    An item is ``(clip, label)``: ``transform`` applied to the uint8 frames (T, 3, H, W) of one
    clip (``random`` sampling for training), or, with ``clips`` x ``crops`` > 1 views (testing),
    the views stacked (V, T, C, size, size), clip-major (clip 0 crop 0, clip 0 crop 1, ...).
    ``crops`` is 1 (the transform's own centre crop) or 3 (``three_crops`` at ``size``).
    """

    def __init__(
        self,
        sources: Sequence[Path],
        targets: Sequence[int],
        sampler: FrameSampler,
        transform: v2.Transform | None = None,
        random: bool = False,
        clips: int = 1,
        crops: int = 1,
        size: int | None = None,
    ):
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
        if clips < 1 or crops not in (1, 3):
            raise ValueError(f"clips must be >= 1 and crops 1 or 3, got {clips}, {crops}")
        if random and clips * crops > 1:
            raise ValueError("multi-view clips and crops are for testing (random=False)")
        self.paths = [Path(s) for s in sources]
        self.targets = [int(t) for t in targets]
        self.sampler, self.transform, self.random = sampler, transform, random
        self.clips, self.crops, self.size = clips, crops, size

    @property
    def views(self) -> int:
        return self.clips * self.crops

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        with open_video(self.paths[index]) as video:
            if self.random:
                clip_indices = [self.sampler.indices(video.total, random=True)]
            else:
                clip_indices = self.sampler.views(video.total, self.clips)
            frames = video.read([i for clip in clip_indices for i in clip])  # (V_t * T, 3, H, W)
        views = []
        for clip in frames.split(self.sampler.frames):
            for view in three_crops(clip, self.size) if self.crops == 3 else [clip]:
                views.append(self.transform(view) if self.transform is not None else view)
        if len(views) == 1:
            return views[0], self.targets[index]
        return torch.stack(views), self.targets[index]  # (V, T, C, size, size)


def video_pair(
    name: str,
    cfg: DataConfig,
    train: list[tuple[Path, int]],
    test: list[tuple[Path, int]],
    class_names: list[str],
    pre: Preprocessing,
    can_delete: bool = True,
    default_tasks: int = 10,
    flips: bool = True,
) -> DatasetPair:
    """The DatasetPair of listed video sources, after checking them (``data.verify``,
    ``data.on_bad_file``; damaged sources are listed in ``skipped``).

    Train: one clip per item, sampled at random when ``pre.augment`` (deterministic in the plain
    view, ``pre.plain()``); test: ``cfg.test_clips`` x ``cfg.test_crops`` views per item.
    ``flips=False`` for datasets whose labels a mirror image changes (Something-Something:
    "pushing something from left to right").
    """
    train, test, skipped = verify.verify_splits(
        name, train, test, class_names, cfg.verify, cfg.on_bad_file, can_delete, kind="video"
    )
    transforms = pre.transforms("video", flips=flips)
    sampler = FrameSampler.from_config(cfg)
    train_set = VideoFileDataset(
        [p for p, _ in train],
        [y for _, y in train],
        sampler,
        transforms.train,
        random=pre.augment,
        size=pre.image_size,
    )
    test_set = VideoFileDataset(
        [p for p, _ in test],
        [y for _, y in test],
        sampler,
        transforms.test,
        clips=cfg.test_clips,
        crops=cfg.test_crops,
        size=pre.image_size,
    )
    return DatasetPair(
        train=train_set,
        test=test_set,
        class_names=class_names,
        default_tasks=default_tasks,
        modality="video",
        skipped=skipped,
    )
