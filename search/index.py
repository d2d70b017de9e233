"""Index a folder of videos with a trained model: embeddings + manifest, updated incrementally.

Layout of an index folder OUT:

    OUT/manifest.json          what is indexed, with which model (below)
    OUT/embeddings-<id>.npy    float32 [N_ok, D], L2-normalised; row i belongs to the entry with "row": i

manifest.json:

    {"version": 1, "videos_dir": absolute path, "embeddings": "embeddings-<id>.npy", "dim": D,
     "frames_per_video": T_in (frames read per video),
     "model": {"checkpoint": absolute path, "sha256": hex, "clip_weights": path or null, "args": {...}},
     "videos": [{"path": relative to videos_dir, "size": bytes, "mtime_ns": int, "status": "ok", "row": i,
                 "frames_read": [source frame indices], "frames_kept": [the ones that reached CLIP]},
                {"path": ..., "size": ..., "mtime_ns": ..., "status": "failed", "reason": "..."}, ...]}

Every video is encoded as evaluation encodes it (`modules/evaluate.py`): the run's reader
(`dataloaders.make_reader`: segment centres, `--image_size`), `model.encode_video` under the
run's autocast. A re-run encodes only files that are new or whose size or modification time
changed, drops deleted files, and keeps failed files listed (never searched) until they change.

Commit protocol: the embeddings are written under a new name, then manifest.json is replaced
atomically (temporary file + `os.replace`) to point at them, then older embeddings files go.
A run killed at any moment leaves a consistent index; a long run commits every
`COMMIT_SECONDS`, so a killed run keeps most of its work.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from argparse import Namespace
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from dataloaders import make_loader, make_reader
from dataloaders.base import VIDEO_EXTENSIONS
from dataloaders.video_reader import VideoReader, VideoReadError
from engine.distributed import resolve_device
from engine.factory import model_from_checkpoint
from engine.precision import autocast, resolve_precision
from modules.clip4clip import CLIP4Clip

log = logging.getLogger("video_search")

MANIFEST = "manifest.json"
VERSION = 1
COMMIT_SECONDS = 300.0


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


def load_index(index_dir: str) -> tuple[dict[str, Any], np.ndarray]:
    """(manifest, embeddings float32 `[N_ok, D]`, memory-mapped) of an index folder."""
    path = os.path.join(index_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--index {index_dir} holds no {MANIFEST}: build it with "
                                f"`python scripts/video_search.py index --checkpoint RUN/best.pt --videos DIR "
                                f"--index {index_dir}`")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("version") != VERSION:
        raise ValueError(f"--index {index_dir} has manifest version {manifest.get('version')}, this code reads "
                         f"version {VERSION}: index into a new folder")
    return manifest, np.load(os.path.join(index_dir, manifest["embeddings"]), mmap_mode="r")


def _write_atomic(path: str, write: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _commit(index_dir: str, header: dict[str, Any], entries: dict[str, dict[str, Any]],
            rows: dict[str, np.ndarray]) -> None:
    """Write the index: `entries` by path, `rows` (path -> embedding `[D]`) for the ok ones."""
    videos, matrix = [], []
    for path in sorted(entries):
        entry = dict(entries[path])
        if entry["status"] == "ok":
            entry["row"] = len(matrix)
            matrix.append(rows[path])
        videos.append(entry)
    embeddings = np.stack(matrix).astype(np.float32) if matrix else np.zeros((0, header["dim"]), np.float32)
    name = f"embeddings-{uuid.uuid4().hex[:12]}.npy"
    _write_atomic(os.path.join(index_dir, name), lambda f: np.save(f, embeddings))
    # Readable and diff-able: the header indented, then one line per video.
    head = json.dumps({**header, "embeddings": name}, indent=1).removesuffix("\n}")
    lines = ",\n".join(f"  {json.dumps(video)}" for video in videos)
    text = f'{head},\n "videos": [\n{lines}\n ]\n}}\n'
    _write_atomic(os.path.join(index_dir, MANIFEST), lambda f: f.write(text.encode()))
    for old in os.listdir(index_dir):
        if old.startswith("embeddings-") and old.endswith(".npy") and old != name:
            os.remove(os.path.join(index_dir, old))


class VideoFiles(Dataset):
    """Video files read as evaluation reads them. Items: `video` uint8 `[T, 3, S, S]`, `video_mask`
    `[T]`, `frame_indices` long `[T]` (source frame of each, -1 after the last real one),
    `position` (index into `paths`), `reason` ("" when read, else why the file cannot be used)."""

    def __init__(self, root: str, paths: list[str], reader: VideoReader):
        self.root, self.paths, self.reader = root, paths, reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> dict[str, Any]:
        frames, size = self.reader.num_frames, self.reader.image_size
        indices = torch.full((frames,), -1, dtype=torch.long)
        try:
            video, mask, read = self.reader.read_with_indices(os.path.join(self.root, self.paths[position]),
                                                              train=False)
            indices[:len(read)] = torch.as_tensor(read)
            reason = ""
        except (VideoReadError, OSError) as exc:
            video = torch.zeros(frames, 3, size, size, dtype=torch.uint8)
            mask = torch.zeros(frames, dtype=torch.long)
            reason = exc.reason if isinstance(exc, VideoReadError) else str(exc)
        return {"video": video, "video_mask": mask, "frame_indices": indices, "position": position, "reason": reason}


def _encode_batch(model: CLIP4Clip, video: torch.Tensor, mask: torch.Tensor, device: torch.device,
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
def encode_files(model: CLIP4Clip, args: Namespace, videos_dir: str, paths: list[str], device: torch.device,
                 batch_size: int, num_workers: int, progress: bool = True
                 ) -> Iterator[tuple[str, dict[str, Any], np.ndarray | None]]:
    """Encode `paths` (relative to `videos_dir`) as evaluation does; yields (path, entry fields,
    L2-normalised float32 embedding `[D]` or None for a file that cannot be read) in order."""
    model.eval()
    precision = resolve_precision(args.precision, device)
    dataset = VideoFiles(videos_dir, paths, make_reader(args))
    loader, _ = make_loader(dataset, Namespace(**{**vars(args), "batch_size_val": batch_size,
                                                  "num_workers": num_workers}), train=False)
    with tqdm(total=len(paths), desc="index", unit="video", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            ok = [i for i, reason in enumerate(batch["reason"]) if not reason]
            encoded = {}
            if ok:
                emb, positions = _encode_batch(model, batch["video"][ok], batch["video_mask"][ok], device, precision)
                encoded = dict(zip(ok, zip(emb, positions)))
            for i, position in enumerate(batch["position"].tolist()):
                path, reason = paths[position], batch["reason"][i]
                if i not in encoded:
                    log.warning("cannot read %s: %s (listed as failed in the manifest)", path, reason)
                    yield path, {"status": "failed", "reason": reason}, None
                    continue
                embedding, chosen = encoded[i]
                read = batch["frame_indices"][i]
                yield path, {"status": "ok", "frames_read": read[read >= 0].tolist(),
                             "frames_kept": sorted(read[chosen[chosen >= 0]].tolist())}, embedding
            bar.update(len(batch["reason"]))


def _previous(index_dir: str, identity: dict[str, Any], videos_dir: str) -> tuple[dict[str, Any] | None, Any]:
    """The existing index of `index_dir` (manifest, embeddings), or (None, None); refuses one made
    with another checkpoint or over another folder."""
    if not os.path.isfile(os.path.join(index_dir, MANIFEST)):
        return None, None
    manifest, embeddings = load_index(index_dir)
    if manifest["model"]["sha256"] != identity["sha256"]:
        raise ValueError(f"--index {index_dir} was built with checkpoint {manifest['model']['checkpoint']} "
                         f"(sha256 {manifest['model']['sha256'][:12]}), not {identity['checkpoint']} (sha256 "
                         f"{identity['sha256'][:12]}): pass a new --index folder, or delete {index_dir} to rebuild it")
    if manifest["videos_dir"] != videos_dir:
        raise ValueError(f"--index {index_dir} indexes {manifest['videos_dir']}, not {videos_dir}: pass a new "
                         f"--index folder for another --videos folder")
    return manifest, embeddings


def build_index(checkpoint: str, videos_dir: str, index_dir: str, *, device: str = "auto",
                batch_size: int | None = None, num_workers: int | None = None, clip_weights: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Create or update the index of `videos_dir` in `index_dir` with the model of `checkpoint`.

    `batch_size` / `num_workers` default to the run's `--batch_size_val` / `--num_workers`. The model
    is only built when some file needs encoding. Returns {"videos", "ok", "failed", "encoded" (paths
    encoded by this call), "reused", "dropped" (paths), "seconds", "videos_per_s"}.
    """
    videos_dir = os.path.abspath(videos_dir)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    identity = {"checkpoint": os.path.abspath(checkpoint), "sha256": sha256_of(checkpoint),
                "clip_weights": os.path.abspath(clip_weights) if clip_weights else None}
    previous, old_embeddings = _previous(index_dir, identity, videos_dir)
    found = find_videos(videos_dir)
    entries: dict[str, dict[str, Any]] = {}
    rows: dict[str, np.ndarray] = {}
    for entry in previous["videos"] if previous else []:
        if found.get(entry["path"]) == (entry["size"], entry["mtime_ns"]):
            entries[entry["path"]] = entry
            if entry["status"] == "ok":
                rows[entry["path"]] = np.array(old_embeddings[entry["row"]])
    todo = [path for path in found if path not in entries]
    dropped = sorted({e["path"] for e in previous["videos"]} - set(found)) if previous else []
    reused = len(entries)
    # The index's header: kept from the previous manifest (the checkpoint may have moved), or new.
    header = {k: v for k, v in (previous or {}).items() if k not in ("videos", "embeddings")}
    if previous:
        header["model"] = {**previous["model"], **identity}

    seconds = 0.0
    if todo or previous is None:
        model, args = model_from_checkpoint(checkpoint, clip_weights)
        resolved = resolve_device(device)
        model.to(resolved)
        header = {"version": VERSION, "videos_dir": videos_dir, "dim": int(model.clip.text_projection.shape[1]),
                  "frames_per_video": make_reader(args).num_frames, "model": {**identity, "args": vars(args)}}
        os.makedirs(index_dir, exist_ok=True)
        start = last_commit = time.perf_counter()
        for path, fields, embedding in encode_files(model, args, videos_dir, todo, resolved,
                                                    batch_size or args.batch_size_val,
                                                    args.num_workers if num_workers is None else num_workers,
                                                    progress):
            size, mtime_ns = found[path]
            entries[path] = {"path": path, "size": size, "mtime_ns": mtime_ns, **fields}
            if embedding is not None:
                rows[path] = embedding
            if time.perf_counter() - last_commit > COMMIT_SECONDS:
                _commit(index_dir, header, entries, rows)
                last_commit = time.perf_counter()
        seconds = time.perf_counter() - start
    _commit(index_dir, header, entries, rows)
    failed = sum(e["status"] == "failed" for e in entries.values())
    return {"videos": len(entries), "ok": len(entries) - failed, "failed": failed, "encoded": todo,
            "reused": reused, "dropped": dropped, "seconds": seconds,
            "videos_per_s": len(todo) / seconds if seconds > 0 else 0.0}
