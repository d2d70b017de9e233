"""Video search at scale: query latency and peak memory against index size, and indexing throughput.

    python scripts/benchmark_search.py scale --sizes 10000 100000 1000000 --json docs/bench_search.json
    python scripts/benchmark_search.py throughput --device cpu --json docs/bench_search_throughput.json

`scale` fills a real index (`search.store`: SQLite manifest, float16 shards) with N windows of
random unit vectors (100 windows per file) and times `search.query.search` (the 10 best moments of
one query: ranking, manifest look-ups, merging) per query, exact and through the faiss graph
(`search.ann`, built from the shards; skipped without faiss-cpu). Each backend runs in a process
of its own, so its peak memory (VmHWM: the peak resident set since it started, memory-mapped
shard pages included) is its own; `baseline_mb` is that process's resident set before its first
query (Python, torch, numpy), `load` the machine's load average then. The first query is a
warm-up (it loads the graph, and the shards into the page cache); latencies are medians over the
other queries. recall@10 is the share of the exact 10 best windows among the 10 best the graph
gives when `search` asks it for the windows of 10 moments (160: the graph searches at least that
deep), on this run's queries. Data:

- `uniform`: windows and queries uniform on the sphere, no structure (the worst case for an
  approximate index: a query's nearest windows lie in no particular region);
- `clustered`: each file's windows around a direction of its own (cosine about 0.8 to it, as the
  windows of one recording resemble each other), queries near a file's direction (cosine about 0.5).

`throughput` indexes a generated video (moving shapes, H.264) with a randomly initialised model
and reports video seconds indexed per wall second, decoding included: the demo's model (tiny CLIP,
32 px, 4 frames per window) and a ViT-B/32-size STOP (224 px, 12 frames per window), at the batch
size and precision given (`--device cuda --batch_size 32 --precision amp_bf16` on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import params  # noqa: E402
from dataloaders.synthetic import write_mp4  # noqa: E402
from engine.checkpoint import trainable_state_dict  # noqa: E402
from engine.factory import build_trained_model  # noqa: E402
from engine.optim import trainable_names  # noqa: E402
from search import ann  # noqa: E402
from search.index import build_index  # noqa: E402
from search.query import POOL_PER_MOMENT, search, searcher  # noqa: E402
from search.store import FileProgress, IndexStore, NewWindow  # noqa: E402

WINDOWS_PER_FILE = 100
SHARD_ROWS = 65_536
WINDOW_COSINE, QUERY_COSINE = 0.8, 0.5   # clustered data: window and query against their file's direction
THROUGHPUT_MODELS = {
    "demo (tiny CLIP, 32 px, 4 frames)": ["--demo"],
    "ViT-B/32 STOP (224 px, 12 frames)": ["--clip_init", "random", "--clip_arch", "ViT-B/32"],
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _around(directions: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at about `cosine` to each of the unit `directions` `[n, D]`."""
    noise = rng.standard_normal(directions.shape, dtype=np.float32) / np.sqrt(directions.shape[1])
    return _unit(directions + noise * np.sqrt(1 / cosine ** 2 - 1))


def _directions(kind: str, files: int, dim: int, seed: int) -> np.ndarray | None:
    if kind == "uniform":
        return None
    return _unit(np.random.default_rng([seed, 1]).standard_normal((files, dim), dtype=np.float32))


