"""MSR-VTT: 9k (or 7k) train videos with their 20 captions each, 1k-A test (one caption per video)."""
from __future__ import annotations

import os
from collections import defaultdict

from modules.errors import UserError

from .base import Annotations, field, group_captions, read_csv, read_json, require_file

# Seconds of video in a training clip (MSR-VTT clips run 10-32 s, 15 s on average):
# the default window of video search.
CLIP_SECONDS = 15.0
LAYOUT = """\
  MSRVTT_train.9k.csv        column video_id (or MSRVTT_train.7k.csv, see --msrvtt_train_csv)
  MSRVTT_data.json           {"sentences": [{"video_id", "caption", ...}, ...], ...} (--msrvtt_data_json)
  MSRVTT_JSFUSION_test.csv   columns key,vid_key,video_id,sentence (1k-A test; --msrvtt_test_csv)
  MSRVTT_JSFUSION_val.csv    optional, same columns; without it --val_holdout train videos are the val split
--features_path: {video_id}.mp4 (or .webm), flat folder"""
VAL_CSV = "MSRVTT_JSFUSION_val.csv"
# The files under their usual names (what the synthetic set writes).
FILES = {"train_csv": "MSRVTT_train.9k.csv", "test_csv": "MSRVTT_JSFUSION_test.csv", "data_json": "MSRVTT_data.json"}


def has_val_file(data_path: str) -> bool:
    """Whether `data_path` holds a validation csv (without one, val is held out of train)."""
    return os.path.isfile(os.path.join(data_path, VAL_CSV))


def parse(data_path: str, split: str, *, train_csv: str, test_csv: str, data_json: str,
          expand_sentences: bool = False, dataset: str = "msrvtt") -> Annotations:
    """Train: videos of `train_csv` with every caption of `data_json`; one random caption per
    video per item unless `expand_sentences`. Val/test: `test_csv` (1k-A), one caption per video;
    val is MSRVTT_JSFUSION_val.csv where there is one (else the test csv; `dataloaders.build_dataset`
    holds training videos out instead unless --val_holdout 0). File names are relative to
    `data_path` or absolute."""
    if split == "train":
        video_ids = [str(v) for v in read_csv(require_file(dataset, data_path, train_csv), ("video_id",))["video_id"]]
        data_file = require_file(dataset, data_path, data_json)
        sentences = field(read_json(data_file, dict), "sentences", data_file, "the top level")
        wanted = set(video_ids)
        captions_of: dict[str, list[str]] = defaultdict(list)
        for i, sentence in enumerate(sentences):
            video_id = field(sentence, "video_id", data_file, f"sentences[{i}]")
            if video_id in wanted:
                captions_of[video_id].append(str(field(sentence, "caption", data_file, f"sentences[{i}]")).strip())
        without = [v for v in video_ids if not captions_of[v]]
        if without:
            raise UserError(f"{dataset}: {len(without)} videos of {train_csv} have no caption in "
                            f"{data_json} (e.g. {without[:3]}); is it the matching data file?")
        annotations = group_captions(video_ids, captions_of)
        annotations.one_item_per_video = not expand_sentences
        return annotations
    name = VAL_CSV if split == "val" and has_val_file(data_path) else test_csv
    path = require_file(dataset, data_path, name)
    table = read_csv(path, ("video_id", "sentence"))  # columns read by name
    video_ids = [str(v) for v in table["video_id"]]
    if len(set(video_ids)) != len(video_ids):
        raise UserError(f"{path} lists a video twice; expected one caption per video")
    return Annotations(video_ids, [str(s).strip() for s in table["sentence"]], list(range(len(video_ids))))
