"""Data pipeline: retrieval datasets over one shared base, video reading, loaders.

Public API
----------
`build_dataset(args, split, tokenizer) -> RetrievalDataset`, split in train/val/test.
    Items (dicts): `input_ids` long [L], `attention_mask` long [L] (1 where input_ids != 0),
    `video` uint8 [T, 3, S, S], `video_mask` long [T] (1 = real frame), `frame_indices` long [T]
    (the file's frame index of each frame, -1 where padded), `video_id` str,
    `video_index` int, `caption_index` int, `video_ok` int (0: `video` is a zero stand-in for an
    unreadable/missing file), `num_bad_videos` int (bad videos met for this item; in training
    they were replaced by other items). T = `TempMeConfig.from_flags(args).num_input_frames`, S = --image_size.
    Train: one item per caption (one per video with a random caption for MSR-VTT without
    --expand_msrvtt_sentences), TSN frame sampling; indexed with (epoch, index) the item's
    randomness is a function of (--seed, epoch, index). Val/test: one item per caption, segment
    centres. Without a val file, val is `--val_holdout` training videos (see `split_annotations`).
    Attributes: `video_ids` (unique videos of the split, in order), `captions`, `text_to_video`
    (caption i -> index into video_ids), `video_to_captions`, `video_paths` (None = missing),
    `skipped_video_ids` (ActivityNet ids dropped for lack of a file), `bad_videos`
    (id -> reason, this process only; see `base.py`), `val_protocol` (how val is made, one line)
    and `val_is_test` (val is the test split: model selection on test).
    Methods: `text_dataset()` -> items {input_ids, attention_mask, caption_index, video_index};
    `video_dataset()` -> items {video, video_mask, frame_indices, video_index, video_id, video_ok,
    num_bad_videos},
    every unique video once, so evaluation decodes each video once.
`build_dataloader(args, split, tokenizer) -> (DataLoader, sampler)` for the paired dataset;
`make_loader(dataset, args, train) -> (DataLoader, sampler)` for any of the three datasets.
    Training: an `EpochSampler` (random batches) or, with `--batch_sampling close_captions`, a
    `CloseCaptionSampler` (batches of groups of videos with close captions); both give the same
    global batches with one or N processes; call `sampler.set_epoch(epoch)` before each epoch. Evaluation under torch.distributed: a
    DistributedSampler (no shuffle, padded by repetition, so gather by `caption_index` /
    `video_index`), else None. `args.batch_size` is the global train batch.
`make_reader(args) -> VideoReader` reads T frames of S px as the flags say (what every split uses).
`clip_seconds(args)`: the length of the clips a model trained with these flags saw.
`VideoReader`, `VideoReadError` from `video_reader.py`.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from modules.errors import MissingFileError, UserError
from modules.tempme import TempMeConfig

from . import activitynet, didemo, lsmdc, msrvtt, msvd, synthetic, vatex
from .base import Annotations, RetrievalDataset, Tokenizer, layout_hint, video_file_index
from .samplers import CloseCaptionSampler, EpochSampler
from .video_reader import VideoReader, VideoReadError

__all__ = ["CloseCaptionSampler", "EpochSampler", "build_dataset", "build_dataloader", "clip_seconds", "make_loader",
           "make_reader", "RetrievalDataset", "VideoReader", "VideoReadError", "PARSERS"]

logger = logging.getLogger("dataloaders")
SPLITS = ("train", "val", "test")
# The parser of each `--dataset` choice (params.DATASETS) but "synthetic", which is generated in
# MSR-VTT's layout and read by its parser.
PARSERS = {"msrvtt": msrvtt, "msvd": msvd, "lsmdc": lsmdc, "activitynet": activitynet,
           "didemo": didemo, "vatex": vatex}


def dataset_folders(args: argparse.Namespace) -> tuple[str, str]:
    """(annotation folder, video folder); the synthetic dataset is generated here on first use."""
    if args.dataset == "synthetic":
        folder = synthetic.ensure_dataset(
            root=args.synthetic_dir, num_videos=args.synthetic_num_videos,
            num_test_videos=args.synthetic_num_test_videos, num_frames=args.synthetic_num_frames,
            resolution=args.synthetic_resolution, event_fraction=args.synthetic_event_fraction,
            seed=args.synthetic_seed, distractor_frames=args.synthetic_distractor_frames)
        return folder, os.path.join(folder, "videos")
    for flag in ("data_path", "features_path"):
        if getattr(args, flag) is None:
            raise UserError(f"--{flag} is required for --dataset {args.dataset}")
    if not os.path.isdir(args.data_path):
        raise MissingFileError(f"--data_path {args.data_path} is not a folder; point it at the folder holding "
                               f"the annotation files ({layout_hint(args.dataset)})")
    return args.data_path, args.features_path


def parse_annotations(args: argparse.Namespace, split: str, data_path: str) -> Annotations:
    """The split as the dataset's own files define it (see `split_annotations` for val)."""
    if args.dataset in ("msrvtt", "synthetic"):
        files = msrvtt.FILES if args.dataset == "synthetic" else {
            "train_csv": args.msrvtt_train_csv, "test_csv": args.msrvtt_test_csv, "data_json": args.msrvtt_data_json}
        return msrvtt.parse(data_path, split, **files, expand_sentences=args.expand_msrvtt_sentences,
                            dataset=args.dataset)
    return PARSERS[args.dataset].parse(data_path, split)


