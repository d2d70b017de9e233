"""Encode files as windows, each as evaluation encodes a clip.

`WindowStream` reads the windows of a list of files (`VideoReader.read_windows`: one sequential
decode per file) in DataLoader worker processes, a file per worker at a time; `encode_windows`
runs the model's video tower over them (TempMe included, under the run's autocast) and yields one
`Encoded` per window, in each file's order, plus one per file that cannot be read.
"""
from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dataloaders import init_worker
from dataloaders.video_reader import VideoReader, VideoReadError, Window
from engine.precision import autocast, resolve_precision
from modules.clip4clip import CLIP4Clip


@dataclass
class Job:
    """A file to encode: `path` relative to the videos folder, from window number `first` on."""
    path: str
    first: int = 0


@dataclass
class Encoded:
    """What `encode_windows` yields. A window: `number` >= 0, its frame range and `fps`, the source
    frames read and those that reached CLIP, its L2-normalised float32 `embedding [D]`. `last`: the
    file's last item. A file that cannot be read: `reason` (number -1, no embedding); a file with no
    window left to encode: number -1, `last`."""
    job: int
    number: int
    start_frame: int
    end_frame: int
    fps: float
    frames_read: list[int]
    frames_kept: list[int]
    embedding: np.ndarray | None
    last: bool
    reason: str


class WindowStream(IterableDataset):
    """The windows of `jobs` (files under `root`), `segment` / `stride` seconds, read by `reader`;
    each worker takes every n-th file. Items: `video` uint8 `[T, 3, S, S]`, `video_mask` `[T]`,
    `frame_indices` long `[T]` (-1 after the real frames), `job`, `number` (-1: an item standing for
    the whole file), `start`, `end` (frames), `fps`, `last` (1 on the file's last item), `reason`."""

    def __init__(self, root: str, jobs: list[Job], reader: VideoReader, segment: float, stride: float):
        self.root, self.jobs, self.reader, self.segment, self.stride = root, jobs, reader, segment, stride

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        mine = range(len(self.jobs))[worker.id::worker.num_workers] if worker else range(len(self.jobs))
        for job in mine:
            # One window behind the decoder, so the file's last window is known to be the last.
            previous: Window | None = None
            try:
                for window in self.reader.read_windows(os.path.join(self.root, self.jobs[job].path), self.segment,
                                                       self.stride, self.jobs[job].first):
                    if previous is not None:
                        yield self._item(job, previous, last=False)
                    previous = window
            except (VideoReadError, OSError) as exc:
                yield self._item(job, None, last=True, reason=exc.reason if isinstance(exc, VideoReadError)
                                 else str(exc))
                continue
            yield self._item(job, previous, last=True)

    def _item(self, job: int, window: Window | None, last: bool, reason: str = "") -> dict[str, Any]:
        frames, size = self.reader.num_frames, self.reader.image_size
        indices = torch.full((frames,), -1, dtype=torch.long)
        if window is None:
            video, mask = torch.zeros(frames, 3, size, size, dtype=torch.uint8), torch.zeros(frames, dtype=torch.long)
            number, start, end, fps = -1, 0, 0, 0.0
        else:
            video, mask, number, start, end, fps = (window.video, window.mask, window.number, window.start,
                                                    window.end, window.fps)
            indices[:len(window.indices)] = torch.as_tensor(window.indices)
        return {"video": video, "video_mask": mask, "frame_indices": indices, "job": job, "number": number,
                "start": start, "end": end, "fps": fps, "last": int(last), "reason": reason}


def encode_batch(model: CLIP4Clip, video: torch.Tensor, mask: torch.Tensor, device: torch.device,
                 precision: str) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 `[B, T, 3, S, S]`, mask `[B, T]` -> (L2-normalised float32 embeddings `[B, D]`, positions
    among the T frames read of the frames that reached CLIP `[B, T']`, -1 = padding)."""
    video, mask = video.to(device), mask.to(device)
    with autocast(precision, device):
        emb, _, info = model.encode_video(video, mask)
    positions = (info["indices"] if info is not None  # TempMe's choice, else every real frame
                 else torch.where(mask > 0, torch.arange(mask.shape[1], device=device), -1))
    return F.normalize(emb.float(), dim=-1).cpu().numpy(), positions.cpu()


@torch.no_grad()
def encode_windows(model: CLIP4Clip, args: Namespace, root: str, jobs: list[Job], reader: VideoReader,
                   segment: float, stride: float, device: torch.device, batch_size: int,
                   num_workers: int) -> Iterator[Encoded]:
    """Encode the windows of `jobs` as evaluation encodes clips; yields `Encoded` items, each file's
    in order (files of different workers interleave)."""
    model.eval()
    precision = resolve_precision(args.precision, device)
    loader = DataLoader(WindowStream(root, jobs, reader, segment, stride), batch_size=batch_size,
                        num_workers=num_workers, worker_init_fn=init_worker, pin_memory=device.type == "cuda")
    for batch in loader:
        numbers = batch["number"].tolist()
        windows = [i for i, number in enumerate(numbers) if number >= 0]
        encoded = {}
        if windows:
            emb, positions = encode_batch(model, batch["video"][windows], batch["video_mask"][windows], device,
                                          precision)
            encoded = dict(zip(windows, zip(emb, positions)))
        for i, number in enumerate(numbers):
            read = batch["frame_indices"][i]
            read = read[read >= 0]
            embedding, kept = encoded.get(i, (None, None))
            yield Encoded(int(batch["job"][i]), number, int(batch["start"][i]), int(batch["end"][i]),
                          float(batch["fps"][i]), read.tolist(),
                          [] if kept is None else sorted(read[kept[kept >= 0]].tolist()), embedding,
                          bool(batch["last"][i]), batch["reason"][i])
