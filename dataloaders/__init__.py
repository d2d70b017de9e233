"""Data pipeline: retrieval datasets over one shared base, video reading, loaders.

Public API
----------
`build_dataset(args, split, tokenizer) -> RetrievalDataset`, split in train/val/test.
    Items (dicts): `input_ids` long [L], `attention_mask` long [L] (1 where input_ids != 0),
    `video` uint8 [T, 3, S, S], `video_mask` long [T] (1 = real frame), `video_id` str,
    `video_index` int, `caption_index` int, `video_ok` int (0: `video` is a zero stand-in for an
    unreadable/missing file), `num_bad_videos` int (bad videos met for this item; in training
    they were replaced by other items). T = `TempMeConfig.from_flags(args).num_input_frames`, S = --image_size.
    Train: one item per caption (one per video with a random caption for MSR-VTT without
    --expand_msrvtt_sentences), TSN frame sampling. Val/test: one item per caption, segment centres.
    Attributes: `video_ids` (unique videos of the split, in order), `captions`, `text_to_video`
    (caption i -> index into video_ids), `video_to_captions`, `video_paths` (None = missing),
    `skipped_video_ids` (ActivityNet ids dropped for lack of a file), `bad_videos`
    (id -> reason, this process only; see `base.py`).
    Methods: `text_dataset()` -> items {input_ids, attention_mask, caption_index, video_index};
    `video_dataset()` -> items {video, video_mask, video_index, video_id, video_ok, num_bad_videos},
    every unique video once, so evaluation decodes each video once.
`build_dataloader(args, split, tokenizer) -> (DataLoader, sampler)` for the paired dataset;
`make_loader(dataset, args, train) -> (DataLoader, sampler)` for any of the three datasets.
    With torch.distributed initialised the sampler is a DistributedSampler (eval: no shuffle,
    padded by repetition, so gather by `caption_index` / `video_index`); call
    `sampler.set_epoch(epoch)` when it is not None. `args.batch_size` is the global train batch.
`make_reader(args) -> VideoReader` reads T frames of S px as the flags say (what every split uses).
`VideoReader`, `normalize_video`, `CLIP_MEAN`, `CLIP_STD` from `video_reader.py`.
"""
from __future__ import annotations

import argparse
import logging
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from modules.tempme import TempMeConfig

from . import activitynet, didemo, lsmdc, msrvtt, msvd, synthetic, vatex
from .base import Annotations, RetrievalDataset, Tokenizer, video_file_index
from .video_reader import CLIP_MEAN, CLIP_STD, VideoReader, VideoReadError, normalize_video

__all__ = ["DATASETS", "build_dataset", "build_dataloader", "make_loader", "make_reader", "RetrievalDataset",
           "VideoReader", "VideoReadError", "normalize_video", "CLIP_MEAN", "CLIP_STD", "PARSERS"]

logger = logging.getLogger("dataloaders")
SPLITS = ("train", "val", "test")
PARSERS = {"msrvtt": msrvtt, "msvd": msvd, "lsmdc": lsmdc, "activitynet": activitynet,
           "didemo": didemo, "vatex": vatex}
DATASETS = (*PARSERS, "synthetic")


def dataset_folders(args: argparse.Namespace) -> tuple[str, str]:
    """(annotation folder, video folder); the synthetic dataset is generated here on first use."""
    if args.dataset == "synthetic":
        folder = synthetic.ensure_dataset(
            root=args.synthetic_dir, num_videos=args.synthetic_num_videos,
            num_test_videos=args.synthetic_num_test_videos, num_frames=args.synthetic_num_frames,
            resolution=args.synthetic_resolution, event_fraction=args.synthetic_event_fraction,
            seed=args.synthetic_seed)
        return folder, os.path.join(folder, "videos")
    for flag in ("data_path", "features_path"):
        if getattr(args, flag) is None:
            raise ValueError(f"--{flag} is required for --dataset {args.dataset}")
    if not os.path.isdir(args.data_path):
        raise FileNotFoundError(f"--data_path {args.data_path} is not a folder; expected layout:\n"
                                f"{PARSERS[args.dataset].LAYOUT}")
    return args.data_path, args.features_path


