"""VATEX: 10-second clips with 10 English captions each; every caption a pair and a query."""
from __future__ import annotations

import os

from modules.errors import UserError

from .base import Annotations, field, group_captions, read_json, require_file
from .msvd import read_id_list

OFFICIAL = ("vatex_training_v1.0.json", "vatex_validation_v1.0.json")
# Seconds of video in a training clip (VATEX clips are 10 s):
# the default window of video search.
CLIP_SECONDS = 10.0
LAYOUT = """\
  train_list.txt, val_list.txt, test_list.txt   one clip id per line (<YouTubeID>_<start>_<end>)
  and either
  ref_captions.json                              {"<clip id>": ["caption", ...], ...}   (STOP layout)
  or the official
  vatex_training_v1.0.json, vatex_validation_v1.0.json   [{"videoID", "enCap": [...], "chCap"}, ...]
--features_path: <clip id>.mp4 (any video extension), searched recursively"""


def parse(data_path: str, split: str, *, dataset: str = "vatex") -> Annotations:
    video_ids = read_id_list(require_file(dataset, data_path, f"{split}_list.txt"))
    captions_of: dict[str, list[str]] = {}
    if os.path.exists(os.path.join(data_path, "ref_captions.json")):
        path = require_file(dataset, data_path, "ref_captions.json")
        captions_of = read_json(path, dict)
        bad = next((k for k, v in captions_of.items() if not isinstance(v, list)), None)
        if bad is not None:
            raise UserError(f"{path}: entry {bad!r} is not a list of captions; is it the right file?")
    else:
        present = [n for n in OFFICIAL if os.path.exists(os.path.join(data_path, n))]
        if not present:
            require_file(dataset, data_path, "ref_captions.json")  # raises, naming the layout
        for name in present:
            path = require_file(dataset, data_path, name)
            for i, entry in enumerate(read_json(path, list)):
                captions_of[field(entry, "videoID", path, f"entry {i}")] = field(entry, "enCap", path, f"entry {i}")
    missing = [v for v in video_ids if not captions_of.get(v)]
    if missing:
        raise UserError(f"{dataset}: {len(missing)} ids of {split}_list.txt have no English caption "
                        f"(e.g. {missing[:3]}); check the caption files in {data_path}")
    return group_captions(video_ids, {v: [str(c).strip() for c in captions_of[v]] for v in video_ids})
