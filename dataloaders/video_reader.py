"""Decoding the sampled frames of one video file.

`VideoReader.read(path, train=...)` returns uint8 frames `[T, 3, S, S]` and a mask `[T]`
(1 = real frame). Which frames: T spread over the whole video (`sample_frame_indices`), or with a
frame rate the frames CLIP4Clip's extractor takes (`framerate_frame_indices`). Only the sampled frames are converted to RGB; the resize (short side to S,
bicubic, antialiased) and the centre crop run on uint8. Normalisation is left to the model
(`modules.clip.normalize_video`, on the accelerator): uint8 is 4x less host work and host-to-device transfer.

Decoder objects are created per call, inside whichever process reads (a DataLoader worker):
decord's reader must never be created in the parent before the workers fork (it deadlocks),
so `decord` is also imported lazily.
"""
from __future__ import annotations

import os
import random
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("decord", "pyav")
# (sampled frame indices, usable frames of the file) -> the frame indices to decode instead.
FrameChoice = Callable[[list[int], int], list[int]]


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
        if os.path.getsize(path) == 0:
            raise VideoReadError(path, "empty file (0 bytes)")
        try:
            decode = self._read_decord if self.backend == "decord" else self._read_pyav
            frames, indices = decode(path, train, rng, choose)
        except VideoReadError:
            raise
        except Exception as exc:  # decoders raise many types (DECORDError, av.FFmpegError, ...)
            reason = f"{type(exc).__name__}: {str(exc).strip()[-300:]}"
            if self.backend != "decord":
                raise VideoReadError(path, f"cannot decode ({reason})") from exc
            # decord rejects some valid files (e.g. certain small frame sizes): PyAV gets a second try.
            try:
                frames, indices = self._read_pyav(path, train, rng, choose)
            except Exception as second:
                raise VideoReadError(path, f"cannot decode (decord {reason}; pyav {type(second).__name__}: "
                                           f"{str(second).strip()[-300:]})") from second
        frames = resize_center_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), self.image_size)
        n = frames.shape[0]
        video = torch.zeros(self.num_frames, 3, self.image_size, self.image_size, dtype=torch.uint8)
        video[:n] = frames
        mask = torch.zeros(self.num_frames, dtype=torch.long)
        mask[:n] = 1
        return video, mask, indices

    def _frame_indices(self, path: str, total: int, fps: float, train: bool, rng: random.Random | None,
                       choose: FrameChoice | None) -> list[int]:
        """The frames to decode of a file of `total` frames at `fps` (see `read`)."""
        if total <= 0:
            raise VideoReadError(path, "no video frames")
        if self.max_seconds is not None and fps > 0:
            total = min(total, max(1, int(self.max_seconds * fps)))
        if self.framerate is None:
            indices = sample_frame_indices(total, self.num_frames, train, rng)
        else:
            indices = framerate_frame_indices(total, fps, self.framerate, self.num_frames, self.slice_framepos,
                                              train, rng)
        return choose(indices, total) if choose is not None else indices

    def _read_decord(self, path: str, train: bool, rng: random.Random | None,
                     choose: FrameChoice | None) -> tuple[np.ndarray, list[int]]:
        import decord  # lazy: see the module docstring

        reader = decord.VideoReader(path, num_threads=1)
        indices = self._frame_indices(path, len(reader), reader.get_avg_fps(), train, rng, choose)
        return reader.get_batch(indices).asnumpy(), indices  # [t, H, W, 3]

    def _read_pyav(self, path: str, train: bool, rng: random.Random | None,
                   choose: FrameChoice | None) -> tuple[np.ndarray, list[int]]:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            total = stream.frames
            if total <= 0 and fps > 0:  # some containers (webm) omit the count: estimate it
                seconds = (float(stream.duration * stream.time_base) if stream.duration
                           else (container.duration or 0) / av.time_base)
                total = int(seconds * fps)
            indices = self._frame_indices(path, total, fps, train, rng, choose)
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
