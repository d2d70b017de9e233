"""The search package below the model: the store (SQLite + float16 shards, commits, a commit killed
half-way), exact search against a full sort, moments, the lock, the faiss graph, the JSON
migration. No trained model: embeddings are random unit vectors."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from dataloaders.synthetic import write_mp4
from search import ann, legacy, scan
from search.lock import IndexLockedError, index_lock
from search.moments import clock, merge_moments
from search.query import search, searcher
from search.store import FileProgress, IndexStore, NewWindow, WindowRecord

DIM = 16


def _unit(rows: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _store(folder, files: dict[str, int], seed: int = 0, embeddings: dict[str, np.ndarray] | None = None
           ) -> IndexStore:
    """A store of `files` (path -> windows of 2 s every 1 s at 10 fps; their `embeddings`, else
    random), one shard per file."""
    store = IndexStore.open(str(folder), create=True)
    store.set_meta(version=2, videos_dir=str(folder), dim=DIM, frames_per_window=4, segment=2.0, stride=1.0,
                   model={"checkpoint": "c.pt", "sha256": "0" * 64, "clip_weights": None, "args": {}})
    store.update_files({path: (1, 1) for path in files}, {}, [])
    ids = {path: entry.id for path, entry in store.files().items()}
    for n, (path, count) in enumerate(files.items()):
        store.commit([NewWindow(ids[path], w, 10 * w, 10 * w + 20, [10 * w], [10 * w]) for w in range(count)],
                     (embeddings or {}).get(path, _unit(count, seed + n)), {ids[path]: FileProgress(count, "ok", 10.0)})
    return store


def _embeddings(store: IndexStore) -> np.ndarray:
    return np.concatenate([shard.embeddings for shard in store.shards()]).astype(np.float32)


def test_a_commit_appends_one_shard_and_a_commit_killed_half_way_leaves_nothing(tmp_path, monkeypatch):
    store = _store(tmp_path, {"a.mp4": 3, "b.mp4": 2})
    first = tmp_path / "shards" / "000001.npy"
    written = (first.read_bytes(), first.stat().st_mtime_ns)
    store.update_files({"c.mp4": (5, 5)}, {}, [])
    c = store.files()["c.mp4"].id
    store.commit([NewWindow(c, 0, 0, 20, [0], [0])], _unit(1, 9), {c: FileProgress(1, "partial", 10.0)})
    assert (first.read_bytes(), first.stat().st_mtime_ns) == written   # earlier shards are never rewritten
    assert [len(s.embeddings) for s in store.shards()] == [3, 2, 1] and store.shards().__next__().first == 0
    assert store.counts() == {"files": 3, "ok": 2, "partial": 1, "failed": 0, "windows": 6, "rows": 6,
                              "dead_rows": 0}
    window = store.lookup([5])[5]
    assert (window.relpath, window.start, window.end, window.frames_kept) == ("c.mp4", 0.0, 2.0, [0])

    # Killed between writing the shard and recording it: the transaction never happened.
    def dies(self, name, embeddings):
        real(self, name, embeddings)
        raise KeyboardInterrupt

    real = IndexStore._write_shard
    monkeypatch.setattr(IndexStore, "_write_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        store.commit([NewWindow(c, 1, 10, 30, [10], [10])], _unit(1, 10), {c: FileProgress(2, "ok", 10.0)})
    store.close()
    store = IndexStore.open(str(tmp_path))
    assert store.counts()["windows"] == 6 and store.files()["c.mp4"].windows_done == 1
    assert store.remove_orphans() == ["shards/000004.npy"] and not (tmp_path / "shards" / "000004.npy").exists()

    # A file that fails loses its windows; a changed one restarts; the rows stay in the shards, dead.
    a = store.files()["a.mp4"].id
    store.commit([], np.zeros((0, DIM)), {c: FileProgress(0, "failed", reason="cannot decode")})
    store.update_files({}, {a: (7, 7)}, [])
    assert store.counts() == {"files": 3, "ok": 1, "partial": 1, "failed": 1, "windows": 2, "rows": 6,
                              "dead_rows": 4}
    assert sorted(store.lookup(list(range(6)))) == [3, 4]
    assert store.files()["c.mp4"].reason == "cannot decode" and store.files()["a.mp4"].fps is None


@pytest.mark.parametrize("queries", [1, 7])
def test_exact_search_is_a_full_sort_of_the_stored_values(tmp_path, monkeypatch, queries):
    store = _store(tmp_path, {f"{i}.mp4": 150 for i in range(4)})
    monkeypatch.setattr(scan, "SCAN_ROWS", 64)                 # many blocks per shard to merge
    stored = _embeddings(store)
    q = np.concatenate([stored[[7]], _unit(queries - 1, 99)])  # a stored vector: its own best match
    q[0] = stored[7]
    scores, ids = scan.exact_top_k(store.shards(), q, 40)
    full = q @ stored.T
    for row in range(queries):
        expected = sorted(range(len(stored)), key=lambda i: (-full[row, i], i))[:40]
        assert ids[row].tolist() == expected
        np.testing.assert_allclose(scores[row], full[row, expected], rtol=1e-6, atol=1e-6)
    assert ids[0][0] == 7 and scan.exact_top_k(store.shards(), q, 1000)[1][0].shape == (600,)


def test_float16_scores_stay_within_the_tolerance():
    """What exact search relies on: torch's float16 product of unit vectors is within TOLERANCE."""
    import torch

    x = _unit(4000).astype(np.float16)
    q = _unit(5, 1)
    approx = (torch.from_numpy(q).half() @ torch.from_numpy(x).t()).float().numpy()
    assert np.abs(approx - q @ x.astype(np.float32).T).max() < scan.TOLERANCE / 2


