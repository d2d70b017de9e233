"""TempMe compressors: the `modules/tempme.py` contract, checked for each type on tiny inputs."""
from __future__ import annotations

import pytest
import torch

import params
from dataloaders.video_reader import sample_frame_indices
from modules.loss import frame_score_loss
from modules.tempme import (
    AdaptiveTempMe,
    SimpleTempMe,
    TempMeCompressor,
    TempMeConfig,
    get_tempme_model,
    uniform_frame_indices,
)

TYPES = ("simple", "basic", "adaptive")
T_IN = 8
SIDE = 32


def _args(tempme_type: str, *extra: str):
    return params.get_args([
        "--use_tempme", "True", "--tempme_type", tempme_type, "--max_frames", str(T_IN),
        "--tempme_compression_ratio", "0.5", "--tempme_input_frames", str(T_IN),
        "--tempme_output_frames", "4", "--tempme_max_input_frames", str(T_IN),
        "--tempme_min_output_frames", "3", "--tempme_max_output_frames", "5",
        "--tempme_hidden_dim", "32", "--tempme_num_layers", "1", *extra])


def _build(tempme_type: str, *extra: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_tempme_model(_args(tempme_type, *extra))


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Stand-in for a trained compressor: random values in the zero-initialised layers."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three videos: all 8 frames real, 6 real, 2 real (shorter than every T_out here).

    Padded frames hold huge values, so a scorer that looked at them would want them.
    """
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(3, T_IN, 3, SIDE, SIDE, generator=gen)
    mask = torch.zeros(3, T_IN, dtype=torch.long)
    for b, n in enumerate((8, 6, 2)):
        mask[b, :n] = 1
        video[b, n:] = 100 * torch.randn(T_IN - n, 3, SIDE, SIDE, generator=gen)
    return video, mask


def _expected_uniform(n: int, k: int) -> list[int]:
    """k uniform samples of n frames as the data loader's evaluation sampling picks them."""
    return sample_frame_indices(n, k, random_offsets=False)


def test_uniform_frame_indices_match_data_loader_eval_sampling():
    for n in range(1, 50):
        for k in range(1, n + 1):
            assert uniform_frame_indices(n, k).tolist() == _expected_uniform(n, k)
    batch = uniform_frame_indices(torch.tensor([10, 4]), torch.tensor([3, 2]), width=4)
    assert batch.tolist() == [_expected_uniform(10, 3) + [-1], _expected_uniform(4, 2) + [-1, -1]]


@pytest.mark.parametrize("tempme_type", TYPES)
def test_output_contract(tempme_type):
    model = _perturb(_build(tempme_type)).eval()
    video, mask = _batch()
    out, mask_out, info = model(video, mask)
    idx, kept = info["indices"], info["frames_kept"]
    B, T_out = idx.shape
    assert out.shape == (B, T_out, 3, SIDE, SIDE) and mask_out.shape == (B, T_out)
    assert idx.dtype == torch.long and kept.shape == (B,)
    assert info["scores"].shape == (B, T_IN) and info["probs"].shape == (B, T_IN)
    if tempme_type == "adaptive":
        assert T_out == int(kept.max()) <= model.output_frames
        assert ((kept >= 2) & (kept <= 5)).all()
    else:
        assert T_out == model.output_frames == 4
        assert kept.tolist() == [4, 4, 2]
    assert torch.equal(mask_out, (idx >= 0).long())
    assert torch.equal(mask_out.sum(1), kept)
    n_real = mask.sum(1)
    for b in range(B):
        picks = idx[b, : kept[b]]
        assert (picks[1:] > picks[:-1]).all(), "temporal order"
        assert (mask[b, picks] == 1).all(), "a padded input frame was chosen"
        assert (idx[b, kept[b]:] == -1).all()
        for j, src in enumerate(picks.tolist()):
            assert torch.equal(out[b, j], video[b, src]), "output must be the source frame, bit for bit"
        assert not out[b, kept[b]:].any(), "padding frames are zeros"
        if n_real[b] < T_out:
            assert picks.tolist() == list(range(int(n_real[b]))), "short video keeps all its frames"


@pytest.mark.parametrize("tempme_type", TYPES)
@pytest.mark.parametrize("training", (False, True))
def test_fresh_compressor_picks_uniform_samples_of_real_frames(tempme_type, training):
    model = _build(tempme_type).train(training)
    gen = torch.Generator().manual_seed(3)
    video = torch.randn(4, T_IN, 3, SIDE, SIDE, generator=gen)
    mask = torch.zeros(4, T_IN, dtype=torch.long)
    mask[0] = 1
    mask[1, :7] = 1
    mask[2, :5] = 1
    mask[3, [0, 2, 3, 5, 6, 7]] = 1  # holes: uniform over the real frames, not over positions
    _, _, info = model(video, mask)
    for b in range(4):
        real_positions = mask[b].nonzero().squeeze(1).tolist()
        k = int(info["frames_kept"][b])
        if tempme_type != "adaptive":
            assert k == min(4, len(real_positions))
        want = [real_positions[i] for i in _expected_uniform(len(real_positions), k)]
        assert info["indices"][b, :k].tolist() == want


@pytest.mark.parametrize("tempme_type", TYPES)
def test_gradient_reaches_every_compressor_parameter(tempme_type):
    video, mask = _batch()
    weights = torch.randn(video.shape[0], 1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))

    def backward(model):
        model.train().zero_grad()
        out, _, _ = model(video, mask)
        (out * weights).sum().backward()
        return {name: p.grad for name, p in model.named_parameters()}

    fresh = backward(_build(tempme_type))
    assert all(g is not None and torch.isfinite(g).all() for g in fresh.values())
    heads = [g for name, g in fresh.items() if name.endswith(("head.weight", "key.weight"))]
    assert heads and all(g.any() for g in heads), "the zero-initialised scorer must get a gradient"

    trained = backward(_perturb(_build(tempme_type)))
    no_signal = [name for name, g in trained.items() if g is None or not g.any()]
    assert not no_signal, f"no gradient reached {no_signal}"


