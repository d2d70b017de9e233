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

import functools
import io
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import torch
from torch.utils.data import Dataset

from modules import errors
from modules.errors import MissingFileError, UserError

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

    def captions_of_videos(self) -> list[list[int]]:
        """Caption indices of each video, in `video_ids` order."""
        out: list[list[int]] = [[] for _ in self.video_ids]
        for caption, video in enumerate(self.text_to_video):
            out[video].append(caption)
        return out


def layout_hint(dataset: str) -> str:
    """Where the user finds the expected files of `dataset` (one line, for error messages)."""
    return f"expected layout: python -m dataloaders.check --dataset {dataset} --layout"


def require_file(dataset: str, data_path: str, name: str) -> str:
    """Path of annotation file `name` under `data_path`; a UserError naming it when it is a folder,
    a MissingFileError when it is missing (both point to the expected layout)."""
    path = os.path.join(data_path, name)
    if os.path.isdir(path):
        raise UserError(f"{dataset}: {path} is a folder; expected the annotation file {name} "
                        f"({layout_hint(dataset)})")
    if not os.path.isfile(path):
        raise MissingFileError(f"{dataset}: annotation file not found: {path}; put it in --data_path "
                               f"{data_path} ({layout_hint(dataset)})")
    return path


def read_text(path: str) -> str:
    """UTF-8 text of an annotation file; a byte that is not UTF-8 is a UserError naming the file
    and its line (the file is damaged or in another encoding)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; the file is "
                        f"damaged or in another encoding: download it again or convert it to UTF-8") from None


def read_json(path: str, expected_type: type) -> Any:
    """JSON of an annotation file, which must be a `expected_type` (dict or list); invalid or
    truncated JSON is a UserError naming the file, line and column."""
    try:
        content = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); the file is "
                        f"damaged or truncated: download it again") from None
    if not isinstance(content, expected_type):
        raise UserError(f"{path}: expected a JSON {'object' if expected_type is dict else 'list'} at the top "
                        f"level, found a {type(content).__name__}; is it the right file?")
    return content


def field(record: Any, key: str, path: str, where: str) -> Any:
    """`record[key]` of a JSON record; a UserError naming the file, the record (`where`, e.g.
    'sentences[12]') and the field when the record is not an object or lacks the field."""
    if not isinstance(record, dict) or key not in record:
        found = sorted(record)[:6] if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{path}: {where} has no field '{key}' (found {found}); is it the right file?")
    return record[key]


def read_csv(path: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A csv with a header row holding (at least) `columns`, read by column name; bad bytes,
    malformed rows or a missing column are a UserError naming the file."""
    try:
        table = pd.read_csv(io.StringIO(read_text(path)))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: not a readable csv ({errors.one_line(exc)}); download it again") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{path}: no column '{missing[0]}' (header: {list(table.columns)[:8]}); expected the "
                        f"columns {list(columns)}; is it the right file?")
    return table


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
        raise MissingFileError(f"--features_path {features_path} is not a folder; point it at the folder "
                               f"holding the videos")
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
        seed: with an (epoch, index) key, an item's randomness is drawn from (seed, epoch, index).
        frame_choice: `(video_id, sampled indices, usable frames) -> indices` replacing the
            sampled frames of a video (the synthetic set's event oracle and floor), or None.
    """

    def __init__(self, annotations: Annotations, video_paths: list[str | None], *, name: str,
                 split: str, tokenizer: Tokenizer, max_words: int, reader: VideoReader, train: bool,
                 random_frames: bool = True, seed: int = 0,
                 frame_choice: Callable[[str, list[int], int], list[int]] | None = None):
        if not annotations.captions:
            raise UserError(f"{name} {split}: the annotation files give no captions; check the files in "
                            f"--data_path")
        self.name, self.split, self.train = name, split, train
        self.random_frames = random_frames  # train only: TSN offsets, else segment centres
        self.seed = seed
        self.frame_choice = frame_choice
        self.video_ids = annotations.video_ids
        self.captions = annotations.captions
        self.text_to_video = annotations.text_to_video
        self.video_paths = video_paths
        self.video_to_captions = annotations.captions_of_videos()
        self.one_item_per_video = train and annotations.one_item_per_video
        self.tokenizer, self.max_words, self.reader = tokenizer, max_words, reader
        self.num_frames = reader.num_frames
        self.bad_videos: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.video_ids) if self.one_item_per_video else len(self.captions)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item `key`: an index, or `(epoch, index)` (as `EpochSampler` yields): the caption drawn
        for the video, the TSN frame offsets and the replacement of an unreadable video then come
        from a generator seeded with (seed, epoch, index), the same in every process, worker and
        resumed run. A plain index draws from the process's `random` module."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        rng = random if epoch is None else random.Random(f"{self.seed}/{epoch}/{index}")
        num_bad = 0
        for _ in range(MAX_TRAIN_REPLACEMENTS + 1):
            if self.one_item_per_video:
                video_index = index
                caption_index = rng.choice(self.video_to_captions[video_index])
            else:
                caption_index, video_index = index, self.text_to_video[index]
            video, mask, ok, frame_indices = self.load_video(video_index, train=self.train, rng=rng)
            if ok or not self.train:
                return {**self.encode_text(caption_index), "video": video, "video_mask": mask,
                        "frame_indices": frame_indices,
                        "video_id": self.video_ids[video_index], "video_index": video_index,
                        "video_ok": int(ok), "num_bad_videos": num_bad + int(not ok)}
            num_bad += 1
            index = rng.randrange(len(self))
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

    def load_video(self, video_index: int, train: bool, rng: random.Random | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor]:
        """uint8 `[T, 3, S, S]`, mask long `[T]`, ok, and the file's frame index of each frame
        (`frame_indices` long `[T]`, -1 where padded); a failure gives zeros, mask 0 and indices -1,
        logged once. `rng` draws the TSN offsets (default: the `random` module); the dataset's
        `frame_choice`, if any, replaces the sampled frames."""
        path = self.video_paths[video_index]
        video_id = self.video_ids[video_index]
        indices = torch.full((self.num_frames,), -1, dtype=torch.long)
        try:
            if path is None:
                raise VideoReadError(f"<{video_id}>", "missing: no video file with this id under --features_path")
            choose = None if self.frame_choice is None else functools.partial(self.frame_choice, video_id)
            video, mask, read = self.reader.read_with_indices(path, train=train and self.random_frames, rng=rng,
                                                              choose=choose)
            indices[:len(read)] = torch.tensor(read, dtype=torch.long)
            return video, mask, True, indices
        except (VideoReadError, OSError) as exc:
            if video_id not in self.bad_videos:
                self.bad_videos[video_id] = str(exc)
                action = "replaced by another video" if train else "zero frames with mask 0"
                logger.warning("%s %s: bad video %s (%s); %s", self.name, self.split, video_id, exc, action)
            size = self.reader.image_size
            return (torch.zeros(self.num_frames, 3, size, size, dtype=torch.uint8),
                    torch.zeros(self.num_frames, dtype=torch.long), False, indices)

    def item_videos(self) -> list[int]:
        """The video index of each item (`__getitem__` order)."""
        return list(range(len(self.video_ids))) if self.one_item_per_video else list(self.text_to_video)

    def video_texts(self) -> list[str]:
        """All caption text of each video, joined (what close-caption batches compare)."""
        return [" ".join(self.captions[c] for c in captions) for captions in self.video_to_captions]

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
        video, mask, ok, frame_indices = self.parent.load_video(index, train=False)
        return {"video": video, "video_mask": mask, "frame_indices": frame_indices, "video_index": index,
                "video_id": self.parent.video_ids[index], "video_ok": int(ok),
                "num_bad_videos": int(not ok)}
