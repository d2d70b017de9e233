"""VATEX: 10-second clips with 10 English captions each; every caption a pair and a query."""
from __future__ import annotations

import json
import os

from .base import Annotations, group_captions, require_file
from .msvd import read_id_list

OFFICIAL = ("vatex_training_v1.0.json", "vatex_validation_v1.0.json")
LAYOUT = """\
  train_list.txt, val_list.txt, test_list.txt   one clip id per line (<YouTubeID>_<start>_<end>)
  and either
  ref_captions.json                              {"<clip id>": ["caption", ...], ...}   (STOP layout)
  or the official
  vatex_training_v1.0.json, vatex_validation_v1.0.json   [{"videoID", "enCap": [...], "chCap"}, ...]
--features_path: <clip id>.mp4 (any video extension), searched recursively"""


def parse(data_path: str, split: str, *, dataset: str = "vatex") -> Annotations:
    video_ids = read_id_list(require_file(dataset, data_path, f"{split}_list.txt", LAYOUT))
    if os.path.isfile(os.path.join(data_path, "ref_captions.json")):
        with open(os.path.join(data_path, "ref_captions.json")) as f:
            captions_of = json.load(f)
    else:
        present = [n for n in OFFICIAL if os.path.isfile(os.path.join(data_path, n))]
        if not present:
            require_file(dataset, data_path, "ref_captions.json", LAYOUT)  # raises, naming the layout
        captions_of = {}
        for name in present:
            with open(os.path.join(data_path, name)) as f:
                captions_of.update({entry["videoID"]: entry["enCap"] for entry in json.load(f)})
    missing = [v for v in video_ids if not captions_of.get(v)]
    if missing:
        raise ValueError(f"{dataset}: {len(missing)} ids of {split}_list.txt have no English caption "
                         f"(e.g. {missing[:3]}); check the caption files in {data_path}")
    return group_captions(video_ids, {v: [c.strip() for c in captions_of[v]] for v in video_ids})