@pytest.mark.parametrize("tempme_type", TYPES)
def test_eval_deterministic_and_selection_same_as_training(tempme_type):
    model = _perturb(_build(tempme_type))
    video, mask = _batch(seed=5)
    with torch.no_grad():
        out1, mask1, info1 = model.eval()(video, mask)
        out2, mask2, info2 = model(video, mask)
        out_train, mask_train, info_train = model.train()(video, mask)
    assert torch.equal(out1, out2) and torch.equal(mask1, mask2)
    assert all(torch.equal(info1[key], info2[key]) for key in info1)
    assert torch.equal(info1["indices"], info_train["indices"])
    assert torch.equal(out1, out_train) and torch.equal(mask1, mask_train)


def test_adaptive_keeps_more_frames_for_a_changing_clip_out_of_the_box():
    torch.manual_seed(0)
    model = AdaptiveTempMe(input_frames=16, min_output_frames=4, max_output_frames=12, hidden_dim=32).eval()
    gen = torch.Generator().manual_seed(4)
    static = torch.randn(1, 3, SIDE, SIDE, generator=gen).expand(16, -1, -1, -1)
    static = static + 0.01 * torch.randn(16, 3, SIDE, SIDE, generator=gen)  # sensor noise
    changing = torch.randn(16, 3, SIDE, SIDE, generator=gen)
    video = torch.stack([static, changing])
    out, mask_out, info = model(video, torch.ones(2, 16, dtype=torch.long))
    kept = info["frames_kept"].tolist()
    assert kept[0] == 4 and kept[1] == 12
    assert out.shape[1] == 12 and mask_out[0].tolist() == [1] * 4 + [0] * 8


@pytest.mark.parametrize("ratio", (0.1, 0.25, 0.5, 0.75, 0.9, 1.0))
def test_simple_keeps_round_of_ratio_frames(ratio):
    model = SimpleTempMe(input_frames=12, compression_ratio=ratio, hidden_dim=16).eval()
    assert model.output_frames == max(1, round(12 * ratio))
    for t_in in (1, 5, 7, 12):
        video = torch.randn(1, t_in, 3, 8, 8)
        out, _, info = model(video, torch.ones(1, t_in))
        assert out.shape[1] == max(1, round(t_in * ratio)) == int(info["frames_kept"][0])


