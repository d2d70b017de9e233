"""MSVD: 1,200 / 100 / 670 videos, ~40 captions each; every caption is a pair and a query."""
from __future__ import annotations

import pickle

from .base import Annotations, group_captions, require_file

LAYOUT = """\
  raw-captions.pkl   dict video id -> list of captions, each a list of tokens
  train_list.txt     one video id per line (also val_list.txt, test_list.txt)
--features_path: {video_id}.avi (any video extension), searched recursively"""


def read_id_list(path: str) -> list[str]:
    """Non-empty stripped lines of a split file, in order."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def parse(data_path: str, split: str, *, dataset: str = "msvd") -> Annotations:
    video_ids = read_id_list(require_file(dataset, data_path, f"{split}_list.txt", LAYOUT))
    with open(require_file(dataset, data_path, "raw-captions.pkl", LAYOUT), "rb") as f:
        raw = pickle.load(f)
    missing = [v for v in video_ids if not raw.get(v)]
    if missing:
        raise ValueError(f"{dataset}: {len(missing)} ids of {split}_list.txt have no caption in "
                         f"raw-captions.pkl (e.g. {missing[:3]})")
    captions_of = {v: [" ".join(c) if isinstance(c, (list, tuple)) else str(c) for c in raw[v]]
                   for v in video_ids}
    return group_captions(video_ids, captions_of)
