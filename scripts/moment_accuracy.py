"""How well search finds moments inside a long video whose parts are known, against evaluation's
clip-level R@1 over the same clips.

    python scripts/make_long_video.py --demo --out outputs/demo/videos
    python scripts/moment_accuracy.py --checkpoint outputs/demo/best.pt --videos outputs/demo/videos

Indexes the folder's `long.mp4` alone (the checkpoint's default windows) and asks for the best
moment of each part's caption: a hit when it overlaps the part with a temporal IoU of at least
`IOU_HIT`. Then indexes the parts' source clips, one window per file (`--segment 0`, frames
spread over the clip as evaluation reads it), and counts the captions whose own clip ranks
first: evaluation's t2v R@1 over the same clips. The source clips are looked up in `--clips`
(default: the checkpoint's synthetic set); scratch indexes go to `--work` (default: temporary).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders import dataset_folders  # noqa: E402
from engine.distributed import resolve_device  # noqa: E402
from engine.factory import model_from_checkpoint  # noqa: E402
from scripts.make_long_video import LONG, read_parts  # noqa: E402
from search.index import build_index  # noqa: E402
from search.query import encode_texts, search, searcher  # noqa: E402
from search.store import IndexStore  # noqa: E402

IOU_HIT = 0.5


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time spans (start, end)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def _best(checkpoint: str, videos: str, index: str, texts: np.ndarray, device: str, segment: float | None):
    """The best moment per text embedding `[Q, D]` over a fresh index of `videos`."""
    build_index(checkpoint, videos, index, segment=segment, device=device, progress=False)
    store = IndexStore.open(index)
    try:
        return [moments[0] for moments in search(store, texts, 1, None, searcher(store, "exact"))]
    finally:
        store.close()


def moment_accuracy(checkpoint: str, folder: str, clips: str | None, work: str, device: str = "cpu"
                    ) -> dict[str, Any]:
    """{"captions", "moment_hits" (IoU >= IOU_HIT), "moment_hit_rate" (%), "mean_iou", "clip_r1" (%)}
    of the long video in `folder` (`scripts/make_long_video.py`), its source clips under `clips`
    (None: the checkpoint's synthetic set)."""
    model, args = model_from_checkpoint(checkpoint)
    clips = clips or dataset_folders(args)[1]
    parts = read_parts(folder)
    for name, files in (("long", {LONG: os.path.join(folder, LONG)}),
                        ("clips", {part.clip: os.path.join(clips, part.clip) for part in parts})):
        os.makedirs(os.path.join(work, name))
        for file_name, source in files.items():
            os.symlink(os.path.abspath(source), os.path.join(work, name, file_name))
    resolved = resolve_device(device)
    texts = encode_texts(model.to(resolved), args, [part.caption for part in parts], resolved)
    moments = _best(checkpoint, os.path.join(work, "long"), os.path.join(work, "long_index"), texts, device, None)
    ranked_first = _best(checkpoint, os.path.join(work, "clips"), os.path.join(work, "clips_index"), texts, device,
                         0.0)
    ious = [temporal_iou((m.start, m.end), (part.start, part.end)) for m, part in zip(moments, parts)]
    hits = sum(iou >= IOU_HIT for iou in ious)
    return {"captions": len(parts), "moment_hits": hits, "moment_hit_rate": 100 * hits / len(parts),
            "mean_iou": float(np.mean(ious)),
            "clip_r1": 100 * float(np.mean([m.relpath == part.clip for m, part in zip(ranked_first, parts)]))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run's best.pt")
    parser.add_argument("--videos", required=True, help="a folder written by scripts/make_long_video.py")
    parser.add_argument("--clips", default=None, help="folder of the source clips (default: the checkpoint's "
                                                      "synthetic set)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the result here")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=opts.work) as work:
        result = moment_accuracy(opts.checkpoint, opts.videos, opts.clips, work, opts.device)
    print(f"{result['captions']} captions: the best moment overlaps the caption's clip (IoU >= {IOU_HIT}) for "
          f"{result['moment_hits']} ({result['moment_hit_rate']:.1f}%), mean IoU {result['mean_iou']:.2f}; "
          f"evaluation's t2v R@1 over the same clips: {result['clip_r1']:.1f}%")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
