"""scripts/benchmark_search.py: the data it searches is what it says, and its scale rows hold together."""
from __future__ import annotations

import numpy as np
import pytest

from scripts import benchmark_search
from search.store import IndexStore


def test_clustered_data_lies_at_the_stated_cosines(tmp_path):
    benchmark_search.fill_store(str(tmp_path), 1000, 256, "clustered", seed=0)
    store = IndexStore.open(str(tmp_path))
    windows = np.concatenate([shard.embeddings for shard in store.shards()]).astype(np.float32)
    assert windows.shape == (1000, 256) and store.counts()["files"] == 1000 // benchmark_search.WINDOWS_PER_FILE
    directions = benchmark_search._directions("clustered", 10, 256, seed=0)
    owner = np.arange(1000) // benchmark_search.WINDOWS_PER_FILE
    to_own = (windows * directions[owner]).sum(1)
    assert abs(to_own.mean() - benchmark_search.WINDOW_COSINE) < 0.03
    queries = benchmark_search.make_queries("clustered", 1000, 256, 50, seed=0)
    best = (queries @ directions.T).max(1)
    assert abs(best.mean() - benchmark_search.QUERY_COSINE) < 0.05
    uniform = benchmark_search.make_queries("uniform", 1000, 256, 50, seed=0)
    assert np.abs(uniform @ directions.T).max() < 0.4 and np.allclose(np.linalg.norm(uniform, axis=1), 1)


@pytest.mark.slow
def test_scale_rows(tmp_path):
    rows = benchmark_search.scale([3000], ["clustered"], 32, 4, 0, str(tmp_path))
    exact = rows[0]
    assert (exact["backend"], exact["windows"], exact["recall_at_10"]) == ("exact", 3000, 1.0)
    assert exact["peak_mb"] >= exact["baseline_mb"] > 0 and exact["median_s"] > 0
    if len(rows) == 2:   # faiss-cpu installed
        assert rows[1]["backend"] == "faiss" and 0 <= rows[1]["recall_at_10"] <= 1 and rows[1]["ef_search"] >= 16
