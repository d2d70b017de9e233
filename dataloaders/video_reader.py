"""Decoding the sampled frames of one video file.

`VideoReader.read(path, train=...)` returns uint8 frames `[T, 3, S, S]` and a mask `[T]`
(1 = real frame). Which frames: T spread over the whole video (`sample_frame_indices`), or with a
frame rate the frames CLIP4Clip's extractor takes (`framerate_frame_indices`). Only the sampled
frames are converted to RGB; the resize (short side to S, bicubic, antialiased) and the centre crop
run on uint8. Normalisation is left to the model (`modules.clip.normalize_video`, on the
accelerator): uint8 is 4x less host work and host-to-device transfer.

`VideoReader.read_windows(path, segment, stride)` reads a long video as overlapping windows
(`plan_windows`), each sampled as `read` samples a whole clip, in one sequential pass of the
decoder (PyAV) over the file: no seek per window, and only the frames of the windows still open
are held. `read_frames(path, indices)` reads given frames (the search page).

Decoder objects are created per call, inside whichever process reads (a DataLoader worker):
decord's reader must never be created in the parent before the workers fork (it deadlocks),
so `decord` is also imported lazily.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("decord", "pyav")
# (sampled frame indices, usable frames of the file) -> the frame indices to decode instead.
FrameChoice = Callable[[list[int], int], list[int]]
# (frames in the file, frames per second) -> the frame indices to decode.
_Pick = Callable[[int, float], list[int]]


class VideoReadError(RuntimeError):
    """A video file exists but cannot be used; `reason` is a short human-readable cause."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def sample_frame_indices(num_video_frames: int, num_samples: int, random_offsets: bool,
                         rng: random.Random | None = None) -> list[int]:
    """Frame indices to decode: one per equal segment, or every frame of a short video.

    With `num_video_frames > num_samples` the video is split into `num_samples` segments
    `[i*n//T, (i+1)*n//T)`; `random_offsets` picks a random frame in each (TSN, training),
    otherwise the segment centre (deterministic, evaluation). A video with at most
    `num_samples` frames gives all of them (the caller masks the rest).
    """
    n, t = num_video_frames, num_samples
    if n <= t:
        return list(range(n))
    rng = rng or random
    indices = []
    for i in range(t):
        start, end = i * n // t, (i + 1) * n // t
        indices.append(rng.randrange(start, end) if random_offsets else (start + end - 1) // 2)
    return indices


def framerate_frame_indices(num_video_frames: int, fps: float, framerate: int, num_samples: int,
                            slice_framepos: int, random_offsets: bool,
                            rng: random.Random | None = None) -> list[int]:
    """Frame indices as CLIP4Clip's extractor picks them at `framerate` frames per second.

    The rate is truncated to an integer F (at least 1) and the video read as seconds of F frames:
    in each second the first `framerate` frames at multiples of `F // framerate` (every frame for
    `framerate` 0, or when F < `framerate`, where the reference fails). When more than
    `num_samples` (T) frames result, `slice_framepos` keeps the first T (0), the last T (1) or
    T spread evenly, `linspace` rounded down (2). `random_offsets` (training) moves each kept
    frame to a random one among the `F // framerate` frames it stands for. Indices are increasing.
    """
    n, per_second = num_video_frames, max(1, int(fps))
    step = max(1, per_second // framerate) if framerate > 0 else 1
    offsets = range(0, per_second, step)[:framerate or per_second]
    indices = [second + offset for second in range(0, n, per_second) for offset in offsets if second + offset < n]
    if len(indices) > num_samples:
        if slice_framepos == 0:
            indices = indices[:num_samples]
        elif slice_framepos == 1:
            indices = indices[-num_samples:]
        else:
            indices = [indices[i] for i in np.linspace(0, len(indices) - 1, num_samples).astype(int)]
    if random_offsets:
        rng = rng or random
        indices = [rng.randrange(index, min(index + step, n)) for index in indices]
    return indices


def plan_windows(num_frames: int, fps: float, segment: float, stride: float) -> list[tuple[int, int]]:
    """Frame ranges `[start, end)` of the windows of a video of `num_frames` frames at `fps`:
    `segment` seconds long, one every `stride` seconds, plus a last one ending at the last frame
    when the stride leaves a tail, so every window is a full segment. A video no longer than a
    segment, or `segment` 0, is one window of all its frames."""
    length = round(segment * fps)
    if segment <= 0 or fps <= 0 or num_frames <= length:
        return [(0, num_frames)]
    step = max(1, round(stride * fps))
    starts = list(range(0, num_frames - length + 1, step))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)
    return [(start, start + length) for start in starts]


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `[T, 3, H, W]` -> uint8 `[T, 3, size, size]`: short side to `size` (bicubic, antialiased), centre crop."""
    height, width = frames.shape[-2:]
    if min(height, width) != size:
        scale = size / min(height, width)
        new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
        frames = F.interpolate(frames.float(), size=new_size, mode="bicubic", antialias=True, align_corners=False)
        frames = frames.round_().clamp_(0, 255).to(torch.uint8)
        height, width = new_size
    top, left = (height - size) // 2, (width - size) // 2
    return frames[..., top:top + size, left:left + size]


@dataclass
class Window:
    """One window of a video as `read_windows` gives it: its `number` in the file's plan, its frame
    range [`start`, `end`) at `fps` frames per second, uint8 `video [T, 3, S, S]`, `mask [T]` and the
    source index of each real frame (`indices`, as `read_with_indices`)."""
    number: int
    start: int
    end: int
    fps: float
    video: torch.Tensor
    mask: torch.Tensor
    indices: list[int]


class VideoReader:
    """Reads `num_frames` sampled frames of a video file as uint8 `[T, 3, S, S]` + mask `[T]`.

    Args:
        backend: "decord" (random access with `get_batch`; a file decord fails on is retried
            with PyAV) or "pyav" (sequential decode up to the last sampled frame; converts only
            the sampled frames).
        num_frames: T, frames per video (`TempMeConfig.num_input_frames` of the flags).
        image_size: S, output side after resize + centre crop.
        max_seconds: read only the first N seconds of each video (None: all of it).
        framerate: frames per second as CLIP4Clip samples them (`framerate_frame_indices`), or
            None: T frames spread over the whole video (`sample_frame_indices`).
        slice_framepos: with `framerate`, which T of more sampled frames are kept.
    """

    def __init__(self, *, backend: str = "decord", num_frames: int, image_size: int,
                 max_seconds: float | None = None, framerate: int | None = None, slice_framepos: int = 2):
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.num_frames = num_frames
        self.image_size = image_size
        self.max_seconds = max_seconds
        self.framerate = framerate
        self.slice_framepos = slice_framepos

    def read(self, path: str, *, train: bool, rng: random.Random | None = None,
             choose: FrameChoice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode `path`; `train` picks random offsets (TSN, or within the frame-rate grid), else
        segment centres (or the grid's frames); `choose(indices, total)`, if given, replaces the
        sampled indices (of `total` usable frames) before decoding.

        Returns `video` uint8 `[T, 3, S, S]` (zeros after the last real frame) and `mask` long `[T]`.
        Raises `VideoReadError` for empty, undecodable or frameless files.
        """
        video, mask, _ = self.read_with_indices(path, train=train, rng=rng, choose=choose)
        return video, mask

    def read_with_indices(self, path: str, *, train: bool, rng: random.Random | None = None,
                          choose: FrameChoice | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """`read` plus the source index (in the file's frame order) of each real output frame."""
        def pick(total: int, fps: float) -> list[int]:
            usable = self._usable_frames(total, fps)
            indices = self._sample(usable, fps, train, rng)
            return choose(indices, usable) if choose is not None else indices

        frames, indices = self._decode(path, pick)
        video, mask = self._padded(resize_center_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), self.image_size))
        return video, mask, indices

    def read_frames(self, path: str, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        """The frames `indices` (ascending) of `path`, resized and cropped as `read` does: uint8
        `[t, 3, S, S]` and the index of each (an index past the file's end gives its last frame)."""
        frames, used = self._decode(path, lambda total, fps: [min(i, max(total - 1, 0)) for i in indices])
        return resize_center_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), self.image_size), used

    def length(self, path: str) -> tuple[int, float]:
        """(frames `read` samples from, frames per second) of `path`, from its container's header."""
        import av

        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                total, fps = self._pyav_length(path, container, stream)
        except VideoReadError:
            raise
        except Exception as exc:  # av.FFmpegError, IndexError (no video stream), ...
            raise VideoReadError(path, f"cannot decode ({_reason(exc)})") from exc
        return self._usable_frames(total, fps), fps

    def read_windows(self, path: str, segment: float, stride: float, first: int = 0) -> Iterator[Window]:
        """The windows `plan_windows(frames, fps, segment, stride)` of `path` from number `first` on,
        each sampled as `read` samples a clip (segment centres, `train=False`), in one sequential
        decode of the file with PyAV (`segment` 0: one window over the first `max_seconds`).

        A window is yielded as soon as its last frame is decoded. A container that over-reports its
        length gives windows up to its real end, the missing frames repeating the last decoded one.
        Raises `VideoReadError` for empty, undecodable or frameless files (possibly after windows).
        """
        if os.path.getsize(path) == 0:
            raise VideoReadError(path, "empty file (0 bytes)")
        import av

        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                total, fps = self._pyav_length(path, container, stream)
                if fps <= 0:
                    raise VideoReadError(path, "no frame rate: its windows cannot be placed in time")
                if segment <= 0:
                    total = self._usable_frames(total, fps)
                windows = plan_windows(total, fps, segment, stride)
                yield from self._stream_windows(path, container.decode(stream), windows, first, fps)
        except VideoReadError:
            raise
        except Exception as exc:  # decoders raise many types (av.FFmpegError, ...)
            raise VideoReadError(path, f"cannot decode ({_reason(exc)})") from exc

    def _stream_windows(self, path: str, frames: Iterator[Any], windows: list[tuple[int, int]], first: int,
                        fps: float) -> Iterator[Window]:
        """Windows `first`.. of `windows` from the decoded `frames` (in file order)."""
        samples = [[start + i for i in self._sample(end - start, fps, False, None)] for start, end in windows]
        users: dict[int, int] = {}   # frame index -> windows not yet yielded that sample it
        for wanted in samples[first:]:
            for index in wanted:
                users[index] = users.get(index, 0) + 1
        held: dict[int, torch.Tensor] = {}
        number = first
        for index, frame in enumerate(frames):
            if index in users:
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
                held[index] = resize_center_crop(rgb, self.image_size)[0]
            while number < len(windows) and samples[number][-1] <= index:
                yield self._window(number, windows[number], samples[number], fps, held, users)
                number += 1
            if number == len(windows):
                return
        # The container over-reported its length: the windows with some of their frames decoded,
        # the missing ones repeating the last frame held before them.
        while number < len(windows) and any(i in held for i in samples[number]):
            yield self._window(number, windows[number], samples[number], fps, held, users)
            number += 1
        if number == first:
            raise VideoReadError(path, "no decodable frames")

    def _window(self, number: int, span: tuple[int, int], wanted: list[int], fps: float,
                held: dict[int, torch.Tensor], users: dict[int, int]) -> Window:
        """Window `number` from the `held` frames, then releases the frames no later window samples."""
        used, previous = [], min(held)
        for index in wanted:
            previous = index if index in held else max((i for i in held if i < index), default=previous)
            used.append(previous)
        video, mask = self._padded(torch.stack([held[i] for i in used]))
        for index in wanted:
            users[index] -= 1
            if not users[index]:
                held.pop(index, None)
        return Window(number, span[0], span[1], fps, video, mask, used)

    def _padded(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 `[t, 3, S, S]` -> (uint8 `[T, 3, S, S]` zero after the t real frames, mask long `[T]`)."""
        n = frames.shape[0]
        video = torch.zeros(self.num_frames, 3, self.image_size, self.image_size, dtype=torch.uint8)
        video[:n] = frames
        mask = torch.zeros(self.num_frames, dtype=torch.long)
        mask[:n] = 1
        return video, mask

    def _decode(self, path: str, pick: _Pick) -> tuple[np.ndarray, list[int]]:
        """RGB frames `[t, H, W, 3]` of the indices `pick(frames in the file, fps)` gives, and the
        index of each; decord with PyAV as a second try, or PyAV alone."""
        if os.path.getsize(path) == 0:
            raise VideoReadError(path, "empty file (0 bytes)")
        try:
            return (self._read_decord if self.backend == "decord" else self._read_pyav)(path, pick)
        except VideoReadError:
            raise
        except Exception as exc:  # decoders raise many types (DECORDError, av.FFmpegError, ...)
            if self.backend != "decord":
                raise VideoReadError(path, f"cannot decode ({_reason(exc)})") from exc
            # decord rejects some valid files (e.g. certain small frame sizes): PyAV gets a second try.
            try:
                return self._read_pyav(path, pick)
            except Exception as second:
                raise VideoReadError(path, f"cannot decode (decord {_reason(exc)}; pyav {_reason(second)})") \
                    from second

    def _usable_frames(self, total: int, fps: float) -> int:
        """Frames of a file of `total` frames at `fps` that sampling may pick (`max_seconds`)."""
        if self.max_seconds is not None and fps > 0:
            total = min(total, max(1, int(self.max_seconds * fps)))
        return total

    def _sample(self, total: int, fps: float, train: bool, rng: random.Random | None) -> list[int]:
        """The frames sampled from a clip of `total` frames at `fps` (see `read`)."""
        if self.framerate is None:
            return sample_frame_indices(total, self.num_frames, train, rng)
        return framerate_frame_indices(total, fps, self.framerate, self.num_frames, self.slice_framepos, train, rng)

    def _read_decord(self, path: str, pick: _Pick) -> tuple[np.ndarray, list[int]]:
        import decord  # lazy: see the module docstring

        reader = decord.VideoReader(path, num_threads=1)
        if len(reader) <= 0:
            raise VideoReadError(path, "no video frames")
        indices = pick(len(reader), reader.get_avg_fps())
        return reader.get_batch(indices).asnumpy(), indices  # [t, H, W, 3]

    def _pyav_length(self, path: str, container: Any, stream: Any) -> tuple[int, float]:
        """(frames, fps) of a PyAV stream; raises `VideoReadError` for a stream without frames."""
        import av

        fps = float(stream.average_rate or stream.guessed_rate or 0)
        total = stream.frames
        if total <= 0 and fps > 0:  # some containers (webm) omit the count: estimate it
            seconds = (float(stream.duration * stream.time_base) if stream.duration
                       else (container.duration or 0) / av.time_base)
            total = int(seconds * fps)
        if total <= 0:
            raise VideoReadError(path, "no video frames")
        return total, fps

    def _read_pyav(self, path: str, pick: _Pick) -> tuple[np.ndarray, list[int]]:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            indices = pick(*self._pyav_length(path, container, stream))
            wanted = set(indices)
            decoded: dict[int, np.ndarray] = {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    decoded[i] = frame.to_ndarray(format="rgb24")
                if i >= indices[-1]:
                    break
        if not decoded:
            raise VideoReadError(path, "no decodable frames")
        # A container that over-reports its length: repeat the last decoded frame (and report its index).
        used, previous = [], min(decoded)
        for index in indices:
            previous = index if index in decoded else previous
            used.append(previous)
        return np.stack([decoded[i] for i in used]), used


def _reason(exc: BaseException) -> str:
    """A decoder exception as a short reason: its type and the end of its message."""
    return f"{type(exc).__name__}: {str(exc).strip()[-300:]}"