def _window(path: str, start: float, end: float, id: int = 0) -> WindowRecord:
    return WindowRecord(id, path, 10.0, round(start * 10), round(end * 10), [], [])


def test_overlapping_windows_merge_into_moments_that_do_not_depend_on_k():
    ranked = [(0.9, _window("a", 10, 12)), (0.8, _window("a", 11, 13)), (0.7, _window("b", 0, 2)),
              (0.6, _window("a", 9, 11)), (0.5, _window("a", 20, 22)), (0.4, _window("a", 12, 14)),
              (0.3, _window("b", 1, 3))]
    moments, final = merge_moments(ranked, 3)
    assert final is False   # ran out of windows before a 4th moment
    # a [10, 13]: its second window merged; [9, 11] and [12, 14] came after b's moment: absorbed
    # without widening it; b's [1, 3] likewise, after a's second moment.
    assert [(m.relpath, m.start, m.end, m.score) for m in moments] == [
        ("a", 10, 13, 0.9), ("b", 0, 2, 0.7), ("a", 20, 22, 0.5)]
    assert moments[0].windows == 2 and moments[0].best.start == 10
    for k in (1, 2):
        shorter, final = merge_moments(ranked, k)
        assert final and [(m.start, m.end) for m in shorter] == [(m.start, m.end) for m in moments[:k]]
    per_file, _ = merge_moments(ranked, 3, per_file=1)
    assert [(m.relpath, m.start) for m in per_file] == [("a", 10), ("b", 0)]
    assert clock(3.04) == "0:03.0" and clock(754.25) == "12:34.2" and clock(3725.0) == "1:02:05.0"


def test_search_reads_more_windows_until_the_moments_are_final(tmp_path, monkeypatch):
    """One file whose 300 overlapping windows all match best: with one moment per file, the other
    files' moments lie below all of them, far past the first pool of windows."""
    direction = _unit(1, 3)
    near = {"long.mp4": (300, 0.1), "b.mp4": (2, 1.0), "c.mp4": (2, 1.5)}
    embeddings = {path: direction + scale * _unit(count, i) for i, (path, (count, scale)) in enumerate(near.items())}
    embeddings = {path: x / np.linalg.norm(x, axis=1, keepdims=True) for path, x in embeddings.items()}
    store = _store(tmp_path, {path: count for path, (count, _) in near.items()}, embeddings=embeddings)
    monkeypatch.setattr("search.query.POOL_PER_MOMENT", 2)
    exact, pools = searcher(store, "exact"), []

    def counting(queries, k):
        pools.append(k)
        return exact(queries, k)

    moments = search(store, direction, 3, 1, counting)[0]
    assert pools == [6, 24, 96, 304]   # the pool grows until it holds every row
    stored = _embeddings(store)
    ranking = np.lexsort((np.arange(len(stored)), -(stored @ direction[0])))
    windows = store.lookup(ranking.tolist())
    expected, final = merge_moments([(float(stored[i] @ direction[0]), windows[i]) for i in ranking], 3, 1)
    assert [(m.relpath, m.start, m.end) for m in moments] == [(m.relpath, m.start, m.end) for m in expected]
    assert [m.relpath for m in moments] == ["long.mp4", "b.mp4", "c.mp4"]


def test_one_writer_at_a_time_and_a_killed_writer_leaves_no_lock(tmp_path):
    with index_lock(str(tmp_path)):
        with pytest.raises(IndexLockedError, match=r"is being written by another index run \(pid \d+ .* holds "
                                                   r".*index\.lock\): wait for it to finish"):
            with index_lock(str(tmp_path)):
                pass
    with index_lock(str(tmp_path)):   # released at the end of the block
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from search.lock import index_lock\nwith index_lock(sys.argv[2]):\n"
                               "    print('held', flush=True); time.sleep(600)",
                               os.getcwd(), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
        with index_lock(str(tmp_path)):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with index_lock(str(tmp_path)):
        pass


