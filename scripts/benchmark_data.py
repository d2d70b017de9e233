"""Data-loader throughput: videos/s for T=12 and T=48, 0, 2 and N workers, decord and PyAV.

    python scripts/benchmark_data.py                       # synthetic 224 px, 96-frame clips
    python scripts/benchmark_data.py --dataset msrvtt --data_path ANN --features_path VIDEOS

Measures the training loader (TSN sampling, resize + crop to --image_size, uint8 batches) over
`--num_batches` batches after one warm-up batch; prints a table and optionally writes JSON.
Other flags are those of params.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import params  # noqa: E402
from dataloaders import build_dataset, make_loader  # noqa: E402


def _tokenize(texts: list[str], max_words: int) -> torch.Tensor:
    """Constant ids: the benchmark times video loading, not BPE."""
    return torch.ones(len(texts), max_words, dtype=torch.long)


def measure(args: argparse.Namespace, num_batches: int) -> float:
    loader, _ = make_loader(build_dataset(args, "train", _tokenize), args, train=True)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first decode are not throughput
    start, videos = time.perf_counter(), 0
    for _ in range(num_batches):
        videos += next(iterator)["video"].shape[0]
    seconds = time.perf_counter() - start
    del iterator, loader
    return videos / seconds


def main(argv: list[str] | None = None) -> None:
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    own.add_argument("--frames", type=int, nargs="+", default=[12, 48])
    own.add_argument("--workers", type=int, nargs="+", default=None, help="default: 0 2 os.cpu_count()")
    own.add_argument("--backends", nargs="+", default=["decord", "pyav"])
    own.add_argument("--num_batches", type=int, default=6)
    own.add_argument("--json", default=None, help="also write the results here")
    mine, rest = own.parse_known_args(argv)
    defaults = ["--dataset", "synthetic", "--synthetic_num_videos", "64", "--synthetic_num_test_videos", "8",
                "--synthetic_num_frames", "96", "--synthetic_resolution", "224", "--image_size", "224",
                "--batch_size", "8"]
    base = params.get_args(defaults + rest)
    workers = mine.workers or sorted({0, 2, os.cpu_count() or 1})
    results = []
    print(f"dataset {base.dataset}, image_size {base.image_size}, batch {base.batch_size}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"{'backend':<8} {'T':>3} {'workers':>7} {'videos/s':>9}")
    for backend in mine.backends:
        for frames in mine.frames:
            for num_workers in workers:
                args = params.get_args(defaults + rest + ["--video_backend", backend, "--max_frames", str(frames),
                                                          "--num_workers", str(num_workers)])
                rate = measure(args, mine.num_batches)
                results.append(dict(backend=backend, frames=frames, workers=num_workers, videos_per_s=rate))
                print(f"{backend:<8} {frames:>3} {num_workers:>7} {rate:>9.1f}", flush=True)
    if mine.json:
        with open(mine.json, "w") as f:
            json.dump({"cpus": os.cpu_count(), "image_size": base.image_size, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