def parse_annotations(args: argparse.Namespace, split: str, data_path: str) -> Annotations:
    if args.dataset in ("msrvtt", "synthetic"):
        train_csv = "MSRVTT_train.9k.csv" if args.dataset == "synthetic" else args.msrvtt_train_csv
        return msrvtt.parse(data_path, split, train_csv=train_csv,
                            expand_sentences=args.expand_msrvtt_sentences, dataset=args.dataset)
    return PARSERS[args.dataset].parse(data_path, split)


def build_dataset(args: argparse.Namespace, split: str, tokenizer: Tokenizer) -> RetrievalDataset:
    """The `split` of `args.dataset` (see the module docstring for items and attributes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_path, features_path = dataset_folders(args)
    annotations = parse_annotations(args, split, data_path)
    parser = PARSERS.get(args.dataset, msrvtt)
    keys_of = getattr(parser, "video_keys", lambda video_id: [video_id])
    index = video_file_index(features_path)
    paths = [next((index[k] for k in keys_of(v) if k in index), None) for v in annotations.video_ids]
    skipped: list[str] = []
    if getattr(parser, "SKIP_MISSING_VIDEOS", False) and None in paths:
        keep = [i for i, p in enumerate(paths) if p is not None]
        skipped = [annotations.video_ids[i] for i, p in enumerate(paths) if p is None]
        logger.warning("%s %s: %d of %d videos have no file under %s; skipped (as the reference does)",
                       args.dataset, split, len(skipped), len(paths), features_path)
        annotations = _keep_videos(annotations, keep)
        paths = [paths[i] for i in keep]
    missing = sum(p is None for p in paths)
    if missing:
        logger.warning("%s %s: %d of %d videos have no file under %s (run python -m dataloaders.check)",
                       args.dataset, split, missing, len(paths), features_path)
    dataset = RetrievalDataset(annotations, paths, name=args.dataset, split=split, tokenizer=tokenizer,
                               max_words=args.max_words, reader=make_reader(args), train=split == "train",
                               random_frames=args.train_frame_sampling == "random")
    dataset.skipped_video_ids = skipped
    return dataset


def make_reader(args: argparse.Namespace) -> VideoReader:
    """The video reader the flags describe: `TempMeConfig.from_flags(args).num_input_frames` frames
    of `--image_size` px per video, `--video_backend`, `--video_max_seconds`."""
    return VideoReader(backend=args.video_backend, num_frames=TempMeConfig.from_flags(args).num_input_frames,
                       image_size=args.image_size, max_seconds=args.video_max_seconds)


def _keep_videos(annotations: Annotations, keep: list[int]) -> Annotations:
    new_index = {old: new for new, old in enumerate(keep)}
    texts = [i for i, v in enumerate(annotations.text_to_video) if v in new_index]
    return Annotations([annotations.video_ids[i] for i in keep], [annotations.captions[i] for i in texts],
                       [new_index[annotations.text_to_video[i]] for i in texts],
                       annotations.one_item_per_video)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a DataLoader worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, args: argparse.Namespace, train: bool) -> tuple[DataLoader, object]:
    """DataLoader + sampler (DistributedSampler under torch.distributed, else RandomSampler/None)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    if train:
        if args.batch_size % world:
            raise ValueError(f"--batch_size {args.batch_size} (global) must be divisible by the "
                             f"number of processes ({world})")
        batch_size = args.batch_size // world
    else:
        batch_size = args.batch_size_val
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, drop_last=train)
    else:
        sampler = RandomSampler(dataset) if train else None
    # Training drops the ragged last batch, unless the dataset holds no full batch at all.
    drop_last = train and len(dataset) // world >= batch_size
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                        num_workers=args.num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=train and args.num_workers > 0, worker_init_fn=seed_worker)
    return loader, sampler


def build_dataloader(args: argparse.Namespace, split: str, tokenizer: Tokenizer) -> tuple[DataLoader, object]:
    """Loader over `build_dataset(args, split, tokenizer)`; the dataset is `loader.dataset`."""
    return make_loader(build_dataset(args, split, tokenizer), args, train=split == "train")
