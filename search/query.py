"""Answer text queries over an index: text embeddings with the index's own model, ranked windows,
distinct moments.

Scores are cosine similarities (embeddings L2-normalised): the order evaluation ranks by, without
the temperature. The windows are ranked by exact search over the shards (`search.scan`), or by the
faiss graph when the index has one (`search.ann`); `search.moments` merges them into moments. A
query reads the best `POOL_PER_MOMENT` windows per moment asked for, and four times more while the
moments are not final (many overlapping or deleted windows), up to `MAX_POOL`: its memory depends
on the moments asked for, not on the size of the index.
"""
from __future__ import annotations

import os
from argparse import Namespace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.factory import model_from_checkpoint
from engine.precision import autocast, resolve_precision
from modules.clip4clip import CLIP4Clip
from modules.tokenization import tokenize
from search import ann
from search.index import sha256_of
from search.moments import Moment, merge_moments
from search.scan import exact_top_k
from search.store import IndexStore

SEARCH_BACKENDS = ("auto", "exact", "faiss")
POOL_PER_MOMENT = 16
MAX_POOL = 65_536
TEXT_BATCH = 256

TopK = Callable[[np.ndarray, int], tuple[list[np.ndarray], list[np.ndarray]]]


def model_for_index(meta: dict[str, Any], index_dir: str,
                    clip_weights: str | None = None) -> tuple[CLIP4Clip, Namespace]:
    """The index's model, rebuilt from its checkpoint (`clip_weights` replaces the CLIP weights path the
    index recorded); refuses a checkpoint that is gone or changed."""
    model = meta["model"]
    checkpoint = model["checkpoint"]
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--index {index_dir} was built with checkpoint {checkpoint}, which no longer "
                                f"exists: put it back, or index again with another --checkpoint into a new folder")
    if sha256_of(checkpoint) != model["sha256"]:
        raise ValueError(f"checkpoint {checkpoint} changed since --index {index_dir} was built (sha256 was "
                         f"{model['sha256'][:12]}): its embeddings belong to the old model; index again into a "
                         f"new folder")
    return model_from_checkpoint(checkpoint, clip_weights or model["clip_weights"])


@torch.no_grad()
def encode_texts(model: CLIP4Clip, args: Namespace, texts: list[str], device: torch.device) -> np.ndarray:
    """L2-normalised float32 text embeddings `[Q, D]`, tokenised and encoded as evaluation does."""
    model.eval()
    precision = resolve_precision(args.precision, device)
    out = []
    for start in range(0, len(texts), TEXT_BATCH):
        ids = tokenize(texts[start:start + TEXT_BATCH], args.max_words).to(device)
        with autocast(precision, device):
            emb = model.get_text_output(ids, (ids != 0).long())
        out.append(F.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def searcher(store: IndexStore, backend: str = "auto") -> TopK:
    """The window ranking `backend` names: exact, faiss (the index's graph), or auto (the graph
    when the index has one and faiss is installed, else exact)."""
    if backend not in SEARCH_BACKENDS:
        raise ValueError(f"--search must be one of {', '.join(SEARCH_BACKENDS)}, got {backend!r}")
    if backend == "faiss" or (backend == "auto" and store.meta.get("ann") and ann.available()):
        return ann.Searcher(store)
    return lambda queries, k: exact_top_k(store.shards(), queries, k)


def search(store: IndexStore, queries: np.ndarray, k: int, per_file: int | None, top_k: TopK) -> list[list[Moment]]:
    """The `k` best moments (at most `per_file` per file) for each query embedding `[Q, D]`, the
    windows ranked by `top_k` (`searcher`)."""
    rows = store.rows()
    results: dict[int, list[Moment]] = {}
    todo, pool = list(range(len(queries))), max(k * POOL_PER_MOMENT, 1)
    while todo:
        scores, ids = top_k(queries[todo], min(pool, max(rows, 1)))
        windows = store.lookup(sorted({int(i) for row in ids for i in row}))
        unfinished = []
        for query, query_scores, query_ids in zip(todo, scores, ids):
            ranked = ((float(s), windows[int(i)]) for s, i in zip(query_scores, query_ids) if int(i) in windows)
            results[query], final = merge_moments(ranked, k, per_file)
            if not final and pool < min(rows, MAX_POOL):
                unfinished.append(query)
        todo, pool = unfinished, pool * 4
    return [results[query] for query in range(len(queries))]
