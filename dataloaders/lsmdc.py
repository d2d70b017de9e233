"""LSMDC (LSMDC16 challenge files): ~101k train clips, 1,000 test clips, one sentence per clip."""
from __future__ import annotations

import csv
import io

from modules.errors import UserError

from .base import Annotations, read_text, require_file

FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
         "test": "LSMDC16_challenge_1000_publictect.csv"}  # "publictect" is the real file name
# Seconds of video in a training clip (LSMDC movie clips run 2-30 s, about 5 s on average):
# the default window of video search.
CLIP_SECONDS = 5.0
LAYOUT = """\
  LSMDC16_annos_training.csv              tab-separated, no header: clip id, start/end aligned,
  LSMDC16_annos_val.csv                   start/end extracted, sentence
  LSMDC16_challenge_1000_publictect.csv   (test; the misspelling is the official name)
--features_path: <movie>/<clip id>.avi, searched recursively (ids contain dots)"""


def parse(data_path: str, split: str, *, dataset: str = "lsmdc") -> Annotations:
    path = require_file(dataset, data_path, FILES[split])
    video_ids: list[str] = []
    position: dict[str, int] = {}
    captions, text_to_video = [], []
    rows = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    for line_number, row in enumerate(rows, 1):
        if not row:
            continue
        if len(row) != 6:
            raise UserError(f"{path}: line {line_number}: expected 6 tab-separated fields (clip id, 4 times, "
                            f"sentence), got {len(row)}; is it the right file?")
        clip_id, sentence = row[0].strip(), row[5].strip()
        if clip_id not in position:
            position[clip_id] = len(video_ids)
            video_ids.append(clip_id)
        captions.append(sentence)
        text_to_video.append(position[clip_id])
    return Annotations(video_ids, captions, text_to_video)