def test_faiss_graph_is_checked_against_exact_search(tmp_path):
    pytest.importorskip("faiss")
    files = {f"{i}.mp4": 100 for i in range(20)}
    store = _store(tmp_path, files)
    assert ann.update(store, progress=False) is None             # below ANN_MIN_WINDOWS: no graph
    info = ann.update(store, progress=False, min_windows=0)
    assert info["rows"] == 2000 and info["recall_at_10"] >= ann.RECALL_TARGET
    assert os.path.isfile(tmp_path / info["file"]) and store.meta["ann"] == info
    assert isinstance(searcher(store, "auto"), ann.Searcher)
    queries = _unit(20, 1000)   # a seed no file used
    exact = scan.exact_top_k(store.shards(), queries, 10)[1]
    graph = searcher(store, "faiss")
    found = graph(queries, 10)[1]
    assert np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact, found)]) >= 0.9
    # A shard added after the graph is searched exactly beside it, until the next update adds it.
    store.update_files({"new.mp4": (1, 1)}, {}, [])
    new = store.files()["new.mp4"].id
    store.commit([NewWindow(new, 0, 0, 20, [0], [0])], queries[:1], {new: FileProgress(1, "ok", 10.0)})
    assert searcher(store, "faiss")(queries[:1], 3)[1][0][0] == 2000
    updated = ann.update(store, progress=False, min_windows=0)
    assert updated["rows"] == 2001 and updated["file"] != info["file"]
    assert not os.path.exists(tmp_path / info["file"])
    assert searcher(store, "faiss")(queries[:1], 3)[1][0][0] == 2000


def test_auto_search_is_exact_without_a_graph_and_faiss_needs_one(tmp_path, monkeypatch):
    store = _store(tmp_path, {"a.mp4": 5})
    assert not isinstance(searcher(store, "auto"), ann.Searcher)
    with pytest.raises(ValueError, match="--search faiss: .* has no faiss graph"):
        searcher(store, "faiss")
    with pytest.raises(ValueError, match="--search must be one of"):
        searcher(store, "fast")
    monkeypatch.setitem(store.meta, "ann", {"file": "x"})
    monkeypatch.setattr(ann, "available", lambda: False)
    assert not isinstance(searcher(store, "auto"), ann.Searcher)   # a graph, but faiss is not installed


def test_a_json_index_is_migrated_with_a_message(tmp_path, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    for name in ("a.mp4", "b.mp4", "gone.mp4"):
        write_mp4(str(videos / name), frames)
    (videos / "bad.mp4").write_bytes(b"x" * 100)
    embeddings = _unit(3)
    stat = {name: os.stat(videos / name) for name in ("a.mp4", "b.mp4", "bad.mp4")}
    entries = [{"path": name, "size": stat[name].st_size, "mtime_ns": stat[name].st_mtime_ns, "status": "ok",
                "row": row, "frames_read": [2, 7, 12, 17], "frames_kept": [7, 12]}
               for row, name in enumerate(("a.mp4", "b.mp4"))]
    entries += [{"path": "bad.mp4", "size": 100, "mtime_ns": stat["bad.mp4"].st_mtime_ns, "status": "failed",
                 "reason": "cannot decode"},
                {"path": "gone.mp4", "size": 1, "mtime_ns": 1, "status": "ok", "row": 2, "frames_read": [0],
                 "frames_kept": [0]}]
    index = tmp_path / "index"
    index.mkdir()
    np.save(index / "embeddings-abc.npy", embeddings)
    model = {"checkpoint": "c.pt", "sha256": "1" * 64, "clip_weights": None,
             "args": {"max_frames": 4, "image_size": 16, "video_max_seconds": 1.5}}
    (index / "manifest.json").write_text(json.dumps({
        "version": 1, "videos_dir": str(videos), "embeddings": "embeddings-abc.npy", "dim": DIM,
        "frames_per_video": 4, "model": model, "videos": entries}))
    assert legacy.needs_migration(str(index))
    with caplog.at_level(logging.WARNING, logger="video_search"):
        legacy.migrate(str(index))
    assert "migrated the JSON index" in caplog.text and "1 changed or gone since" in caplog.text
    assert not legacy.needs_migration(str(index)) and (index / "manifest.v1.json").exists()
    assert not (index / "embeddings-abc.npy").exists()
    store = IndexStore.open(str(index))
    assert store.meta["segment"] == 0 and store.meta["model"] == model and store.meta["videos_dir"] == str(videos)
    assert {p: e.status for p, e in store.files().items()} == {"a.mp4": "ok", "b.mp4": "ok", "bad.mp4": "failed"}
    windows = store.lookup(list(range(2)))
    # 20 frames at 8 fps, --video_max_seconds 1.5: the whole-file window is the first 12 frames.
    assert [(w.relpath, w.start, w.end, w.frames_kept) for w in windows.values()] == [
        ("a.mp4", 0.0, 1.5, [7, 12]), ("b.mp4", 0.0, 1.5, [7, 12])]
    np.testing.assert_allclose(_embeddings(store), embeddings[:2], atol=1e-3)
