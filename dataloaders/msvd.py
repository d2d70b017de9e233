"""MSVD: 1,200 / 100 / 670 videos, ~40 captions each; every caption is a pair and a query."""
from __future__ import annotations

import pickle

from modules import errors
from modules.errors import UserError

from .base import Annotations, group_captions, read_text, require_file

# Seconds of video in a training clip (MSVD clips run about 10 s on average):
# the default window of video search.
CLIP_SECONDS = 10.0
LAYOUT = """\
  raw-captions.pkl   dict video id -> list of captions, each a list of tokens
  train_list.txt     one video id per line (also val_list.txt, test_list.txt)
--features_path: {video_id}.avi (any video extension), searched recursively"""


def read_id_list(path: str) -> list[str]:
    """Non-empty stripped lines of a split file, in order."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def parse(data_path: str, split: str, *, dataset: str = "msvd") -> Annotations:
    video_ids = read_id_list(require_file(dataset, data_path, f"{split}_list.txt"))
    path = require_file(dataset, data_path, "raw-captions.pkl")
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, IndexError) as exc:
        raise UserError(f"{path}: not a readable pickle ({type(exc).__name__}: {errors.one_line(exc)[:120]}); "
                        f"the file is damaged or truncated: download it again") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a dict video id -> captions, found a {type(raw).__name__}; "
                        f"is it the right file?")
    missing = [v for v in video_ids if not raw.get(v)]
    if missing:
        raise UserError(f"{dataset}: {len(missing)} ids of {split}_list.txt have no caption in "
                        f"{path} (e.g. {missing[:3]}); are the two files from the same release?")
    captions_of = {v: [" ".join(c) if isinstance(c, (list, tuple)) else str(c) for c in raw[v]]
                   for v in video_ids}
    return group_captions(video_ids, captions_of)
