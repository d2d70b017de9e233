"""Index a folder of videos with a trained model: overlapping windows of every file, encoded as
evaluation encodes clips, kept in an append-only store (`search.store`) updated incrementally.

Windows: `segment` seconds every `stride` seconds (`dataloaders.video_reader.plan_windows`; a file
no longer than a segment is one window; `segment` 0: one window per file, frames spread over the
whole file as evaluation reads a clip). By default the segment is the length of the clips the
checkpoint was trained on (`dataloaders.clip_seconds`) and the stride half of it; an index keeps the
windows it was created with.

A run takes the folder's lock, compares the folder with the manifest (new, changed by size or
modification time, deleted files), and encodes what is missing: new and changed files from their
first window, files a killed run left partial from their next window. It commits every
`commit_seconds` and at the end, so a run killed at any moment loses at most the windows encoded
since its last commit. A file is recorded with the size and modification time it had before it was
read, so one that changes while it is encoded is encoded again by the next run. A file that cannot
be decoded is logged, listed as failed with the reason, never searched, and retried once it changes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from argparse import Namespace
from typing import Any

import numpy as np
from tqdm import tqdm

from dataloaders import clip_seconds, make_reader
from dataloaders.base import VIDEO_EXTENSIONS
from engine.distributed import resolve_device
from engine.factory import model_from_checkpoint
from modules.clip4clip import CLIP4Clip
from search import ann, legacy
from search.encode import Encoded, Job, encode_windows
from search.lock import index_lock
from search.moments import clock
from search.store import VERSION, FileEntry, FileProgress, IndexStore, NewWindow

log = logging.getLogger("video_search")

COMMIT_SECONDS = 60.0


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_videos(videos_dir: str) -> dict[str, tuple[int, int]]:
    """Every video file under `videos_dir` (recursive, symlinks followed, an extension of
    `VIDEO_EXTENSIONS` in any case) -> (size, mtime_ns), keyed by its '/'-separated path relative
    to `videos_dir`, sorted."""
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"--videos {videos_dir} is not a folder")
    found = {}
    for root, dirs, files in os.walk(videos_dir, followlinks=True):
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                path = os.path.join(root, name)
                stat = os.stat(path)
                found[os.path.relpath(path, videos_dir).replace(os.sep, "/")] = (stat.st_size, stat.st_mtime_ns)
    return dict(sorted(found.items()))


def open_index(index_dir: str) -> IndexStore:
    """The store of an existing index folder, for reading; an index of the earlier JSON format is
    migrated first (`search.legacy`)."""
    if legacy.needs_migration(index_dir):
        with index_lock(index_dir):
            legacy.migrate(index_dir)
    return IndexStore.open(index_dir)


def _own_windows(meta: dict[str, Any], segment: float | None, stride: float | None,
                 index_dir: str) -> tuple[float, float]:
    """The (segment, stride) of an existing index; refuses flags asking for other windows."""
    own = (meta["segment"], meta["stride"])
    if segment is None and stride is None:
        return own
    asked = (own[0] if segment is None else segment,
             stride if stride is not None else own[1] if segment is None else segment / 2)
    if asked != own:
        raise ValueError(f"--index {index_dir} holds windows of --segment {own[0]:g} --stride {own[1]:g}, not "
                         f"--segment {asked[0]:g} --stride {asked[1]:g}: leave both out to update it, or pass a "
                         f"new --index folder")
    return own


def _new_windows(args: Any, segment: float | None, stride: float | None) -> tuple[float, float]:
    """(segment, stride) in seconds of a new index: the flags', else the clip length the
    checkpoint was trained on and half of it."""
    segment = clip_seconds(args) if segment is None else segment
    if segment < 0:
        raise ValueError(f"--segment must be >= 0 seconds (0: one window per file), got {segment:g}")
    if segment == 0:
        return 0.0, 0.0
    stride = segment / 2 if stride is None else stride
    if not 0 < stride <= segment:
        raise ValueError(f"--stride must be in (0, --segment {segment:g}] seconds, got {stride:g}")
    return segment, stride


def _refuse_other_index(store: IndexStore, identity: dict[str, Any], videos_dir: str, index_dir: str) -> None:
    """An index holds one checkpoint's embeddings of one folder."""
    model = store.meta.get("model")
    if model and model["sha256"] != identity["sha256"]:
        raise ValueError(f"--index {index_dir} was built with checkpoint {model['checkpoint']} (sha256 "
                         f"{model['sha256'][:12]}), not {identity['checkpoint']} (sha256 {identity['sha256'][:12]}): "
                         f"its embeddings do not mix; start a new index with another --index folder (or delete "
                         f"{index_dir} to rebuild it)")
    if store.meta.get("videos_dir", videos_dir) != videos_dir:
        raise ValueError(f"--index {index_dir} indexes {store.meta['videos_dir']}, not {videos_dir}: pass a new "
                         f"--index folder for another --videos folder")


