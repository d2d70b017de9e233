"""Indexes of the earlier JSON format, migrated into the store (`search.store`) on first use.

That format: `manifest.json` (version 1: header, then one entry per file with its size,
modification time, status, frames read and kept, and its row) beside one float32
`embeddings-<id>.npy`, one embedding per file over its whole length. Migrated, each searchable file
becomes one window of the whole file (segment 0, as it was built), its embedding stored as float16;
the frame count and rate come from the file's header. A file that changed or vanished since is left
out, so the next `index` run encodes it again or drops it. The migration is redone from scratch
until its last step, renaming `manifest.json` to `manifest.v1.json`; the float32 embeddings file is
then deleted.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np

from dataloaders import make_reader
from dataloaders.video_reader import VideoReadError
from engine.factory import checkpoint_args
from search.store import DATABASE, SHARDS, VERSION, FileProgress, IndexStore, NewWindow

log = logging.getLogger("video_search")

MANIFEST = "manifest.json"
MIGRATED = "manifest.v1.json"


def needs_migration(index_dir: str) -> bool:
    return os.path.isfile(os.path.join(index_dir, MANIFEST))


def migrate(index_dir: str) -> None:
    """Turn the JSON index of `index_dir` into a store (the caller holds the folder's lock)."""
    with open(os.path.join(index_dir, MANIFEST)) as f:
        manifest = json.load(f)
    if manifest.get("version") != 1:
        raise ValueError(f"--index {index_dir}: {MANIFEST} has version {manifest.get('version')}, not the JSON "
                         f"format 1 this code migrates: index into a new folder")
    for leftover in (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm"):   # of a migration killed half-way
        if os.path.exists(os.path.join(index_dir, leftover)):
            os.remove(os.path.join(index_dir, leftover))
    shutil.rmtree(os.path.join(index_dir, SHARDS), ignore_errors=True)
    embeddings = np.load(os.path.join(index_dir, manifest["embeddings"]), mmap_mode="r")
    reader = make_reader(checkpoint_args(manifest["model"]["args"]))
    store = IndexStore.open(index_dir, create=True)
    try:
        store.set_meta(version=VERSION, videos_dir=manifest["videos_dir"], dim=manifest["dim"],
                       frames_per_window=manifest["frames_per_video"], segment=0.0, stride=0.0,
                       model=manifest["model"])
        kept, windows, rows, progress = [], [], [], {}
        for entry in manifest["videos"]:
            path = os.path.join(manifest["videos_dir"], entry["path"])
            try:
                stat = os.stat(path)
                if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
                    continue
                frames, fps = reader.length(path) if entry["status"] == "ok" else (0, None)
            except (OSError, VideoReadError):
                continue
            kept.append((entry, frames, fps))
        store.update_files({entry["path"]: (entry["size"], entry["mtime_ns"]) for entry, _, _ in kept}, {}, [])
        ids = {path: entry.id for path, entry in store.files().items()}
        for entry, frames, fps in kept:
            if entry["status"] != "ok":
                progress[ids[entry["path"]]] = FileProgress(0, "failed", reason=entry["reason"])
                continue
            windows.append(NewWindow(ids[entry["path"]], 0, 0, frames, entry["frames_read"], entry["frames_kept"]))
            rows.append(embeddings[entry["row"]])
            progress[ids[entry["path"]]] = FileProgress(1, "ok", fps)
        store.commit(windows, np.array(rows, dtype=np.float32).reshape(len(rows), manifest["dim"]), progress)
    finally:
        store.close()
    os.replace(os.path.join(index_dir, MANIFEST), os.path.join(index_dir, MIGRATED))
    os.remove(os.path.join(index_dir, manifest["embeddings"]))
    log.warning("migrated the JSON index %s (%d files) into %s with float16 shards: %d files kept (%d searchable), "
                "%d changed or gone since (the next index run encodes or drops them); the old manifest is kept as "
                "%s", os.path.join(index_dir, MANIFEST), len(manifest["videos"]),
                os.path.join(index_dir, DATABASE), len(kept), len(windows), len(manifest["videos"]) - len(kept),
                MIGRATED)
