"""Training order: random and close-caption global batches, their determinism, resume and torchrun
layout, and the caption neighbours against a brute-force TF-IDF computation."""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import Dataset

from dataloaders.samplers import CloseCaptionSampler, EpochSampler, caption_neighbours, caption_vectors

COLOURS, SHAPES, PLACES, EVENTS = ("red", "green", "blue", "pink"), ("circle", "square", "star"), \
    ("beach", "road", "field", "kitchen"), ("a flash", "a blackout")


class _Items(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        return index


def _paired_captions() -> list[str]:
    """Pairs of captions that differ by their last words only, shuffled."""
    rng = random.Random(0)
    texts = [f"a {c} {s} moving on a {p} with {e}" for c, s, p in itertools.product(COLOURS, SHAPES, PLACES)
             for e in EVENTS]
    rng.shuffle(texts)
    return texts


def _partner(texts: list[str]) -> list[int]:
    stem = {t.rsplit(" with ", 1)[0]: [] for t in texts}
    for i, t in enumerate(texts):
        stem[t.rsplit(" with ", 1)[0]].append(i)
    return [next(j for j in stem[t.rsplit(" with ", 1)[0]] if j != i) for i, t in enumerate(texts)]


def test_caption_neighbours_match_brute_force_tfidf():
    texts = _paired_captions() + ["a red circle", "nothing in common here", "a red circle"]
    docs = [t.lower().split() for t in texts]
    vocabulary = sorted({w for d in docs for w in d})
    df = {w: sum(w in d for d in docs) for w in vocabulary}
    dense = np.array([[Counter(d)[w] * (math.log((1 + len(docs)) / (1 + df[w])) + 1) for w in vocabulary]
                      for d in docs])
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    cosine = dense @ dense.T
    np.fill_diagonal(cosine, -np.inf)
    expected = [sorted(range(len(texts)), key=lambda j: (-round(cosine[i, j], 6), j))[:5] for i in range(len(texts))]
    got = [indices for indices, _ in caption_neighbours(texts, 5)]
    for i in range(len(texts)):
        # The same set of most similar texts in the same order (up to float rounding among exact ties).
        assert [round(cosine[i, j], 5) for j in got[i]] == [round(cosine[i, j], 5) for j in expected[i]], texts[i]
    assert got[len(texts) - 3][0] == len(texts) - 1          # an identical caption is the nearest
    scores = [values for _, values in caption_neighbours(texts, 5)]
    np.testing.assert_allclose(scores[0], [cosine[0, j] for j in got[0]], rtol=1e-5)
    vectors = caption_vectors(texts).to_dense()
    np.testing.assert_allclose(vectors.norm(dim=1).numpy(), 1.0, rtol=1e-6)


def _close_sampler(texts: list[str], world: int = 1, rank: int = 0, seed: int = 0, group: int = 4,
                   item_videos: list[int] | None = None) -> CloseCaptionSampler:
    items = item_videos if item_videos is not None else list(range(len(texts)))
    return CloseCaptionSampler(_Items(len(items)), world, rank, seed, item_videos=items, video_texts=texts,
                               group_size=group)


def _order(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return [index for e, index in sampler if e == epoch]


def test_close_caption_batches_hold_the_captions_a_video_is_confused_with():
    texts, batch = _paired_captions(), 16
    partner = _partner(texts)
    close = _order(_close_sampler(texts), 0)
    shuffled = _order(EpochSampler(_Items(len(texts)), 1, 0, seed=0), 0)
    assert sorted(close) == list(range(len(texts)))          # every item once per epoch

    def together(order: list[int]) -> float:
        batch_of = {item: position // batch for position, item in enumerate(order)}
        return sum(batch_of[i] == batch_of[partner[i]] for i in range(len(texts))) / len(texts)

    assert together(close) >= 0.9 and together(shuffled) < 0.3
    # Each full group of 4 shares at least 2 of its 3 content words with its first member.
    for start in range(0, 80, 4):
        words = [set(texts[i].split()) for i in close[start:start + 4]]
        assert all(len(words[0] & w) >= len(words[0]) - 3 for w in words[1:])


def test_orders_depend_on_seed_and_epoch_only():
    texts = _paired_captions()
    a, b = _close_sampler(texts), _close_sampler(texts)
    for epoch in range(3):
        _order(a, epoch)                                       # a has walked through earlier epochs
    assert _order(a, 3) == _order(b, 3)                        # a fresh sampler (a resumed run) agrees
    assert _order(b, 3) != _order(b, 4)
    assert _order(_close_sampler(texts, seed=1), 3) != _order(b, 3)


def test_several_processes_form_the_one_process_batches():
    """Rank r takes every world-th item of the global order, so the local batches of the ranks
    together are the global batch of a single process (what the all-gathered loss sees)."""
    texts, world, batch = _paired_captions(), 2, 16
    single = _order(_close_sampler(texts), 5)
    ranks = [_order(_close_sampler(texts, world=world, rank=r), 5) for r in range(world)]
    local = batch // world
    for i in range(len(single) // batch):
        together = sorted(x for r in ranks for x in r[i * local:(i + 1) * local])
        assert together == sorted(single[i * batch:(i + 1) * batch])


def test_many_items_per_video_never_share_a_group():
    texts = _paired_captions()
    item_videos = [v for v in range(len(texts)) for _ in range(3)]      # 3 captions (items) per video
    order = _order(_close_sampler(texts, item_videos=item_videos), 0)
    assert sorted(order) == list(range(len(item_videos)))
    groups = [order[i:i + 4] for i in range(0, len(order) - len(order) % 4, 4)]
    full_groups = groups[:len(texts) * 3 // 4 - 8]               # the leftovers come last
    assert all(len({item_videos[i] for i in g}) == 4 for g in full_groups)


@pytest.mark.parametrize("group", [2, 4])
def test_group_sizes(group):
    texts = _paired_captions()
    order = _order(_close_sampler(texts, group=group), 0)
    partner = _partner(texts)
    first_groups = [order[i:i + group] for i in range(0, 40, group)]
    assert sum(partner[g[0]] in g for g in first_groups) >= 0.8 * len(first_groups)
