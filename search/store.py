"""The index on disk: a SQLite manifest and float16 embedding shards, appended to by each commit.

Layout of an index folder OUT:

    OUT/index.sqlite       the manifest (tables below), in WAL mode: queries read while `index` writes
    OUT/shards/<id>.npy    float16 `[rows, D]`, L2-normalised window embeddings; row r of shard s
                           belongs to window `s.first_window + r`
    OUT/index.lock         held by the `index` run writing the folder (`search.lock`)
    OUT/ann-<n>.faiss      the optional approximate index (`search.ann`)

Tables:

    meta(key, value)       JSON values: version, videos_dir (absolute), dim, frames_per_window,
                           segment and stride (seconds; 0 = one window per file), model {checkpoint,
                           sha256, clip_weights, args}, ann (see `search.ann`)
    files(id, path, size, mtime_ns, status, reason, fps, windows_done)
                           path relative to videos_dir; status 'partial' (windows 0..windows_done-1
                           indexed, the rest to come), 'ok' (all of them) or 'failed' (reason)
    shards(id, name, first_window, rows)
    windows(id, file_id, number, start_frame, end_frame, frames_read, frames_kept)
                           the window's frame range [start_frame, end_frame) of its file, the source
                           indices of the frames read and of those that reached CLIP (JSON lists)

Commit (`IndexStore.commit`): the new embeddings become one new shard file (temporary name, fsync,
rename), then one SQLite transaction records the shard, its windows and the files' progress. A
process killed before the transaction leaves a shard file that no row names, deleted when the
index is next opened for writing, and nothing else. Windows deleted later (their file changed or
vanished) leave unreferenced rows in their shards, which search skips; `dead_rows` counts them.
"""
from __future__ import annotations

import json
import mmap
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

DATABASE = "index.sqlite"
SHARDS = "shards"
VERSION = 2
LOOKUP_BATCH = 500   # ids per SELECT ... IN (...): below SQLite's limit on bound parameters

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('partial', 'ok', 'failed')), reason TEXT, fps REAL,
    windows_done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, name TEXT NOT NULL, first_window INTEGER NOT NULL,
                                   rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    number INTEGER NOT NULL, start_frame INTEGER NOT NULL, end_frame INTEGER NOT NULL,
    frames_read TEXT NOT NULL, frames_kept TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS windows_of_file ON windows (file_id, number);
