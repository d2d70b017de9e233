"""DiDeMo, paragraph-to-video: all descriptions of a video joined in JSON order form one query.

The reference reads only the first 30 s of each video: pass `--video_max_seconds 30`.
"""
from __future__ import annotations

import logging
import os

from .base import VIDEO_EXTENSIONS, Annotations, field, read_json, require_file
from .msvd import read_id_list

logger = logging.getLogger("dataloaders")

# Seconds of video in a training clip (paragraph retrieval over whole DiDeMo videos, 25-30 s):
# the default window of video search.
CLIP_SECONDS = 30.0
LAYOUT = """\
  train_list.txt, val_list.txt, test_list.txt   one video file name per line
  train_data.json, val_data.json, test_data.json
      [{"annotation_id", "description", "times", "video", ...}, ...], one entry per description
--features_path: the original files (<id> = name.mov/.3gp/...) or converted <id>.mp4 / <name>.mp4,
searched recursively"""


def video_keys(video_id: str) -> list[str]:
    """`x.3gp` may be on disk as `x.3gp` (full name), `x.3gp.mp4` (stem) or `x.mp4`."""
    stem, ext = os.path.splitext(video_id)
    return [video_id, stem] if ext.lower() in VIDEO_EXTENSIONS else [video_id]


def parse(data_path: str, split: str, *, dataset: str = "didemo") -> Annotations:
    listed = read_id_list(require_file(dataset, data_path, f"{split}_list.txt"))
    path = require_file(dataset, data_path, f"{split}_data.json")
    descriptions: dict[str, list[str]] = {}
    for i, entry in enumerate(read_json(path, list)):
        video = field(entry, "video", path, f"entry {i}")
        descriptions.setdefault(video, []).append(str(field(entry, "description", path, f"entry {i}")).strip())
    video_ids = [v for v in listed if descriptions.get(v)]
    if len(video_ids) < len(listed):
        logger.info("%s %s: %d of %d listed videos have no description; skipped",
                    dataset, split, len(listed) - len(video_ids), len(listed))
    captions = [" ".join(descriptions[v]) for v in video_ids]
    return Annotations(video_ids, captions, list(range(len(video_ids))))