def _plan(store: IndexStore, found: dict[str, tuple[int, int]]) -> tuple[list[FileEntry], list[str], int]:
    """Bring the manifest in line with the folder (one transaction); returns the files to encode
    (partial ones, from their next window), the paths dropped, and the count of files reused."""
    known = store.files()
    deleted = [entry for path, entry in known.items() if path not in found]
    changed = {entry.id: found[path] for path, entry in known.items()
               if path in found and (entry.size, entry.mtime_ns) != found[path]}
    store.update_files({path: stat for path, stat in found.items() if path not in known}, changed,
                       [entry.id for entry in deleted])
    entries = store.files()
    reused = sum(entry.status != "partial" for entry in entries.values())
    return [entry for entry in entries.values() if entry.status == "partial"], [e.path for e in deleted], reused


class _Pending:
    """Windows encoded since the last commit, and the progress of their files."""

    def __init__(self, files: list[FileEntry]):
        self.done = {entry.id: entry.windows_done for entry in files}   # file id -> windows indexed so far
        self.windows: list[NewWindow] = []
        self.embeddings: list[np.ndarray] = []
        self.progress: dict[int, FileProgress] = {}

    def add(self, file_id: int, item: Encoded) -> None:
        if item.number >= 0:
            self.windows.append(NewWindow(file_id, item.number, item.start_frame, item.end_frame, item.frames_read,
                                          item.frames_kept))
            self.embeddings.append(item.embedding)
            self.done[file_id] = item.number + 1
        if item.reason:
            self.progress[file_id] = FileProgress(0, "failed", reason=item.reason)
        else:
            self.progress[file_id] = FileProgress(self.done[file_id], "ok" if item.last else "partial",
                                                  item.fps if item.number >= 0 else None)

    def commit(self, store: IndexStore) -> int:
        """Write what is pending; returns the windows written."""
        failed = {i for i, p in self.progress.items() if p.status == "failed"}
        keep = [i for i, w in enumerate(self.windows) if w.file_id not in failed]
        embeddings = (np.stack([self.embeddings[i] for i in keep]) if keep
                      else np.zeros((0, store.meta["dim"]), np.float32))
        store.commit([self.windows[i] for i in keep], embeddings, self.progress)
        self.windows, self.embeddings, self.progress = [], [], {}
        return len(keep)


