"""ActivityNet Captions, paragraph-to-video: a video's sentences joined in time order form one query."""
from __future__ import annotations

import json
import logging

from .base import Annotations, require_file

logger = logging.getLogger("dataloaders")

FILES = {"train": ("train_ids.json", "train.json"), "val": ("val_ids.json", "val_1.json"),
         "test": ("val_ids.json", "val_1.json")}  # val_1 is the standard test; there is no held-out val
LAYOUT = """\
  train_ids.json, val_ids.json   JSON lists of "v_<YouTubeID>"
  train.json, val_1.json         {"v_<id>": {"duration", "timestamps": [[s, e], ...], "sentences": [...]}}
                                 (val and test both use val_1.json, the usual protocol)
--features_path: <YouTubeID>.<ext> or v_<YouTubeID>.<ext>, searched recursively
Videos without captions or without a file are skipped (with a count in the log)."""
SKIP_MISSING_VIDEOS = True


def video_keys(video_id: str) -> list[str]:
    """File stems that may hold `video_id`: with and without the `v_` prefix."""
    return [video_id, video_id[2:]] if video_id.startswith("v_") else [video_id, "v_" + video_id]


def parse(data_path: str, split: str, *, dataset: str = "activitynet") -> Annotations:
    ids_name, captions_name = FILES[split]
    with open(require_file(dataset, data_path, ids_name, LAYOUT)) as f:
        listed = json.load(f)
    with open(require_file(dataset, data_path, captions_name, LAYOUT)) as f:
        annotations = json.load(f)
    video_ids, captions = [], []
    for video_id in listed:
        entry = annotations.get(video_id)
        if not entry or not entry.get("sentences"):
            continue
        timed = sorted(zip(entry.get("timestamps") or [[0, 0]] * len(entry["sentences"]),
                           entry["sentences"]), key=lambda pair: pair[0][0])
        video_ids.append(video_id)
        captions.append(" ".join(sentence.strip() for _, sentence in timed))
    if len(video_ids) < len(listed):
        logger.info("%s %s: %d of %d listed videos have no captions in %s; skipped",
                    dataset, split, len(listed) - len(video_ids), len(listed), captions_name)
    return Annotations(video_ids, captions, list(range(len(video_ids))))
