"""Decode every video of a dataset before renting GPUs: `python -m dataloaders.check --dataset NAME
--data_path DIR --features_path DIR [--split train val test] [--video_backend pyav] [--num_workers N]`.
`python -m dataloaders.check --dataset NAME --layout` prints the files the dataset expects;
`--videos_folder` prints the folder of its videos (`--demo --videos_folder`: the demo's synthetic set).

Any other flag of `params.py` is accepted (e.g. --max_frames, --video_max_seconds). Prints the
counts of videos, captions, ok, missing, unreadable and too short (fewer frames than loaded per
video, padded with mask 0: usable), and the ids of the bad videos. Exit status 1 when a video is
missing or unreadable, else 0.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import params
from modules.errors import UserError, one_line

from . import PARSERS, build_dataset, dataset_folders, msrvtt
from .base import RetrievalDataset

MAX_IDS_SHOWN = 50


class _Probe(Dataset):
    """Per video: (video id, status, reason, frames read); decoding runs in the loader workers."""

    def __init__(self, dataset: RetrievalDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.video_ids)

    def __getitem__(self, index: int) -> tuple[str, str, str, int]:
        return (self.dataset.video_ids[index], *self.dataset.probe_video(index))


def _first(batch: list) -> tuple:
    return batch[0]


def _no_tokenizer(texts: list[str], max_words: int) -> torch.Tensor:
    raise RuntimeError("the checker reads videos only")


def check_split(dataset: RetrievalDataset, num_workers: int, progress: bool = True) -> dict:
    """Counts and bad ids of one split: {videos, captions, ok, missing, unreadable, too_short, bad}."""
    counts: Counter = Counter()
    bad: list[tuple[str, str, str]] = []
    loader = DataLoader(_Probe(dataset), batch_size=1, num_workers=num_workers,
                        collate_fn=_first)
    for video_id, status, reason, frames in tqdm(loader, desc=f"{dataset.name} {dataset.split}",
                                                 disable=not progress, unit="video"):
        counts[status] += 1
        if status != "ok":
            bad.append((video_id, status, reason))
        elif frames < dataset.num_frames:
            counts["too_short"] += 1
    return {"videos": len(dataset.video_ids), "captions": len(dataset.captions), "ok": counts["ok"],
            "missing": counts["missing"], "unreadable": counts["unreadable"],
            "too_short": counts["too_short"], "skipped": len(dataset.skipped_video_ids), "bad": bad}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--split", nargs="+", choices=("train", "val", "test"), default=["train", "val", "test"])
    parser.add_argument("--layout", action="store_true", help="print the files --dataset expects and exit")
    parser.add_argument("--videos_folder", action="store_true",
                        help="print the folder of the videos and exit (the synthetic set's is generated first)")
    own, rest = parser.parse_known_args(argv)
    args = params.get_args(rest)
    if own.layout:
        print(f"{args.dataset}: --data_path holds\n{PARSERS.get(args.dataset, msrvtt).LAYOUT}")
        return 0
    if own.videos_folder:
        print(dataset_folders(args)[1])
        return 0
    if args.dataset != "synthetic" and (args.data_path is None or args.features_path is None):
        print("error: --data_path and --features_path are required", file=sys.stderr)
        return 2
    failed = False
    for split in own.split:
        try:
            dataset = build_dataset(args, split, _no_tokenizer)
        except UserError as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            return 2
        result = check_split(dataset, args.num_workers, progress=not args.no_progress)
        print(f"[{args.dataset} {split}] videos {result['videos']}, captions {result['captions']}, "
              f"ok {result['ok']}, missing {result['missing']}, unreadable {result['unreadable']}, "
              f"too short (< {dataset.num_frames} frames, padded) {result['too_short']}")
        if result["skipped"]:
            print(f"  skipped for lack of a file (dataset convention, not an error): {result['skipped']}: "
                  f"{' '.join(dataset.skipped_video_ids[:MAX_IDS_SHOWN])}")
        for video_id, status, reason in result["bad"][:MAX_IDS_SHOWN]:
            print(f"  {status}: {video_id}: {reason}")
        if len(result["bad"]) > MAX_IDS_SHOWN:
            print(f"  ... and {len(result['bad']) - MAX_IDS_SHOWN} more")
        failed |= bool(result["missing"] or result["unreadable"])
    print("FAILED: fix or remove the videos above before training" if failed else "all videos readable")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
