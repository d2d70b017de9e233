"""MSR-VTT: 9k (or 7k) train videos with their 20 captions each, 1k-A test (one caption per video)."""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

import pandas as pd

from .base import Annotations, group_captions, require_file

logger = logging.getLogger("dataloaders")

LAYOUT = """\
  MSRVTT_train.9k.csv        column video_id (or MSRVTT_train.7k.csv, see --msrvtt_train_csv)
  MSRVTT_data.json           {"sentences": [{"video_id", "caption", ...}, ...], ...}
  MSRVTT_JSFUSION_test.csv   columns key,vid_key,video_id,sentence (1k-A test)
  MSRVTT_JSFUSION_val.csv    optional, same columns; without it val = the 1k-A test
--features_path: {video_id}.mp4 (or .webm), flat folder"""
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
VAL_CSV = "MSRVTT_JSFUSION_val.csv"


def parse(data_path: str, split: str, *, train_csv: str = "MSRVTT_train.9k.csv",
          expand_sentences: bool = False, dataset: str = "msrvtt") -> Annotations:
    """Train: videos of `train_csv` with every caption of MSRVTT_data.json; one random caption per
    video per item unless `expand_sentences`. Val/test: the JSFUSION csv, one caption per video."""
    if split == "train":
        video_ids = pd.read_csv(require_file(dataset, data_path, train_csv, LAYOUT))["video_id"]
        video_ids = [str(v) for v in video_ids]
        with open(require_file(dataset, data_path, "MSRVTT_data.json", LAYOUT)) as f:
            sentences = json.load(f)["sentences"]
        wanted = set(video_ids)
        captions_of: dict[str, list[str]] = defaultdict(list)
        for sentence in sentences:
            if sentence["video_id"] in wanted:
                captions_of[sentence["video_id"]].append(sentence["caption"].strip())
        without = [v for v in video_ids if not captions_of[v]]
        if without:
            raise ValueError(f"{dataset}: {len(without)} videos of {train_csv} have no caption in "
                             f"MSRVTT_data.json (e.g. {without[:3]}); is it the matching data file?")
        annotations = group_captions(video_ids, captions_of)
        annotations.one_item_per_video = not expand_sentences
        return annotations
    name = TEST_CSV
    if split == "val":
        if os.path.isfile(os.path.join(data_path, VAL_CSV)):
            name = VAL_CSV
        else:
            logger.info("%s: no %s in %s; val uses the 1k-A test csv (as CLIP4Clip does)",
                        dataset, VAL_CSV, data_path)
    table = pd.read_csv(require_file(dataset, data_path, name, LAYOUT))  # columns read by name
    video_ids = [str(v) for v in table["video_id"]]
    if len(set(video_ids)) != len(video_ids):
        raise ValueError(f"{dataset}: {name} lists a video twice; expected one caption per video")
    return Annotations(video_ids, [str(s).strip() for s in table["sentence"]], list(range(len(video_ids))))
