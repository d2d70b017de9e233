"""Re-encode a video folder offline to 3 fps, short side 224 (H.264 mp4), as users of this lineage do.

    python scripts/compress_videos.py --input_dir RAW --output_dir COMPRESSED [--fps 3] [--size 224] [--workers 8]

Parallel over files, resumable: an output that already exists is skipped, and each file is
written under a temporary name and renamed when complete, so an interrupted run leaves no
half-written videos. Folder structure and file stems are kept (LSMDC ids with dots stay
intact), so the loaders find the outputs by the same ids. Failures are listed at
the end and give exit status 1.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloaders.base import VIDEO_EXTENSIONS  # noqa: E402


def output_name(relative: str) -> str:
    """`a/b.avi` -> `a/b.mp4`: the stem is the id the loaders look up (DiDeMo's `x.3gp` -> `x.mp4`
    is found through its stem too)."""
    return os.path.splitext(relative)[0] + ".mp4"


def compress(source: str, target: str, fps: float, size: int) -> str:
    """Encode `source` to `target`; returns "" on success, else the reason."""
    import av

    tmp = f"{target}.part.mp4"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with av.open(source) as src, av.open(tmp, "w") as dst:
            stream = src.streams.video[0]
            scale = size / min(stream.codec_context.width, stream.codec_context.height)
            width = max(2, round(stream.codec_context.width * scale / 2) * 2)
            height = max(2, round(stream.codec_context.height * scale / 2) * 2)
            out = dst.add_stream("libx264", rate=round(fps) if float(fps).is_integer() else fps)
            out.width, out.height, out.pix_fmt = width, height, "yuv420p"
            out.options = {"crf": "23", "preset": "fast"}
            next_time, count = 0.0, 0
            for frame in src.decode(stream):
                if frame.time is not None and frame.time + 1e-6 < next_time:
                    continue  # keep the first frame at or after every 1/fps seconds
                next_time += 1.0 / fps
                image = frame.reformat(width=width, height=height, format="yuv420p", interpolation="BICUBIC")
                image.pts, image.time_base = count, Fraction(1) / out.average_rate  # constant frame rate
                count += 1
                dst.mux(out.encode(image))
            dst.mux(out.encode())
        os.replace(tmp, target)
        return ""
    except Exception as exc:  # one bad file must not stop the batch
        if os.path.exists(tmp):
            os.remove(tmp)
        return f"{type(exc).__name__}: {exc}"


def _job(job: tuple[str, str, float, int]) -> tuple[str, str]:
    return job[0], compress(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fps", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=224, help="short side in pixels")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    jobs, done = [], 0
    for root, _, files in os.walk(args.input_dir):
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS or name.endswith(".part.mp4"):
                continue
            relative = os.path.relpath(os.path.join(root, name), args.input_dir)
            target = os.path.join(args.output_dir, output_name(relative))
            if os.path.isfile(target) and os.path.getsize(target) > 0:
                done += 1
            else:
                jobs.append((os.path.join(root, name), target, args.fps, args.size))
    print(f"{done} already done, {len(jobs)} to encode with {args.workers} workers")
    failures = []
    with ProcessPoolExecutor(args.workers) as pool:
        for source, reason in tqdm(pool.map(_job, jobs, chunksize=4), total=len(jobs), unit="video"):
            if reason:
                failures.append((source, reason))
    for source, reason in failures:
        print(f"failed: {source}: {reason}")
    return int(bool(failures))


if __name__ == "__main__":
    sys.exit(main())
