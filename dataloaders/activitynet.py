"""ActivityNet Captions, paragraph-to-video: a video's sentences joined in time order form one query."""
from __future__ import annotations

import logging

from modules.errors import UserError

from .base import Annotations, field, read_json, require_file

logger = logging.getLogger("dataloaders")

# val_1 is the standard test; there is no held-out val: "val" is read only with --val_holdout 0.
FILES = {"train": ("train_ids.json", "train.json"), "val": ("val_ids.json", "val_1.json"),
         "test": ("val_ids.json", "val_1.json")}
# Seconds of video in a training clip (paragraph retrieval over whole ActivityNet videos, about 2 min):
# the default window of video search.
CLIP_SECONDS = 120.0
LAYOUT = """\
  train_ids.json, val_ids.json   JSON lists of "v_<YouTubeID>"
  train.json, val_1.json         {"v_<id>": {"duration", "timestamps": [[s, e], ...], "sentences": [...]}}
                                 (test uses val_1.json; val holds --val_holdout train videos out)
--features_path: <YouTubeID>.<ext> or v_<YouTubeID>.<ext>, searched recursively
Videos without captions or without a file are skipped (with a count in the log)."""
SKIP_MISSING_VIDEOS = True


def video_keys(video_id: str) -> list[str]:
    """File stems that may hold `video_id`: with and without the `v_` prefix."""
    return [video_id, video_id[2:]] if video_id.startswith("v_") else [video_id, "v_" + video_id]


def has_val_file(data_path: str) -> bool:
    """ActivityNet Captions has no held-out val file: val is held out of train (--val_holdout)."""
    return False


def parse(data_path: str, split: str, *, dataset: str = "activitynet") -> Annotations:
    ids_name, captions_name = FILES[split]
    ids_path = require_file(dataset, data_path, ids_name)
    listed = read_json(ids_path, list)
    captions_path = require_file(dataset, data_path, captions_name)
    annotations = read_json(captions_path, dict)
    video_ids, captions = [], []
    for video_id in listed:
        if not isinstance(video_id, str):
            raise UserError(f"{ids_path}: expected a list of video ids (strings), found {video_id!r}; "
                            f"is it the right file?")
        entry = annotations.get(video_id)
        if entry is None:
            continue
        sentences = field(entry, "sentences", captions_path, f"entry {video_id!r}")
        if not sentences:
            continue
        timestamps = entry.get("timestamps") or [[0, 0]] * len(sentences)
        if len(timestamps) != len(sentences):
            raise UserError(f"{captions_path}: entry {video_id!r} has {len(timestamps)} timestamps for "
                            f"{len(sentences)} sentences; the file is damaged: download it again")
        timed = sorted(zip(timestamps, sentences), key=lambda pair: pair[0][0])
        video_ids.append(video_id)
        captions.append(" ".join(str(sentence).strip() for _, sentence in timed))
    if len(video_ids) < len(listed):
        logger.info("%s %s: %d of %d listed videos have no captions in %s; skipped",
                    dataset, split, len(listed) - len(video_ids), len(listed), captions_name)
    return Annotations(video_ids, captions, list(range(len(video_ids))))