def build_index(checkpoint: str, videos_dir: str, index_dir: str, *, segment: float | None = None,
                stride: float | None = None, device: str = "auto", batch_size: int | None = None,
                num_workers: int | None = None, clip_weights: str | None = None,
                commit_seconds: float = COMMIT_SECONDS, progress: bool = True) -> dict[str, Any]:
    """Create or update the index of `videos_dir` in `index_dir` with the model of `checkpoint`.

    `segment` / `stride` (seconds) default as the module docstring says; `batch_size` (windows) and
    `num_workers` to the run's `--batch_size_val` / `--num_workers`. The model is only built when
    something needs encoding. Returns `IndexStore.counts()` and {"encoded" (paths finished by this
    call), "windows_encoded", "reused" (files), "dropped" (paths), "seconds", "video_seconds" (of
    video covered by the windows encoded), "segment", "stride", "ann" (`search.ann.update`)}.
    """
    videos_dir = os.path.abspath(videos_dir)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    identity = {"checkpoint": os.path.abspath(checkpoint), "sha256": sha256_of(checkpoint),
                "clip_weights": os.path.abspath(clip_weights) if clip_weights else None}
    with index_lock(index_dir):
        if legacy.needs_migration(index_dir):
            legacy.migrate(index_dir)
        store = IndexStore.open(index_dir, create=True)
        try:
            for orphan in store.remove_orphans():
                log.info("removed %s, written by a run killed before it committed", orphan)
            _refuse_other_index(store, identity, videos_dir, index_dir)
            found = find_videos(videos_dir)
            model = None
            if "model" in store.meta:
                segment, stride = _own_windows(store.meta, segment, stride, index_dir)
                store.set_meta(model={**store.meta["model"], **identity})   # the checkpoint may have moved
            else:
                model, args = model_from_checkpoint(checkpoint, clip_weights)
                segment, stride = _new_windows(args, segment, stride)
                store.set_meta(version=VERSION, videos_dir=videos_dir, dim=int(model.clip.text_projection.shape[1]),
                               frames_per_window=make_reader(args).num_frames, segment=segment, stride=stride,
                               model={**identity, "args": vars(args)})
            todo, dropped, reused = _plan(store, found)
            summary = {"encoded": [], "windows_encoded": 0, "seconds": 0.0, "video_seconds": 0.0}
            if todo:
                if model is None:
                    model, args = model_from_checkpoint(checkpoint, clip_weights)
                summary = _encode(store, model, args, videos_dir, todo, device, batch_size, num_workers,
                                  commit_seconds, progress)
            summary["ann"] = ann.update(store, progress)
            return {**store.counts(), **summary, "reused": reused, "dropped": dropped, "segment": segment,
                    "stride": stride}
        finally:
            store.close()


def _encode(store: IndexStore, model: CLIP4Clip, args: Namespace, videos_dir: str, todo: list[FileEntry],
            device: str, batch_size: int | None, num_workers: int | None, commit_seconds: float,
            progress: bool) -> dict[str, Any]:
    """Encode the windows `todo` lacks, committing every `commit_seconds`."""
    resolved = resolve_device(device)
    model.to(resolved)
    jobs = [Job(entry.path, entry.windows_done) for entry in todo]
    pending = _Pending(todo)
    encoded, windows, video_seconds = [], 0, 0.0
    covered = {entry.id: -1 for entry in todo}   # file id -> end frame of its last window encoded
    start = last_commit = time.perf_counter()
    with tqdm(total=len(todo), desc="index", unit="file", disable=not progress, dynamic_ncols=True) as bar:
        for item in encode_windows(model, args, videos_dir, jobs, make_reader(args), store.meta["segment"],
                                   store.meta["stride"], resolved, batch_size or args.batch_size_val,
                                   args.num_workers if num_workers is None else num_workers):
            entry = todo[item.job]
            if item.reason:
                log.warning("cannot read %s: %s (listed as failed in the index)", entry.path, item.reason)
            if item.number >= 0:
                video_seconds += (item.end_frame - max(item.start_frame, covered[entry.id])) / item.fps
                covered[entry.id] = item.end_frame
            pending.add(entry.id, item)
            if item.last:
                encoded.append(entry.path)
                bar.update()
            bar.set_postfix(video=clock(video_seconds), committed=windows, refresh=False)
            if time.perf_counter() - last_commit > commit_seconds:
                windows += pending.commit(store)
                last_commit = time.perf_counter()
        windows += pending.commit(store)
    return {"encoded": encoded, "windows_encoded": windows, "seconds": time.perf_counter() - start,
            "video_seconds": video_seconds}