def split_annotations(args: argparse.Namespace, split: str, data_path: str) -> tuple[Annotations, str, bool]:
    """(annotations, how the val split is made, whether val is the test split) for `split`.

    A dataset with its own val file uses it. Without one (MSR-VTT without MSRVTT_JSFUSION_val.csv,
    ActivityNet), `--val_holdout` training videos (at most a tenth of them, drawn with `--seed`)
    form the val split, one caption each (as the test protocols), and leave the train split, so the
    best epoch is never chosen on the test split; `--val_holdout 0` (or fewer than 10 training
    videos) makes val the test split, the lineage protocol."""
    if split == "test" or getattr(PARSERS.get(args.dataset, msrvtt), "has_val_file", lambda path: True)(data_path):
        return parse_annotations(args, split, data_path), "the dataset's own val split", False
    train = parse_annotations(args, "train", data_path)
    count = min(args.val_holdout, len(train.video_ids) // 10)
    if count == 0:
        reason = "--val_holdout 0" if args.val_holdout == 0 else "fewer than 10 training videos to hold out"
        protocol = (f"val is the TEST split ({reason}): the best epoch is chosen on the test split, so the "
                    f"test metrics are optimistic")
        return (train if split == "train" else parse_annotations(args, split, data_path)), protocol, True
    held = set(np.random.default_rng(args.seed).permutation(len(train.video_ids))[:count].tolist())
    protocol = (f"val is {count} of {len(train.video_ids)} training videos held out of training "
                f"(--val_holdout, --seed {args.seed}), disjoint from the test split")
    if split == "train":
        return _keep_videos(train, [i for i in range(len(train.video_ids)) if i not in held]), protocol, False
    val = _keep_videos(train, sorted(held))
    first = [captions[0] for captions in val.captions_of_videos()]
    return Annotations(val.video_ids, [val.captions[i] for i in first], list(range(len(first)))), protocol, False


def build_dataset(args: argparse.Namespace, split: str, tokenizer: Tokenizer) -> RetrievalDataset:
    """The `split` of `args.dataset` (see the module docstring for items and attributes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_path, features_path = dataset_folders(args)
    annotations, val_protocol, val_is_test = split_annotations(args, split, data_path)
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
    frame_choice = (synthetic.event_frame_choice(args.synthetic_event_frames, data_path)
                    if args.dataset == "synthetic" else None)
    dataset = RetrievalDataset(annotations, paths, name=args.dataset, split=split, tokenizer=tokenizer,
                               max_words=args.max_words, reader=make_reader(args), train=split == "train",
                               random_frames=args.train_frame_sampling == "random", seed=args.seed,
                               frame_choice=frame_choice)
    dataset.skipped_video_ids = skipped
    dataset.val_protocol, dataset.val_is_test = val_protocol, val_is_test
    return dataset


def make_reader(args: argparse.Namespace) -> VideoReader:
    """The video reader the flags describe: `TempMeConfig.from_flags(args).num_input_frames` frames
    of `--image_size` px per video, `--video_backend`, `--video_max_seconds`, `--feature_framerate`,
    `--slice_framepos`."""
    return VideoReader(backend=args.video_backend, num_frames=TempMeConfig.from_flags(args).num_input_frames,
                       image_size=args.image_size, max_seconds=args.video_max_seconds,
                       framerate=args.feature_framerate, slice_framepos=args.slice_framepos)


def clip_seconds(args: argparse.Namespace) -> float:
    """Seconds of video in one training clip of a model trained with these flags: the synthetic
    videos' length, else the dataset's typical clip length (its parser's `CLIP_SECONDS`), at most
    `--video_max_seconds`."""
    seconds = (args.synthetic_num_frames / synthetic.FPS if args.dataset == "synthetic"
               else PARSERS[args.dataset].CLIP_SECONDS)
    return min(seconds, args.video_max_seconds) if args.video_max_seconds else seconds


def _keep_videos(annotations: Annotations, keep: list[int]) -> Annotations:
    new_index = {old: new for new, old in enumerate(keep)}
    texts = [i for i, v in enumerate(annotations.text_to_video) if v in new_index]
    return Annotations([annotations.video_ids[i] for i in keep], [annotations.captions[i] for i in texts],
                       [new_index[annotations.text_to_video[i]] for i in texts],
                       annotations.one_item_per_video)


def init_worker(worker_id: int) -> None:
    """A DataLoader worker: numpy and `random` seeded from torch's per-worker seed, and Ctrl-C
    left to the main process (a worker dying of SIGINT would make the main process fail with
    "DataLoader worker exited unexpectedly" instead of ending cleanly)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, args: argparse.Namespace, train: bool) -> tuple[DataLoader, object]:
    """DataLoader + sampler: `EpochSampler` or `CloseCaptionSampler` (`--batch_sampling`) for
    training, whose `dataset` is a `RetrievalDataset`; for evaluation a DistributedSampler
    (no shuffle) under torch.distributed, else None (in order)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    rank = torch.distributed.get_rank() if distributed else 0
    if train:
        if args.batch_size % world:
            raise UserError(f"--batch_size {args.batch_size} (global) must be divisible by the number of "
                            f"processes ({world}): pick a multiple of {world}")
        batch_size = args.batch_size // world
        if args.batch_sampling == "close_captions":
            sampler = CloseCaptionSampler(dataset, world, rank, args.seed, item_videos=dataset.item_videos(),
                                          video_texts=dataset.video_texts(), group_size=args.caption_group_size,
                                          warmup_epochs=args.close_captions_warmup)
        else:
            sampler = EpochSampler(dataset, world, rank, args.seed)
    else:
        batch_size = args.batch_size_val
        sampler = DistributedSampler(dataset, shuffle=False, drop_last=False) if distributed else None
    # Training drops the ragged last batch, unless the dataset holds no full batch at all.
    drop_last = train and len(dataset) // world >= batch_size
    # The loader's own generator: each new iterator draws its workers' base seed from it, never from
    # the global RNG, which a resumed run restores (dropout must continue its stream exactly; a run
    # that goes on reuses its persistent workers and draws nothing).
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                        num_workers=args.num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=train and args.num_workers > 0, worker_init_fn=init_worker,
                        generator=torch.Generator().manual_seed(args.seed + rank))
    return loader, sampler


def build_dataloader(args: argparse.Namespace, split: str, tokenizer: Tokenizer) -> tuple[DataLoader, object]:
    """Loader over `build_dataset(args, split, tokenizer)`; the dataset is `loader.dataset`."""
    return make_loader(build_dataset(args, split, tokenizer), args, train=split == "train")
