"""A folder to try search inside long videos on: one long video made of synthetic test clips played
one after another (each clip's caption and times known), and a few short clips beside it.

    python scripts/make_long_video.py --demo --out outputs/demo/videos

writes `OUT/long.mp4` (the first `--clips` test videos of the synthetic set, back to back),
`OUT/long.tsv` (start and end seconds, source file and caption of each of its clips) and `--short`
further test videos under `OUT/clips/`. Any other flag is main.py's and picks the synthetic set
(`--demo`: the demo's, generated first if needed).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from dataclasses import astuple, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import params  # noqa: E402
from dataloaders import build_dataset  # noqa: E402
from dataloaders.base import RetrievalDataset  # noqa: E402
from dataloaders.synthetic import write_long_video  # noqa: E402
from modules.tokenization import tokenize  # noqa: E402

LONG, PARTS = "long.mp4", "long.tsv"


@dataclass
class Part:
    """A clip of the long video: its span in seconds, its source file (name) and caption."""
    start: float
    end: float
    clip: str
    caption: str


def make_folder(dataset: RetrievalDataset, out: str, clips: int, short: int) -> list[Part]:
    """Write the long video of `dataset`'s first `clips` videos, its parts file and `short` further
    videos under `out/clips/`; returns the parts."""
    if clips < 1 or short < 0 or clips + short > len(dataset.video_paths):
        raise SystemExit(f"error: --clips {clips} (>= 1) and --short {short} (>= 0) must add up to at most the "
                         f"{len(dataset.video_paths)} test videos")
    caption_of = {video: dataset.captions[text] for text, video in enumerate(dataset.text_to_video)}
    os.makedirs(os.path.join(out, "clips"), exist_ok=True)
    spans = write_long_video(os.path.join(out, LONG), dataset.video_paths[:clips])
    parts = [Part(start, end, os.path.basename(dataset.video_paths[video]), caption_of[video])
             for video, (start, end) in enumerate(spans)]
    with open(os.path.join(out, PARTS), "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["start", "end", "clip", "caption"])
        writer.writerows(astuple(part) for part in parts)
    for path in dataset.video_paths[clips:clips + short]:
        shutil.copy(path, os.path.join(out, "clips", os.path.basename(path)))
    return parts


def read_parts(folder: str) -> list[Part]:
    """The parts of `folder`'s long video, as `make_folder` wrote them."""
    with open(os.path.join(folder, PARTS), newline="") as f:
        return [Part(float(row["start"]), float(row["end"]), row["clip"], row["caption"])
                for row in csv.DictReader(f, delimiter="\t")]


def main(argv: list[str] | None = None) -> list[Part]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--clips", type=int, default=30, help="test clips in the long video")
    parser.add_argument("--short", type=int, default=3, help="further test clips copied beside it")
    own, rest = parser.parse_known_args(argv)
    args = params.get_args(rest)
    if args.dataset != "synthetic":
        raise SystemExit("error: the long video is made of synthetic clips: pass --demo or --dataset synthetic")
    parts = make_folder(build_dataset(args, "test", tokenize), own.out, own.clips, own.short)
    print(f"wrote {os.path.join(own.out, LONG)} ({parts[-1].end:g} s: {own.clips} test clips of the synthetic set "
          f"back to back; their times and captions in {os.path.join(own.out, PARTS)}) and {own.short} short clips "
          f"in {os.path.join(own.out, 'clips')}")
    return parts


if __name__ == "__main__":
    main()