def fill_store(folder: str, size: int, dim: int, kind: str, seed: int) -> None:
    """An index of `size` windows of `kind` data (module docstring) in `folder`."""
    store = IndexStore.open(folder, create=True)
    files = -(-size // WINDOWS_PER_FILE)
    store.set_meta(version=2, videos_dir="/benchmark", dim=dim, frames_per_window=12, segment=10.0, stride=5.0,
                   model={"checkpoint": "none", "sha256": "0" * 64, "clip_weights": None, "args": {}})
    store.update_files({f"video{i:07d}.mp4": (0, 0) for i in range(files)}, {}, [])
    ids = [entry.id for entry in store.files().values()]
    directions = _directions(kind, files, dim, seed)
    rng = np.random.default_rng(seed)
    for start in range(0, size, SHARD_ROWS):
        rows = np.arange(start, min(size, start + SHARD_ROWS))
        owners = rows // WINDOWS_PER_FILE
        embeddings = (_unit(rng.standard_normal((len(rows), dim), dtype=np.float32)) if directions is None
                      else _around(directions[owners], WINDOW_COSINE, rng))
        windows = [NewWindow(ids[f], int(r % WINDOWS_PER_FILE), int(r % WINDOWS_PER_FILE) * 125,
                             int(r % WINDOWS_PER_FILE) * 125 + 250, [0], [0]) for r, f in zip(rows, owners)]
        store.commit(windows, embeddings, {ids[f]: FileProgress(WINDOWS_PER_FILE, "ok", 25.0)
                                           for f in np.unique(owners)})
    store.close()


def make_queries(kind: str, size: int, dim: int, count: int, seed: int) -> np.ndarray:
    """float32 `[count, D]` query embeddings for `kind` data of `size` windows."""
    rng = np.random.default_rng([seed, 2])
    directions = _directions(kind, -(-size // WINDOWS_PER_FILE), dim, seed)
    if directions is None:
        return _unit(rng.standard_normal((count, dim), dtype=np.float32))
    return _around(directions[rng.integers(0, len(directions), count)], QUERY_COSINE, rng)


def measure(folder: str, backend: str, queries_file: str) -> dict[str, Any]:
    """In this process: latency of `search` per query and peak memory; the best 10 window ids."""
    queries = np.load(queries_file)
    baseline = _status_mb("VmRSS")
    store = IndexStore.open(folder)
    start = time.perf_counter()
    top_k = searcher(store, backend)
    load = time.perf_counter() - start
    times = []
    for query in queries:
        start = time.perf_counter()
        search(store, query[None], 10, None, top_k)
        times.append(time.perf_counter() - start)
    _, ids = top_k(queries, 10 * POOL_PER_MOMENT)   # the windows `search` ranks for 10 moments
    return {"load": os.getloadavg()[0], "load_s": load, "first_s": times[0],
            "median_s": statistics.median(times[1:]), "max_s": max(times[1:]),
            "baseline_mb": baseline, "peak_mb": _status_mb("VmHWM"),
            "top10": [row[:10].tolist() for row in ids]}


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: resident now; VmHWM: its
    peak since exec, unlike ru_maxrss, which keeps the parent's peak at fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


def scale(sizes: list[int], kinds: list[str], dim: int, count: int, seed: int, work: str) -> list[dict[str, Any]]:
    rows = []
    for kind in kinds:
        for size in sizes:
            folder = os.path.join(work, f"{kind}-{size}")
            start = time.perf_counter()
            fill_store(folder, size, dim, kind, seed)
            fill_seconds = time.perf_counter() - start
            queries_file = os.path.join(work, f"{kind}-{size}-queries.npy")
            np.save(queries_file, make_queries(kind, size, dim, count, seed))
            backends = {"exact": _child(folder, "exact", queries_file)}
            build = {}
            if ann.available():
                store = IndexStore.open(folder)
                start = time.perf_counter()
                info = ann.update(store, progress=False, min_windows=0)   # a graph for every size
                build = {"build_s": time.perf_counter() - start, "ef_search": info["ef_search"],
                         "index_recall_at_10": info["recall_at_10"],
                         "graph_mb": os.path.getsize(os.path.join(folder, info["file"])) / 2 ** 20}
                store.close()
                backends["faiss"] = _child(folder, "faiss", queries_file)
            exact = backends["exact"]["top10"]
            for backend, result in backends.items():
                found = result.pop("top10")
                recall = np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact, found)])
                rows.append({"data": kind, "windows": size, "backend": backend, **result, "recall_at_10": recall,
                             "fill_s": fill_seconds, **(build if backend == "faiss" else {})})
                print(_scale_line(rows[-1]), flush=True)
            shutil.rmtree(folder)
    return rows


def _child(folder: str, backend: str, queries_file: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "measure", folder, backend, queries_file],
                         stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def _scale_line(row: dict[str, Any]) -> str:
    extra = (f" | graph built in {row['build_s']:.0f} s, efSearch {row['ef_search']}, {row['graph_mb']:.0f} MB"
             if row["backend"] == "faiss" else "")
    return (f"{row['data']:9s} {row['windows']:>9,} {row['backend']:5s} median {row['median_s'] * 1000:8.1f} ms "
            f"(load {row['load_s']:.1f} s, first {row['first_s'] * 1000:.0f} ms, max {row['max_s'] * 1000:7.1f} ms) "
            f"peak {row['peak_mb']:6.0f} MB "
            f"(baseline {row['baseline_mb']:4.0f}) recall@10 {row['recall_at_10']:.3f} load {row['load']:.1f}"
            f"{extra}")


