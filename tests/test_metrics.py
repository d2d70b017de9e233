"""Retrieval metrics against hand-computed cases and a brute-force loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import metrics
from engine.metrics import compute_dsl_metrics, compute_metrics


def _close(got: dict, want: dict) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value), (key, got[key], value)


def test_hand_computed_one_caption_per_video():
    sim = torch.tensor([[0.9, 0.1, 0.3],
                        [0.5, 0.4, 0.6],
                        [0.2, 0.2, 0.2]])
    out = compute_metrics(sim, torch.tensor([0, 1, 2]))
    # t2v ranks: row 0 -> 1; row 1: two higher -> 3; row 2: two ties -> 1 + 2/2 = 2.
    _close(out["t2v"], {"R1": 100 / 3, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 2.0})
    # v2t ranks per column: 1, 1, 3.
    _close(out["v2t"], {"R1": 200 / 3, "R5": 100.0, "MdR": 1.0, "MnR": 5 / 3})


def test_numpy_inputs_and_the_square_default_as_in_clip4clip():
    """CLIP4Clip calls compute_metrics(sim_matrix) with a numpy array, caption i belonging to video i."""
    sim = np.array([[0.9, 0.1, 0.3], [0.5, 0.4, 0.6], [0.2, 0.2, 0.2]])
    want = compute_metrics(torch.tensor(sim), torch.tensor([0, 1, 2]))
    assert compute_metrics(sim, np.array([0, 1, 2])) == want and compute_metrics(sim) == want
    with pytest.raises(ValueError, match="must be square"):
        compute_metrics(np.zeros((2, 3)))


def test_constant_scores_never_give_perfect_recall():
    out = compute_metrics(torch.full((4, 4), 0.3), torch.arange(4))
    for direction in ("t2v", "v2t"):
        # Average position among 4 equal scores: 1 + 3/2.
        _close(out[direction], {"R1": 0.0, "R5": 100.0, "MdR": 2.5, "MnR": 2.5})


def test_multi_caption_best_caption_against_other_videos_only():
    # captions 0,1 -> video 0; captions 2,3 -> video 1.
    sim = torch.tensor([[0.9, 0.8],
                        [0.1, 0.5],
                        [0.7, 0.6],
                        [0.3, 0.7]])
    out = compute_metrics(sim, torch.tensor([0, 0, 1, 1]))
    # t2v: caption 0 -> 1; caption 1 (0.1 < 0.5) -> 2; caption 2 (0.6 < 0.7) -> 2; caption 3 -> 1.
    _close(out["t2v"], {"R1": 50.0, "MdR": 1.5, "MnR": 1.5})
    # v2t: video 0's best caption (0.9) beats 0.7 and 0.3 -> 1.
    # video 1's best caption (0.7) is beaten only by caption 0 (0.8) -> 2; its own 0.6 is ignored.
    _close(out["v2t"], {"R1": 50.0, "R5": 100.0, "MdR": 1.5, "MnR": 1.5})


def test_multi_caption_tie_with_other_video_counts_half():
    sim = torch.tensor([[0.5, 0.5],
                        [0.2, 0.5],
                        [0.1, 0.9]])
    # Video 0 owns captions 0 and 1 (best 0.5; its own tie at 0.5 does not count), the other
    # video's caption scores 0.1 -> rank 1. Video 1's caption (0.9) -> rank 1.
    out = compute_metrics(sim, torch.tensor([0, 0, 1]))
    _close(out["v2t"], {"R1": 100.0, "MnR": 1.0})
    # Now let the other video's caption tie video 0's best caption.
    sim[2, 0] = 0.5
    out = compute_metrics(sim, torch.tensor([0, 0, 1]))
    _close(out["v2t"], {"R1": 50.0, "MnR": (1.5 + 1.0) / 2})
    # t2v: caption 0 ties its own video with video 1 -> 1.5; caption 1 -> 2; caption 2 -> 1.
    _close(out["t2v"], {"R1": 100 / 3, "MnR": 4.5 / 3})


def _brute_force(sim: torch.Tensor, t2v: torch.Tensor):
    """Independent O(N^2) loop with the same tie convention."""
    nt, nv = sim.shape
    t2v_ranks = []
    for i in range(nt):
        pos = sim[i, t2v[i]]
        others = [sim[i, j] for j in range(nv) if j != t2v[i]]
        t2v_ranks.append(1 + sum(o > pos for o in others) + sum(o == pos for o in others) / 2)
    v2t_ranks = []
    for v in range(nv):
        own = [i for i in range(nt) if t2v[i] == v]
        if not own:
            continue
        best = max(sim[i, v] for i in own)
        others = [sim[i, v] for i in range(nt) if t2v[i] != v]
        v2t_ranks.append(1 + sum(o > best for o in others) + sum(o == best for o in others) / 2)
    return torch.tensor(t2v_ranks, dtype=torch.float64), torch.tensor(v2t_ranks, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
def test_ranks_match_brute_force_with_ties_and_chunking(seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    nt, nv = 23, 9
    sim = torch.randint(0, 4, (nt, nv), generator=gen).float()      # many ties
    t2v = torch.randint(0, nv - 1, (nt,), generator=gen)             # last video has no caption
    want_t2v, want_v2t = _brute_force(sim, t2v)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 20)              # 2-row chunks
    assert torch.equal(metrics.text_to_video_ranks(sim, t2v), want_t2v)
    assert torch.equal(metrics.video_to_text_ranks(sim, t2v), want_v2t)
    out = compute_metrics(sim, t2v)
    assert out["t2v"]["R1"] == pytest.approx(float((want_t2v <= 1).double().mean() * 100))
    assert out["v2t"]["MnR"] == pytest.approx(float(want_v2t.mean()))


def test_dsl_row_has_same_keys_and_uses_other_axis():
    sim = torch.tensor([[10.0, 5.0],
                        [9.0, 8.0]])
    # Plain t2v: caption 1 prefers video 0 (9 > 8) and misses its own video 1.
    plain = compute_metrics(sim, torch.tensor([0, 1]))
    assert plain["t2v"]["R1"] == 50.0
    # DSL: video 0's column softmax favours caption 0, so caption 1's score for it shrinks:
    # row 1 becomes [9 * sigmoid(-1), 8 * sigmoid(3)] = [2.42, 7.62].
    t2v_sim, _ = metrics.dual_softmax(sim)
    assert t2v_sim[1].tolist() == pytest.approx([9 * torch.sigmoid(torch.tensor(-1.0)).item(),
                                                 8 * torch.sigmoid(torch.tensor(3.0)).item()])
    dsl = compute_dsl_metrics(sim, torch.tensor([0, 1]))
    assert dsl["t2v"]["R1"] == 100.0
    assert set(dsl["t2v"]) == set(plain["t2v"]) and set(dsl["v2t"]) == set(plain["v2t"])


def test_bad_shapes_and_indices_raise():
    with pytest.raises(ValueError, match="text_to_video"):
        compute_metrics(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        compute_metrics(torch.zeros(2, 2), torch.tensor([0, 2]))
