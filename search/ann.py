"""Approximate search with faiss (the optional `faiss-cpu`), for large indexes.

`update`, run by `index`: once the index holds `ANN_MIN_WINDOWS` searchable windows and faiss can be
imported, an HNSW graph over the shards' embeddings (`IndexHNSWSQ` storing float16: the shards'
values exactly; inner product; the window ids as faiss ids; 32 links per node, built searching
128 deep) is built from the shards, and later extended with the shards added since. It is then
checked against exact search: `RECALL_QUERIES` windows of the index drawn at random are the
queries, and the graph's `efSearch` doubles from 16 until recall@10 (the share of the exact top 10
found in its top 10) reaches `RECALL_TARGET`, or `MAX_EF`. The recall reached is stored in the
manifest (meta `ann`) and printed. The graph is written whole to `OUT/ann-<last shard id>.faiss`,
then named in the manifest, then the previous file deleted.

`Searcher` searches the graph and, exactly, any shard added after it was built, and merges both.
Windows deleted since (their file changed or vanished) stay in the graph and are skipped, as in
exact search. The graph is read into memory whole (about the size of the shards plus 8
bytes per window and neighbour), unlike exact search, which streams the shards.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
from tqdm import tqdm

from search.scan import exact_top_k, ranked
from search.store import IndexStore

ANN_MIN_WINDOWS = 100_000
HNSW_NEIGHBOURS = 32       # M: links per node; 32 holds recall on 512-d embeddings
HNSW_BUILD_DEPTH = 128     # efConstruction: faiss's 40 left recall@10 at 0.88 on 1M clustered windows, 128 at 0.95
RECALL_QUERIES = 100
RECALL_TARGET = 0.95
RECALL_K = 10
FIRST_EF, MAX_EF = 16, 1024
ADD_ROWS = 65_536          # rows converted to float32 at a time while adding


def available() -> bool:
    """Whether faiss can be imported (without importing it)."""
    return importlib.util.find_spec("faiss") is not None


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("--search faiss needs the optional faiss-cpu package: pip install faiss-cpu") from exc
    return faiss


def update(store: IndexStore, progress: bool = True, min_windows: int = ANN_MIN_WINDOWS) -> dict[str, Any] | None:
    """Build or extend the graph of `store` when it holds `min_windows` searchable windows and faiss
    is installed; returns the manifest's `ann` entry ({"file", "shards" (last shard id in it),
    "rows", "ef_search", "recall_at_10", "queries"}) or None."""
    info = store.meta.get("ann")
    if not available() or store.counts()["windows"] < min_windows:
        return info
    faiss = _faiss()
    if info:
        index = faiss.read_index(os.path.join(store.index_dir, info["file"]))
    else:
        hnsw = faiss.IndexHNSWSQ(store.meta["dim"], faiss.ScalarQuantizer.QT_fp16, HNSW_NEIGHBOURS,
                                 faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_BUILD_DEPTH
        index = faiss.IndexIDMap(hnsw)
    shards = list(store.shards(after=info["shards"] if info else 0))
    if not shards:
        return info
    total = sum(len(shard.embeddings) for shard in shards)
    with tqdm(total=total, desc="faiss graph", unit="window", disable=not progress, dynamic_ncols=True) as bar:
        for shard in shards:
            for start in range(0, len(shard.embeddings), ADD_ROWS):
                block = np.asarray(shard.embeddings[start:start + ADD_ROWS], dtype=np.float32)
                index.add_with_ids(block, np.arange(len(block), dtype=np.int64) + shard.first + start)
                shard.release(start, start + len(block))
                bar.update(len(block))
    ef_search, recall = _tune(store, index)
    name = f"ann-{shards[-1].id:06d}.faiss"
    faiss.write_index(index, os.path.join(store.index_dir, f"{name}.tmp"))
    os.replace(os.path.join(store.index_dir, f"{name}.tmp"), os.path.join(store.index_dir, name))
    store.set_meta(ann={"file": name, "shards": shards[-1].id, "rows": int(index.ntotal), "ef_search": ef_search,
                        "recall_at_10": recall, "queries": RECALL_QUERIES})
    if info and info["file"] != name:
        os.remove(os.path.join(store.index_dir, info["file"]))
    return store.meta["ann"]


def _set_ef(index: Any, ef_search: int) -> None:
    _faiss().downcast_index(index.index).hnsw.efSearch = ef_search


def _tune(store: IndexStore, index: Any) -> tuple[int, float]:
    """The smallest efSearch (doubling) whose recall@10 against exact search reaches
    `RECALL_TARGET` on windows of the index as queries, and that recall."""
    queries = sample_windows(store, RECALL_QUERIES)
    _, exact = exact_top_k(store.shards(), queries, RECALL_K)
    ef_search = FIRST_EF
    while True:
        _set_ef(index, ef_search)
        _, found = index.search(queries, RECALL_K)
        recall = float(np.mean([len(set(e.tolist()) & set(f.tolist())) / len(e) for e, f in zip(exact, found)]))
        if recall >= RECALL_TARGET or ef_search >= MAX_EF:
            return ef_search, recall
        ef_search *= 2


def sample_windows(store: IndexStore, count: int, seed: int = 0) -> np.ndarray:
    """float32 embeddings `[count, D]` of searchable windows drawn at random (all when fewer)."""
    ids = np.array([i for (i,) in store.db.execute("SELECT id FROM windows")], dtype=np.int64)
    chosen = np.sort(np.random.default_rng(seed).choice(ids, min(count, len(ids)), replace=False))
    rows = []
    for shard in store.shards():
        inside = chosen[(chosen >= shard.first) & (chosen < shard.first + len(shard.embeddings))]
        rows.append(np.asarray(shard.embeddings[inside - shard.first], dtype=np.float32))
    return np.concatenate(rows)


class Searcher:
    """`search.scan.exact_top_k`'s answer through the graph of `store` (read once; efSearch: the
    tuned one, at least the windows asked for), plus an exact scan of the shards added after it."""

    def __init__(self, store: IndexStore):
        if not store.meta.get("ann"):
            raise ValueError(f"--search faiss: --index {store.index_dir} has no faiss graph; `index` builds one "
                             f"once the index holds {ANN_MIN_WINDOWS:,} windows and faiss-cpu is installed")
        self.store, self.info = store, store.meta["ann"]
        self.index = _faiss().read_index(os.path.join(store.index_dir, self.info["file"]))

    def __call__(self, queries: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        _set_ef(self.index, max(self.info["ef_search"], k))
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        newer_scores, newer_ids = exact_top_k(self.store.shards(after=self.info["shards"]), queries, k)
        merged = [ranked(np.concatenate([s[i >= 0], ns]), np.concatenate([i[i >= 0], ni]), k)
                  for s, i, ns, ni in zip(scores, ids, newer_scores, newer_ids)]
        return [s for s, _ in merged], [i for _, i in merged]
