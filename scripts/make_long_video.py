"""A folder to try search inside long videos on: one long video made of synthetic test clips played
one after another (each clip's caption and times known), and a few short clips beside it.

    python scripts/make_long_video.py --demo --out outputs/demo/videos

writes `OUT/long.mp4` (the first `--clips` test videos of the synthetic set, back to back),
`OUT/long.tsv` (start and end seconds and caption of each of its clips) and `--short` further test
videos under `OUT/clips/`. Any other flag is main.py's and picks the synthetic set (`--demo`: the
demo's, generated first if needed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import params  # noqa: E402
from dataloaders import build_dataset  # noqa: E402
from dataloaders.synthetic import write_long_video  # noqa: E402
from modules.tokenization import tokenize  # noqa: E402


def main(argv: list[str] | None = None) -> list[tuple[float, float, str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--clips", type=int, default=30, help="test clips in the long video")
    parser.add_argument("--short", type=int, default=3, help="further test clips copied beside it")
    own, rest = parser.parse_known_args(argv)
    args = params.get_args(rest)
    if args.dataset != "synthetic":
        raise SystemExit("error: the long video is made of synthetic clips: pass --demo or --dataset synthetic")
    dataset = build_dataset(args, "test", tokenize)
    if own.clips < 1 or own.short < 0 or own.clips + own.short > len(dataset.video_paths):
        raise SystemExit(f"error: --clips {own.clips} (>= 1) and --short {own.short} (>= 0) must add up to at most "
                         f"the {len(dataset.video_paths)} test videos")
    caption_of = {video: dataset.captions[text] for text, video in enumerate(dataset.text_to_video)}
    os.makedirs(os.path.join(own.out, "clips"), exist_ok=True)
    spans = write_long_video(os.path.join(own.out, "long.mp4"), dataset.video_paths[:own.clips])
    parts = [(start, end, caption_of[video]) for video, (start, end) in enumerate(spans)]
    with open(os.path.join(own.out, "long.tsv"), "w") as f:
        f.write("start\tend\tcaption\n" + "".join(f"{start:g}\t{end:g}\t{text}\n" for start, end, text in parts))
    for path in dataset.video_paths[own.clips:own.clips + own.short]:
        shutil.copy(path, os.path.join(own.out, "clips", os.path.basename(path)))
    print(f"wrote {os.path.join(own.out, 'long.mp4')} ({spans[-1][1]:g} s: {own.clips} test clips of the synthetic "
          f"set back to back; their times and captions in {os.path.join(own.out, 'long.tsv')}) and {own.short} "
          f"short clips in {os.path.join(own.out, 'clips')}")
    return parts


if __name__ == "__main__":
    main()
