"""Answer text queries over an index: text embeddings with the index's own model, top-k search.

Scores are cosine similarities (embeddings L2-normalised): the order evaluation ranks by, without
the temperature. Exact search is a chunked matrix product; with the optional `faiss-cpu`
installed, `--search auto` hands indexes of `FAISS_MIN_VIDEOS` or more to faiss's exact
inner-product index (`IndexFlatIP`, SIMD and multi-threaded, no `[Q, N]` score matrix), so both
backends return the same hits.
"""
from __future__ import annotations

import importlib.util
import os
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.factory import model_from_checkpoint
from engine.precision import autocast, resolve_precision
from modules.clip4clip import CLIP4Clip
from modules.tokenization import tokenize
from search.index import sha256_of

SEARCH_BACKENDS = ("auto", "exact", "faiss")
FAISS_MIN_VIDEOS = 100_000   # --search auto uses faiss (when installed) from this index size on
SEARCH_CHUNK = 65_536        # videos per block of the exact search: bounds the [Q, chunk] score block
TEXT_BATCH = 256


@dataclass
class Hit:
    """One result: the video's `path` (absolute) and `relpath` (in the index), cosine `score`, and
    the source indices of the frames read and of those that reached CLIP."""
    path: str
    relpath: str
    score: float
    frames_read: list[int]
    frames_kept: list[int]


def model_for_index(manifest: dict[str, Any], index_dir: str,
                    clip_weights: str | None = None) -> tuple[CLIP4Clip, Namespace]:
    """The index's model, rebuilt from its checkpoint (`clip_weights` replaces the CLIP weights path the
    index recorded); refuses a checkpoint that is gone or changed."""
    model = manifest["model"]
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


def _ranked(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `k` best candidates by score, ties by lower id: `[Q, C]` -> `[Q, k]` each."""
    order = np.stack([np.lexsort((row_ids, -row_scores))[:k] for row_scores, row_ids in zip(scores, ids)])
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inner products of `queries [Q, D]` with `embeddings [N, D]`, best `k` per query (ties by
    lower row), computed `SEARCH_CHUNK` rows at a time. Returns scores float32 and rows int64 `[Q, k]`."""
    k = min(k, len(embeddings))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_scores, best_ids = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    for start in range(0, len(embeddings), SEARCH_CHUNK):
        block = torch.from_numpy(np.array(embeddings[start:start + SEARCH_CHUNK], dtype=np.float32))
        scores, ids = (q @ block.t()).topk(min(k, len(block)), dim=1)
        best_scores, best_ids = _ranked(np.concatenate([best_scores, scores.numpy()], 1),
                                        np.concatenate([best_ids, ids.numpy() + start], 1), k)
    return best_scores, best_ids


def faiss_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`exact_top_k` with faiss's exact inner-product index (`pip install faiss-cpu`)."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("--search faiss needs the optional faiss-cpu package: pip install faiss-cpu") from exc
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(embeddings)))
    return _ranked(scores, ids.astype(np.int64), k)


def top_k(embeddings: np.ndarray, queries: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Best `k` rows of `embeddings` per query with `backend` (see the module docstring)."""
    if backend not in SEARCH_BACKENDS:
        raise ValueError(f"--search must be one of {', '.join(SEARCH_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        use_faiss = len(embeddings) >= FAISS_MIN_VIDEOS and importlib.util.find_spec("faiss") is not None
        backend = "faiss" if use_faiss else "exact"
    return (faiss_top_k if backend == "faiss" else exact_top_k)(embeddings, queries, k)


def search(manifest: dict[str, Any], embeddings: np.ndarray, queries: np.ndarray, k: int,
           backend: str = "auto") -> list[list[Hit]]:
    """The `k` best videos of the index (`load_index`) for each query embedding `[Q, D]`."""
    videos = {entry["row"]: entry for entry in manifest["videos"] if entry["status"] == "ok"}
    if not videos:
        return [[] for _ in queries]
    scores, rows = top_k(embeddings, queries, k, backend)
    return [[Hit(os.path.join(manifest["videos_dir"], videos[row]["path"]), videos[row]["path"], float(score),
                 videos[row]["frames_read"], videos[row]["frames_kept"])
             for score, row in zip(query_scores, query_rows)]
            for query_scores, query_rows in zip(scores.tolist(), rows.tolist())]
