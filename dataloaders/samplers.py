"""Training order: which items form each global batch, drawn from (seed, epoch) alone.

`EpochSampler` (random batches) and `CloseCaptionSampler` (batches made of groups of videos whose
captions are near each other, so the contrastive loss must tell apart what their captions tell
apart) both build one *global* order per epoch, in which every consecutive block of
`--batch_size` items is one global batch; process `rank` of `world` takes every world-th item of
it. One process and N processes therefore form the same global batches, and a resumed run the
same order as an uninterrupted one. They yield `(epoch, index)`: the dataset draws an item's own
randomness (caption, frame offsets) from (seed, epoch, index).
"""
from __future__ import annotations

import heapq
import logging
import math
import random
import re
import warnings
from collections import Counter
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler

logger = logging.getLogger("dataloaders")

_WORD = re.compile(r"[a-z0-9]+")
_CHUNK = 512  # videos per similarity block: bounds the [N, chunk] scores held at once


class EpochSampler(DistributedSampler):
    """Random global batches: a permutation of the dataset drawn from (seed, epoch); call
    `set_epoch(epoch)` before each epoch. Yields `(epoch, index)` (see the module docstring)."""

    def __init__(self, dataset: Dataset, world: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)

    def global_order(self) -> list[int]:
        """Every item once, in this epoch's order (global batches are consecutive blocks)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.global_order()[:self.total_size]   # an equal share per process (drop_last)
        return ((self.epoch, index) for index in order[self.rank:self.total_size:self.num_replicas])


class CloseCaptionSampler(EpochSampler):
    """Global batches made of groups of `group_size` items whose videos have close captions.

    Each video's nearest videos by caption text (`caption_neighbours`, from the words alone) are
    computed once. Every epoch the items are shuffled (seed, epoch); in that order each item not
    yet placed opens a group, which grows by the not-yet-placed video most similar to any of its
    members (one item of it) until it is full (never two items of one video). The groups are shuffled and laid
    end to end; full groups come first so that, with `batch_size` a multiple of `group_size`,
    every full group falls inside one batch. A video then meets the videos its caption is easily
    confused with as negatives in the same batch, which random batches of a large dataset rarely do.

    Args:
        item_videos: video index of each item of the dataset (`RetrievalDataset.item_videos()`).
        video_texts: all caption text of each video.
        group_size: items per group of close captions (>= 2; `--batch_size` should be a multiple).
        warmup_epochs: the first epochs form random batches (a model that does not yet tell coarse
            differences apart learns little from near-identical negatives).
        neighbours: nearest videos kept per video (candidates when closer ones are placed already).
    """

    def __init__(self, dataset: Dataset, world: int, rank: int, seed: int, *, item_videos: Sequence[int],
                 video_texts: Sequence[str], group_size: int, warmup_epochs: int = 0, neighbours: int = 16):
        super().__init__(dataset, world, rank, seed)
        self.warmup_epochs = warmup_epochs
        if len(item_videos) != len(dataset):
            raise ValueError(f"item_videos has {len(item_videos)} entries for {len(dataset)} items")
        self.item_videos = list(item_videos)
        self.group_size = group_size
        self.neighbours = caption_neighbours(video_texts, min(neighbours, len(video_texts) - 1))

    def global_order(self) -> list[int]:
        order = super().global_order()
        if self.epoch < self.warmup_epochs:
            return order
        shuffle = random.Random(f"{self.seed}/{self.epoch}/groups")
        unplaced: dict[int, list[int]] = {}       # video -> its unplaced items, last to be taken first
        for item in reversed(order):
            unplaced.setdefault(self.item_videos[item], []).append(item)
        groups = []
        for item in order:
            video = self.item_videos[item]
            if item not in unplaced.get(video, ()):
                continue
            unplaced[video].remove(item)
            groups.append([item, *self._grow(video, unplaced)])
        shuffle.shuffle(groups)
        full = [g for g in groups if len(g) == self.group_size]
        return [item for group in full + [g for g in groups if len(g) < self.group_size] for item in group]

    def _grow(self, video: int, unplaced: dict[int, list[int]]) -> list[int]:
        """Items joining the group that `video` opens: repeatedly the unplaced video most similar to
        any member so far (so pairs of near-identical captions end up together), one item each."""
        members, taken = {video}, []
        frontier: list[tuple[float, int, int]] = []          # (-similarity, rank, video) heap
        for rank, (other, score) in enumerate(zip(*self.neighbours[video])):
            heapq.heappush(frontier, (-score, rank, other))
        while frontier and len(taken) < self.group_size - 1:
            _, _, other = heapq.heappop(frontier)
            if other in members or not unplaced.get(other):
                continue
            members.add(other)
            taken.append(unplaced[other].pop())
            for rank, (nearer, score) in enumerate(zip(*self.neighbours[other])):
                if nearer not in members:
                    heapq.heappush(frontier, (-score, rank, nearer))
        return taken


def caption_vectors(texts: Sequence[str]) -> torch.Tensor:
    """TF-IDF bag-of-words vectors of `texts`, L2-normalised: sparse `[N, V]` (COO, float32).

    Words are lower-case letter/digit runs; idf = log((1 + N) / (1 + df)) + 1, so a word in every
    text still counts a little and a rare word counts most."""
    docs = [_WORD.findall(text.lower()) for text in texts]
    vocabulary: dict[str, int] = {}
    df: Counter = Counter()
    for words in docs:
        for word in set(words):
            vocabulary.setdefault(word, len(vocabulary))
            df[word] += 1
    idf = {word: math.log((1 + len(docs)) / (1 + count)) + 1 for word, count in df.items()}
    rows, cols, values = [], [], []
    for row, words in enumerate(docs):
        weights = {word: count * idf[word] for word, count in Counter(words).items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        for word, weight in weights.items():
            rows.append(row)
            cols.append(vocabulary[word])
            values.append(weight / norm)
    return torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).view(2, -1),
                                   torch.tensor(values, dtype=torch.float32),
                                   (len(docs), max(1, len(vocabulary))), check_invariants=True).coalesce()


def caption_neighbours(texts: Sequence[str], k: int) -> list[tuple[list[int], list[float]]]:
    """For each text, the `k` most similar other texts (cosine of `caption_vectors`), most similar
    first, as (indices, similarities); ties go to the lower index. Exact, in blocks of `_CHUNK`
    rows, so 100k texts take about a minute and a few hundred MB."""
    vectors = caption_vectors(texts)
    n = vectors.shape[0]
    k = max(0, min(k, n - 1))
    if n > 20_000:
        logger.info("close-caption batches: nearest captions of %d videos (about %.0f s)", n, n * n / 2e8)
    out: list[tuple[list[int], list[float]]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # torch's "sparse support is in beta" notes
        for start in range(0, n, _CHUNK):
            rows = torch.arange(start, min(start + _CHUNK, n))
            block = vectors.index_select(0, rows).to_dense()                      # [c, V]
            scores = torch.sparse.mm(vectors, block.t().contiguous()).t()         # [c, N]
            scores[torch.arange(len(rows)), rows] = -math.inf                    # never itself
            values, candidates = scores.topk(min(n, k + 8), dim=1)
            # Ties go to the lower index (topk alone orders them arbitrarily): sort the candidates
            # by index, then stably by score.
            by_index = candidates.sort(dim=1).indices
            values, candidates = values.gather(1, by_index), candidates.gather(1, by_index)
            order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
            out.extend(zip(candidates.gather(1, order).tolist(), values.gather(1, order).tolist()))
    return out