def write_video(path: str, seconds: float, fps: int, width: int, height: int, seed: int) -> None:
    """An H.264 video of coloured squares moving over a changing background."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * fps)
    y, x = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), np.uint8)
    colours = rng.integers(0, 256, (8, 3))
    for t in range(frames):
        scene = t // (fps * 5)   # a new scene every 5 s
        background = (x * (scene % 3 + 1) + y * (scene % 5 + 1) + t) % 256
        video[t] = np.stack([background, np.roll(background, scene * 7, 1), 255 - background], -1)
        left, top = (t * 4 + scene * 50) % (width - 60), (t * 3 + scene * 30) % (height - 60)
        video[t, top:top + 60, left:left + 60] = colours[scene % len(colours)]
    write_mp4(path, video, fps)


def throughput(device: str, batch_size: int | None, precision: str, seconds: float, seed: int,
               work: str) -> list[dict[str, Any]]:
    video_dir = os.path.join(work, "videos")
    os.makedirs(video_dir, exist_ok=True)
    write_video(os.path.join(video_dir, "long.mp4"), seconds, 25, 640, 360, seed)
    rows = []
    for name, flags in THROUGHPUT_MODELS.items():
        args = params.get_args([*flags, "--precision", precision, "--num_workers", "1"])
        model = build_trained_model(args)
        checkpoint = os.path.join(work, "model.pt")
        torch.save({"args": vars(args), "model": trainable_state_dict(model, trainable_names(model))}, checkpoint)
        index = os.path.join(work, f"index-{len(rows)}")
        summary = build_index(checkpoint, video_dir, index, segment=10.0, stride=5.0, device=device,
                              batch_size=batch_size, progress=False)
        rows.append({"model": name, "device": device, "precision": precision if device != "cpu" else "fp32",
                     "batch_size": batch_size or args.batch_size_val, "video_seconds": summary["video_seconds"],
                     "windows": summary["windows_encoded"], "seconds": summary["seconds"],
                     "video_seconds_per_s": summary["video_seconds"] / summary["seconds"]})
        print(f"{name}: {rows[-1]['video_seconds_per_s']:.1f} video seconds per second "
              f"({summary['windows_encoded']} windows of 10 s every 5 s over {summary['video_seconds']:.0f} s of "
              f"640x360 25 fps video in {summary['seconds']:.1f} s, {device}, batch {rows[-1]['batch_size']})",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]] | dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    scale_flags = commands.add_parser("scale", help="query latency and memory against index size")
    scale_flags.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    scale_flags.add_argument("--data", nargs="+", choices=("uniform", "clustered"), default=["uniform", "clustered"])
    scale_flags.add_argument("--dim", type=int, default=512, help="embedding size (ViT-B/32: 512)")
    scale_flags.add_argument("--queries", type=int, default=21, help="queries per index (the first warms up)")
    speed = commands.add_parser("throughput", help="indexing throughput in video seconds per second")
    speed.add_argument("--device", default="cpu")
    speed.add_argument("--batch_size", type=int, default=None, help="windows per batch (default: the run's)")
    speed.add_argument("--precision", default="amp_bf16", help="autocast on CUDA (CPU runs fp32)")
    speed.add_argument("--seconds", type=float, default=60.0, help="length of the video indexed")
    for sub in (scale_flags, speed):
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
        sub.add_argument("--json", default=None, help="write the rows here")
    child = commands.add_parser("measure", help=argparse.SUPPRESS)
    child.add_argument("folder")
    child.add_argument("backend")
    child.add_argument("queries_file")
    opts = parser.parse_args(argv)
    if opts.command == "measure":
        result = measure(opts.folder, opts.backend, opts.queries_file)
        print(json.dumps(result))
        return result
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(dir=opts.work) as work:
        rows = (scale(opts.sizes, opts.data, opts.dim, opts.queries, opts.seed, work) if opts.command == "scale"
                else throughput(opts.device, opts.batch_size, opts.precision, opts.seconds, opts.seed, work))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"command": " ".join(["python", "scripts/benchmark_search.py", *(argv or sys.argv[1:])]),
                       "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