def test_factory_off_types_and_attributes():
    assert get_tempme_model(params.get_args([])) is None
    classes = {"simple": SimpleTempMe, "basic": TempMeCompressor, "adaptive": AdaptiveTempMe}
    for tempme_type, cls in classes.items():
        model = get_tempme_model(params.get_args(["--use_tempme", "True", "--tempme_type", tempme_type,
                                                  "--tempme_hidden_dim", "32"]))
        assert type(model) is cls
    defaults = params.get_args(["--use_tempme", "True", "--tempme_hidden_dim", "32"])
    simple = get_tempme_model(defaults)
    assert (simple.input_frames, simple.output_frames) == (12, 9)  # 12 frames at ratio 0.75
    basic = get_tempme_model(params.get_args(["--use_tempme", "True", "--tempme_type", "basic",
                                              "--tempme_hidden_dim", "32"]))
    assert (basic.input_frames, basic.output_frames) == (32, 12)
    assert TempMeConfig.from_flags(defaults).num_input_frames == simple.input_frames


@pytest.mark.parametrize("field, value, flag", [
    ("tempme_compression_ratio", 0.0, "--tempme_compression_ratio"),
    ("tempme_compression_ratio", 1.5, "--tempme_compression_ratio"),
    ("tempme_output_frames", 9, "--tempme_output_frames"),
    ("tempme_min_output_frames", 6, "--tempme_min_output_frames"),
    ("tempme_max_output_frames", 9, "--tempme_max_output_frames"),
    ("tempme_type", "fancy", "--tempme_type"),
])
def test_invalid_config_raises_naming_the_flag(field, value, flag):
    args = _args("simple")
    setattr(args, field, value)
    with pytest.raises(ValueError, match=flag):
        get_tempme_model(args)


def test_basic_rejects_more_frames_than_built_for():
    model = _build("basic").eval()
    with pytest.raises(ValueError, match="--tempme_input_frames"):
        model(torch.randn(1, T_IN + 1, 3, 8, 8), torch.ones(1, T_IN + 1))


def test_frame_score_loss_matches_cross_entropy_and_trains_scores():
    scores = torch.tensor([[1.0, 2.0, -1e4], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[3.0, 1.0, 50.0], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    loss = frame_score_loss(scores, target, mask)
    t0 = torch.softmax(torch.tensor([3.0, 1.0]), 0)
    ce0 = -(t0 * torch.log_softmax(torch.tensor([1.0, 2.0]), 0)).sum()
    ce1 = -(torch.softmax(target[1], 0) * torch.log_softmax(scores[1].detach(), 0)).sum()
    assert loss.item() == pytest.approx(((ce0 + ce1) / 2).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and not scores.grad[2].any()

    # Through a compressor: supervises every real frame's score, selected or not.
    model = _build("simple").train()
    video, mask = _batch()
    _, _, info = model(video, mask)
    frame_score_loss(info["scores"], torch.randn(3, T_IN), mask).backward()
    assert model.scorer.head.weight.grad.any()
    assert info["probs"].requires_grad


def test_adaptive_keeps_more_frames_for_a_longer_video_of_the_same_content():
    """Frame-rate sampling gives a longer video more real frames of the 48 loaded; a fresh compressor
    keeps a count that never falls with the length, for a clip changing at every frame, at every
    third frame, or not at all (min 8, or every frame of a shorter video)."""
    torch.manual_seed(0)
    model = AdaptiveTempMe(input_frames=48, min_output_frames=8, max_output_frames=16, hidden_dim=32).eval()
    gen = torch.Generator().manual_seed(6)
    changing = torch.randn(48, 3, SIDE, SIDE, generator=gen)
    every_third = changing[torch.arange(48) // 3 * 3]
    still = changing[:1].expand(48, -1, -1, -1) + 0.01 * torch.randn(48, 3, SIDE, SIDE, generator=gen)
    lengths = (2, 6, 10, 16, 24, 32, 40, 48)
    for content, expected_longest in ((changing, 16), (every_third, 11), (still, 8)):
        video = content.expand(len(lengths), -1, -1, -1, -1).clone()
        mask = (torch.arange(48) < torch.tensor(lengths)[:, None]).long()
        with torch.no_grad():
            kept = model(video, mask)[2]["frames_kept"].tolist()
        assert kept == sorted(kept) and kept[-1] == expected_longest, kept
        assert kept[:2] == [2, 6], "a video shorter than the minimum keeps every frame"
    assert kept == [2, 6, 8, 8, 8, 8, 8, 8], "a still video keeps the minimum whatever its length"
