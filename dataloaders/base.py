"""The one dataset class every retrieval dataset uses, and what the per-dataset parsers return.

A parser (`msrvtt.py`, `msvd.py`, ...) turns annotation files into `Annotations`: the split's
unique `video_ids`, its `captions`, and `text_to_video` (caption i -> index into `video_ids`).
`RetrievalDataset` adds video lookup, frame reading, tokenisation and failure handling.

Failure counting across processes: DataLoader workers are separate processes, so a set kept on
the dataset object only sees the reads of its own process. Every item therefore carries
`video_ok` (1 when `video` holds decoded frames, 0 for the zero-frame stand-in) and
`num_bad_videos` (unreadable/missing videos met while producing the item: in training the ones
that were replaced); the engine sums them on the main side. `bad_videos` (video id -> reason)
is complete only with `num_workers=0` (or in `python -m dataloaders.check`).
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset

from .video_reader import VideoReader, VideoReadError

logger = logging.getLogger("dataloaders")

Tokenizer = Callable[[list[str], int], torch.Tensor]
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".3gp",
                    ".flv", ".wmv", ".ogv")  # preference order when one stem has several files
MAX_TRAIN_REPLACEMENTS = 20


@dataclass
class Annotations:
    """One split of a dataset as parsed from its annotation files.

    `one_item_per_video`: training draws one random caption of each video per item (MSR-VTT
    without `--expand_msrvtt_sentences`) instead of iterating over every caption.
    """
    video_ids: list[str]
    captions: list[str]
    text_to_video: list[int]
    one_item_per_video: bool = False


def require_file(dataset: str, data_path: str, name: str, layout: str) -> str:
    """Path of annotation file `name` under `data_path`, or a FileNotFoundError showing `layout`."""
    path = os.path.join(data_path, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{dataset}: annotation file not found: {path}\n"
            f"Expected layout of --data_path ({data_path}):\n{layout.rstrip()}\n"
            f"See the data section of README.md for where to get the files.")
    return path


def group_captions(video_ids: list[str], captions_of: dict[str, list[str]]) -> Annotations:
    """Annotations where every caption of every video (in `video_ids` order) is one text."""
    captions, text_to_video = [], []
    for index, video_id in enumerate(video_ids):
        for caption in captions_of[video_id]:
            captions.append(caption)
            text_to_video.append(index)
    return Annotations(list(video_ids), captions, text_to_video)


_INDEX_CACHE: dict[str, dict[str, str]] = {}


def video_file_index(features_path: str) -> dict[str, str]:
    """Map file stem and full file name -> path for every video file under `features_path` (recursive).

    The stem drops only the last extension, so LSMDC ids with dots and DiDeMo's `x.3gp.mp4` keep
    their id. Where one stem has several files, the earlier entry of VIDEO_EXTENSIONS wins
    (MSR-VTT: .mp4 before .webm). Built once per folder and process.
    """
    key = os.path.abspath(features_path)
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    if not os.path.isdir(features_path):
        raise FileNotFoundError(f"--features_path {features_path} is not a folder of videos")
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    best: dict[str, tuple[int, str]] = {}
    for root, _, files in os.walk(features_path, followlinks=True):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in rank:
                continue
            path = os.path.join(root, name)
            for k in (stem, name):
                if k not in best or rank[ext.lower()] < best[k][0]:
                    best[k] = (rank[ext.lower()], path)
    _INDEX_CACHE[key] = {k: path for k, (_, path) in best.items()}
    return _INDEX_CACHE[key]


class RetrievalDataset(Dataset):
    """Text-video pairs of one split; see `dataloaders/__init__.py` for the item format.

    Args:
        annotations: the parsed split.
        video_paths: file of each entry of `annotations.video_ids` (None: missing).
        name, split: for messages ("msrvtt", "test").
        tokenizer: `tokenize(texts, max_words) -> LongTensor [N, max_words]`, 0 = padding.
        max_words: caption length L.
        reader: decodes T frames per video.
        train: TSN sampling, random caption per video where the parser asks for it, and
            replacement of unreadable videos; otherwise segment centres and zero frames.
        random_frames: with `train`, TSN random offsets (True) or segment centres (False,
            `--train_frame_sampling uniform`).
    """

    def __init__(self, annotations: Annotations, video_paths: list[str | None], *, name: str,
                 split: str, tokenizer: Tokenizer, max_words: int, reader: VideoReader, train: bool,
                 random_frames: bool = True):
        if not annotations.captions:
            raise ValueError(f"{name} {split}: the annotation files give no captions")
        self.name, self.split, self.train = name, split, train
        self.random_frames = random_frames  # train only: TSN offsets, else segment centres
        self.video_ids = annotations.video_ids
        self.captions = annotations.captions
        self.text_to_video = annotations.text_to_video
        self.video_paths = video_paths
        self.video_to_captions: list[list[int]] = [[] for _ in self.video_ids]
        for caption_index, video_index in enumerate(self.text_to_video):
            self.video_to_captions[video_index].append(caption_index)
        self.one_item_per_video = train and annotations.one_item_per_video
        self.tokenizer, self.max_words, self.reader = tokenizer, max_words, reader
        self.num_frames = reader.num_frames
        self.bad_videos: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.video_ids) if self.one_item_per_video else len(self.captions)

    def __getitem__(self, index: int) -> dict:
        num_bad = 0
        for _ in range(MAX_TRAIN_REPLACEMENTS + 1):
            if self.one_item_per_video:
                video_index = index
                caption_index = random.choice(self.video_to_captions[video_index])
            else:
                caption_index, video_index = index, self.text_to_video[index]
            video, mask, ok = self.load_video(video_index, train=self.train)
            if ok or not self.train:
                return {**self.encode_text(caption_index), "video": video, "video_mask": mask,
                        "video_id": self.video_ids[video_index], "video_index": video_index,
                        "video_ok": int(ok), "num_bad_videos": num_bad + int(not ok)}
            num_bad += 1
            index = random.randrange(len(self))
        raise RuntimeError(
            f"{self.name} {self.split}: {num_bad} videos in a row could not be read "
            f"(last reasons: {list(self.bad_videos.values())[-3:]}); "
            f"run `python -m dataloaders.check --dataset {self.name} ...` to list the bad files")

    def encode_text(self, caption_index: int) -> dict:
        """`input_ids` / `attention_mask` long `[L]` and `caption_index` of one caption."""
        ids = self.tokenizer([self.captions[caption_index]], self.max_words)[0].long()
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "caption_index": caption_index}

    def probe_video(self, video_index: int, train: bool = False) -> tuple[str, str, int]:
        """(status, reason, frames read) with status "ok", "missing" or "unreadable"; no logging."""
        path = self.video_paths[video_index]
        if path is None:
            return "missing", "no video file with this id under --features_path", 0
        try:
            _, mask = self.reader.read(path, train=train)
        except (VideoReadError, OSError) as exc:
            return "unreadable", str(exc), 0
        return "ok", "", int(mask.sum())

    def load_video(self, video_index: int, train: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """uint8 `[T, 3, S, S]`, mask long `[T]`, ok; a failure gives zeros, mask 0, logged once."""
        path = self.video_paths[video_index]
        try:
            if path is None:
                raise VideoReadError(f"<{self.video_ids[video_index]}>", "missing: no video file with this id "
                                     "under --features_path")
            video, mask = self.reader.read(path, train=train and self.random_frames)
            return video, mask, True
        except (VideoReadError, OSError) as exc:
            video_id = self.video_ids[video_index]
            if video_id not in self.bad_videos:
                self.bad_videos[video_id] = str(exc)
                action = "replaced by another video" if train else "zero frames with mask 0"
                logger.warning("%s %s: bad video %s (%s); %s", self.name, self.split, video_id, exc, action)
            size = self.reader.image_size
            return (torch.zeros(self.num_frames, 3, size, size, dtype=torch.uint8),
                    torch.zeros(self.num_frames, dtype=torch.long), False)

    def text_dataset(self) -> "TextDataset":
        """Every caption once: items {input_ids, attention_mask, caption_index, video_index}."""
        return TextDataset(self)

    def video_dataset(self) -> "VideoDataset":
        """Every unique video once, eval sampling: items {video, video_mask, video_index, video_id, video_ok}."""
        return VideoDataset(self)


class TextDataset(Dataset):
    """Captions of a `RetrievalDataset`, for encoding texts separately from videos."""

    def __init__(self, parent: RetrievalDataset):
        self.parent = parent

    def __len__(self) -> int:
        return len(self.parent.captions)

    def __getitem__(self, index: int) -> dict:
        return {**self.parent.encode_text(index), "video_index": self.parent.text_to_video[index]}


class VideoDataset(Dataset):
    """Unique videos of a `RetrievalDataset` (segment-centre sampling), each decoded once."""

    def __init__(self, parent: RetrievalDataset):
        self.parent = parent

    def __len__(self) -> int:
        return len(self.parent.video_ids)

    def __getitem__(self, index: int) -> dict:
        video, mask, ok = self.parent.load_video(index, train=False)
        return {"video": video, "video_mask": mask, "video_index": index,
                "video_id": self.parent.video_ids[index], "video_ok": int(ok),
                "num_bad_videos": int(not ok)}