"""


@dataclass
class FileEntry:
    """A row of `files`."""
    id: int
    path: str
    size: int
    mtime_ns: int
    status: str
    reason: str | None
    fps: float | None
    windows_done: int


@dataclass
class NewWindow:
    """A window encoded since the last commit (its embedding travels beside it)."""
    file_id: int
    number: int
    start_frame: int
    end_frame: int
    frames_read: list[int]
    frames_kept: list[int]


@dataclass
class FileProgress:
    """What a commit records of a file: windows indexed so far, status, frame rate (None: as
    recorded before), failure reason."""
    windows_done: int
    status: str
    fps: float | None = None
    reason: str | None = None


@dataclass
class WindowRecord:
    """A searchable window: its file (`relpath` in the index, `fps`), frame range and frames."""
    id: int
    relpath: str
    fps: float
    start_frame: int
    end_frame: int
    frames_read: list[int]
    frames_kept: list[int]

    @property
    def start(self) -> float:
        """Start in seconds."""
        return self.start_frame / self.fps

    @property
    def end(self) -> float:
        """End in seconds."""
        return self.end_frame / self.fps


class Shard:
    """One shard file, memory-mapped: `embeddings` float16 `[rows, D]`, the rows of windows
    `first`.. `first + rows - 1`."""

    def __init__(self, shard_id: int, first: int, path: str):
        self.id, self.first = shard_id, first
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            self._offset = f.tell()
            # Copy-on-write and never written: the array is writable for torch, the file untouched.
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.embeddings = np.ndarray(shape, dtype, buffer=self._map, offset=self._offset)

    def release(self, start: int, stop: int) -> None:
        """Drop the pages of rows [start, stop) from this process's memory (the page cache keeps
        them): a scan then holds one block of the shard, not all of it."""
        row = self.embeddings.strides[0]
        begin = (self._offset + start * row) // mmap.PAGESIZE * mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, begin, self._offset + stop * row - begin)


class IndexStore:
    """An index folder's manifest and shards (see the module docstring). Writing methods assume
    the caller holds the folder's lock (`search.lock.index_lock`)."""

    def __init__(self, index_dir: str, connection: sqlite3.Connection):
        self.index_dir = index_dir
        self.db = connection
        self.meta: dict[str, Any] = {key: json.loads(value) for key, value in self.db.execute("SELECT * FROM meta")}

    @classmethod
    def exists(cls, index_dir: str) -> bool:
        return os.path.isfile(os.path.join(index_dir, DATABASE))

    @classmethod
    def open(cls, index_dir: str, create: bool = False) -> IndexStore:
        """The store of `index_dir`; `create` makes an empty one when there is none."""
        path = os.path.join(index_dir, DATABASE)
        if not create and not os.path.isfile(path):
            raise FileNotFoundError(f"--index {index_dir} holds no {DATABASE}: build it with `python "
                                    f"scripts/video_search.py index --checkpoint RUN/best.pt --videos DIR "
                                    f"--index {index_dir}`")
        os.makedirs(os.path.join(index_dir, SHARDS), exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=60)   # transactions are explicit
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")   # a committed transaction survives a power cut
            db.execute("PRAGMA foreign_keys = ON")
            db.executescript(SCHEMA)
            store = cls(index_dir, db)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ValueError(f"--index {index_dir}: {path} is not a readable index ({exc}): index into a new "
                             f"folder") from exc
        version = store.meta.get("version", VERSION)
        if version != VERSION:
            raise ValueError(f"--index {index_dir} has manifest version {version}, this code reads version "
                             f"{VERSION}: index into a new folder")
        return store

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def set_meta(self, **values: Any) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [(key, json.dumps(value)) for key, value in values.items()])
        self.meta.update(values)

    def files(self) -> dict[str, FileEntry]:
        """Every file of the manifest by path (what `index` compares with the folder)."""
        return {row[1]: FileEntry(*row) for row in self.db.execute("SELECT * FROM files ORDER BY path")}

    def update_files(self, new: dict[str, tuple[int, int]], changed: dict[int, tuple[int, int]],
                     deleted: list[int]) -> None:
        """One transaction: add `new` files (path -> (size, mtime_ns)) as partial, restart `changed`
        ones (id -> new (size, mtime_ns)) from their first window, drop `deleted` (ids)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in deleted])
            db.executemany("DELETE FROM windows WHERE file_id = ?", [(i,) for i in changed])
            db.executemany("UPDATE files SET size = ?, mtime_ns = ?, status = 'partial', reason = NULL, fps = NULL, "
                           "windows_done = 0 WHERE id = ?", [(*stat, i) for i, stat in changed.items()])
            db.executemany("INSERT INTO files (path, size, mtime_ns, status) VALUES (?, ?, ?, 'partial')",
                           [(path, *stat) for path, stat in new.items()])

    def commit(self, windows: list[NewWindow], embeddings: np.ndarray, progress: dict[int, FileProgress]) -> None:
        """Append `windows` with their embeddings (float `[len(windows), D]`, stored as float16) as a
        new shard, and record `progress` (file id -> progress); a failed file loses its windows."""
        with self.transaction() as db:   # BEGIN IMMEDIATE: no other writer until the shard is recorded
            if windows:
                shard_id, first = db.execute("SELECT COALESCE(MAX(id), 0) + 1, COALESCE(MAX(first_window + rows), 0) "
                                             "FROM shards").fetchone()
                name = f"{SHARDS}/{shard_id:06d}.npy"
                self._write_shard(name, embeddings)
                db.execute("INSERT INTO shards VALUES (?, ?, ?, ?)", (shard_id, name, first, len(windows)))
                db.executemany("INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(first + row, w.file_id, w.number, w.start_frame, w.end_frame,
                                 json.dumps(w.frames_read), json.dumps(w.frames_kept))
                                for row, w in enumerate(windows)])
            failed = [(i,) for i, p in progress.items() if p.status == "failed"]
            db.executemany("DELETE FROM windows WHERE file_id = ?", failed)
            db.executemany("UPDATE files SET windows_done = ?, status = ?, fps = COALESCE(?, fps), reason = ? "
                           "WHERE id = ?",
                           [(p.windows_done, p.status, p.fps, p.reason, i) for i, p in progress.items()])

    def _write_shard(self, name: str, embeddings: np.ndarray) -> None:
        path = os.path.join(self.index_dir, name)
        with open(f"{path}.tmp", "wb") as f:
            np.save(f, np.ascontiguousarray(embeddings, dtype=np.float16))
            f.flush()
            os.fsync(f.fileno())
        os.replace(f"{path}.tmp", path)

    def remove_orphans(self) -> list[str]:
        """Delete shard files no row names (left by a run killed mid-commit); returns their names."""
        named = {name for (name,) in self.db.execute("SELECT name FROM shards")}
        orphans = [f"{SHARDS}/{f}" for f in sorted(os.listdir(os.path.join(self.index_dir, SHARDS)))
                   if f"{SHARDS}/{f}" not in named]
        for name in orphans:
            os.remove(os.path.join(self.index_dir, name))
        return orphans

    def shards(self, after: int = 0) -> Iterator[Shard]:
        """Each shard with an id above `after`, in order, memory-mapped as it is reached."""
        rows = self.db.execute("SELECT id, name, first_window FROM shards WHERE id > ? ORDER BY id",
                               (after,)).fetchall()
        for shard_id, name, first in rows:
            yield Shard(shard_id, first, os.path.join(self.index_dir, name))

    def lookup(self, ids: list[int]) -> dict[int, WindowRecord]:
        """The searchable windows among `ids` (deleted ones are absent)."""
        found = {}
        for start in range(0, len(ids), LOOKUP_BATCH):
            batch = ids[start:start + LOOKUP_BATCH]
            for row in self.db.execute(
                    "SELECT w.id, f.path, f.fps, w.start_frame, w.end_frame, w.frames_read, w.frames_kept "
                    f"FROM windows w JOIN files f ON f.id = w.file_id WHERE w.id IN ({','.join('?' * len(batch))})",
                    batch):
                found[row[0]] = WindowRecord(*row[:5], json.loads(row[5]), json.loads(row[6]))
        return found

    def rows(self) -> int:
        """Rows in the shards: every window ever committed, deleted ones included."""
        return self.db.execute("SELECT COALESCE(SUM(rows), 0) FROM shards").fetchone()[0]

    def counts(self) -> dict[str, int]:
        """{"files", "ok", "partial", "failed", "windows" (searchable), "rows" (in shards), "dead_rows"}."""
        status = dict(self.db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall())
        windows = self.db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        rows = self.rows()
        return {"files": sum(status.values()), "ok": status.get("ok", 0), "partial": status.get("partial", 0),
                "failed": status.get("failed", 0), "windows": windows, "rows": rows, "dead_rows": rows - windows}
