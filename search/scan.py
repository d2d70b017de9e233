"""Exact search: the best k windows per query, streamed over the float16 shards.

Each block of `SCAN_ROWS` rows is scored in float16 (the stored values times the query rounded to
float16, accumulated in float32 by torch's CPU kernels: 3-4x faster than converting the block to
float32 first, and no float32 copy of it); the rows that can still be among the best are then
scored again exactly (float32 query against the stored values) and merged. The float16 score of a
unit vector is within `TOLERANCE` of its exact score, so keeping every row within twice that of the
block's k-th float16 score loses none of the exact top k: the result is the exact top k of the
stored embeddings, ties going to the lower window id. A block's pages are released once scored,
so the memory a scan holds is one block, whatever the size of the index.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from search.store import Shard

SCAN_ROWS = 65_536
# float16 rounding of the query (relative 2^-11 per component) and of the score (2^-11 near 1),
# plus float32 accumulation: below 2^-10 for L2-normalised vectors; 2^-9 leaves a margin.
TOLERANCE = 2.0 ** -9


def ranked(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best of candidates `scores` / `ids` `[C]`, by score then lower id."""
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


def exact_top_k(shards: Iterable[Shard], queries: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query of `queries` float32 `[Q, D]`: scores float32 and window ids int64 of its best `k`
    windows (fewer when the shards hold fewer), best first."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    half = torch.from_numpy(queries).half()
    best_scores = [np.zeros(0, np.float32) for _ in queries]
    best_ids = [np.zeros(0, np.int64) for _ in queries]
    for shard in shards:
        for start in range(0, len(shard.embeddings), SCAN_ROWS):
            block = shard.embeddings[start:start + SCAN_ROWS]                       # a view: no copy
            approx = (half @ torch.from_numpy(block).t()).float().numpy()           # [Q, rows]
            # The rest is small: numpy, one thread (torch's threads would wait for each other on a busy CPU).
            for q, row_scores in enumerate(approx):
                floor = -np.partition(-row_scores, min(k, len(block)) - 1)[min(k, len(block)) - 1]
                if len(best_ids[q]) == k:
                    floor = max(floor, best_scores[q][-1])
                rows = np.flatnonzero(row_scores >= floor - 2 * TOLERANCE)
                best_scores[q], best_ids[q] = ranked(np.concatenate([best_scores[q], block[rows].astype(np.float32)
                                                                     @ queries[q]]),
                                                     np.concatenate([best_ids[q], rows + shard.first + start]), k)
            shard.release(start, start + len(block))
    return best_scores, best_ids
