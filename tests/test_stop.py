"""STOP building blocks (modules/stop.py, modules/fft_conv.py): exact FFT convolution, token layout, block attention,
spatial/temporal prompts with the reference code's defects fixed, text layout."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.clip import CLIP, CLIP_CONFIGS
from modules.fft_conv import fast_fft_size, fft_conv3d, same_conv3d
from modules.stop import (
    Adapter,
    LinearPromptGenerator,
    SpatialPrompt,
    TemporalPrompt,
    TransformerPromptGenerator,
    block_attention,
    prompted_text_forward,
    scaled_kernel,
    straight_through_topk,
    text_positions,
)


@pytest.mark.parametrize("c_in,c_out,kernel,shape", [
    (3, 9, (3, 11, 11), (2, 4, 20, 17)),
    (9, 16, (3, 11, 11), (1, 3, 12, 12)),
    (3, 1, (5, 11, 11), (2, 2, 16, 16)),   # temporal kernel longer than the clip
    (1, 9, (3, 15, 25), (1, 4, 7, 40)),
])
def test_fft_conv3d_equals_direct_convolution(c_in, c_out, kernel, shape):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(c_in, c_out, kernel, padding=tuple(k // 2 for k in kernel))
    x = torch.randn(shape[0], c_in, *shape[1:], requires_grad=True)
    ours, ref = fft_conv3d(x, conv), conv(x)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(ref)
    grads_ours = torch.autograd.grad(ours, [x, conv.weight, conv.bias], g)
    grads_ref = torch.autograd.grad(ref, [x, conv.weight, conv.bias], g)
    for a, b in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, b, atol=5e-4, rtol=1e-3)   # sums over many products


def test_fft_conv3d_gradients_only_where_asked():
    """An input without gradient (the video itself) or a frozen weight gets none; the others match."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 4, (3, 5, 5), padding=(1, 2, 2))
    x = torch.randn(2, 3, 3, 9, 10)
    (grad_w,) = torch.autograd.grad(fft_conv3d(x, conv).square().sum(), [conv.weight])
    torch.testing.assert_close(grad_w, torch.autograd.grad(conv(x).square().sum(), [conv.weight])[0],
                               atol=5e-4, rtol=1e-3)
    conv.requires_grad_(False)
    x.requires_grad_(True)
    (grad_x,) = torch.autograd.grad(fft_conv3d(x, conv).square().sum(), [x])
    torch.testing.assert_close(grad_x, torch.autograd.grad(conv(x).square().sum(), [x])[0], atol=5e-4, rtol=1e-3)
    with torch.no_grad():
        assert fft_conv3d(x, conv).grad_fn is None


def test_fft_conv3d_rejects_non_same_convolution():
    with pytest.raises(ValueError, match="stride-1 'same'"):
        fft_conv3d(torch.zeros(1, 1, 2, 8, 8), torch.nn.Conv3d(1, 1, 3, padding=0))
    assert fast_fft_size(234) == 240 and fast_fft_size(64) == 64 and fast_fft_size(7) == 8


def _dense_reference_mask(n_g: int, t: int, s: int, video_mask: torch.Tensor) -> torch.Tensor:
    """STOP's visual attention mask written out token by token: [B, L, L], True = may attend."""
    b = video_mask.shape[0]
    length = n_g + t * s
    frame_of = [-1] * n_g + [i // s for i in range(t * s)]
    mask = torch.zeros(b, length, length, dtype=torch.bool)
    for bi in range(b):
        for q in range(length):
            for k in range(length):
                if frame_of[q] == -1:   # global prompt: globals + tokens of real frames
                    mask[bi, q, k] = frame_of[k] == -1 or bool(video_mask[bi, frame_of[k]])
                else:                   # frame token: globals + its own frame
                    mask[bi, q, k] = frame_of[k] in (-1, frame_of[q])
    return mask


def test_block_attention_equals_dense_masked_attention():
    torch.manual_seed(0)
    n_g, t, s, heads, hd = 2, 3, 5, 2, 4
    video_mask = torch.tensor([[1, 1, 1], [1, 0, 1]])
    q, k, v = (torch.randn(2, heads, n_g + t * s, hd) for _ in range(3))
    ours = block_attention(n_g, t, video_mask)(q, k, v)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=_dense_reference_mask(n_g, t, s, video_mask)[:, None])
    torch.testing.assert_close(ours, dense, atol=1e-6, rtol=1e-5)


def test_straight_through_topk_is_hard_forward_soft_backward():
    scores = torch.randn(2, 3, 16, requires_grad=True)
    mask = straight_through_topk(scores, 4)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask.detach().sum(-1), torch.full((2, 3), 4.0))
    assert torch.equal(mask.detach().bool(), torch.zeros_like(mask, dtype=torch.bool).scatter(-1, scores.topk(4).indices, True))
    (mask * torch.randn_like(mask)).sum().backward()
    assert scores.grad.abs().sum() > 0


def _spatial(grid: int = 4, patch: int = 8, topk: int = 2, dropout: float = 0.0) -> SpatialPrompt:
    torch.manual_seed(0)
    return SpatialPrompt(grid_size=grid, patch_size=patch, topk=topk, scale=0.05, dropout=dropout)


def test_spatial_prompt_pools_real_patches():
    # Defect (a): the reference averaged a strided pixel lattice instead of the p x p patches.
    sp = _spatial(topk=1)
    with torch.no_grad():
        sp.scorer.weight.zero_()
        sp.scorer.weight[0, 0, 2, 5, 5] = 1.0   # score map = channel 0 of the frame itself
        sp.scorer.bias.zero_()
    video = torch.zeros(1, 2, 3, 32, 32)
    video[:, :, 0, 8:16, 16:24] = 1.0            # patch (row 1, col 2) lights up
    _, patch_mask = sp(video, torch.ones(1, 2))
    expected = torch.zeros(1, 2, 16)
    expected[..., 1 * 4 + 2] = 1.0
    assert torch.equal(patch_mask.detach(), expected)
    # The pooled scores are the means over real patches (independent computation).
    x = video.transpose(1, 2)
    score_map = sp.scorer(x)[:, 0]
    per_patch = score_map.view(1, 2, 4, 8, 4, 8).mean(dim=(3, 5)).reshape(1, 2, 16)
    torch.testing.assert_close(sp.patch_scores(x), per_patch, atol=1e-5, rtol=1e-5)


def test_spatial_mask_is_spread_onto_the_selected_patch_pixels(monkeypatch):
    # Defect (a), second half: the reference spread the top-k mask back onto its stride-7 pixel
    # lattice; the doubled prompt must cover exactly the selected patch's p x p pixels.
    import modules.stop as stop
    sp = _spatial(topk=1).eval()
    with torch.no_grad():
        sp.scorer.weight.zero_()
        sp.scorer.weight[0, 0, 2, 5, 5] = 1.0
        sp.scorer.bias.zero_()
    video = torch.zeros(1, 2, 3, 32, 32)
    video[:, :, 0, 8:16, 16:24] = 1.0            # patch (row 1, col 2) is selected
    with torch.no_grad():
        prompted, _ = sp(video, torch.ones(1, 2))
        monkeypatch.setattr(stop, "straight_through_topk", lambda scores, k: torch.zeros_like(scores))
        unmasked, _ = sp(video, torch.ones(1, 2))   # x + s * P
    prompt, extra = unmasked - video, prompted - unmasked    # s * P and s * P * M
    defined = prompt.abs() > 1e-6
    mask = torch.zeros_like(prompt)
    mask[..., 8:16, 16:24] = 1.0
    torch.testing.assert_close((extra / prompt.where(defined, torch.ones_like(prompt)))[defined], mask[defined],
                               atol=1e-4, rtol=1e-4)
    assert defined[..., 8:16, 16:24].float().mean() > 0.9


def test_spatial_scorer_receives_gradient():
    # Defect (b): a hard threshold gave the scorer no gradient.
    sp = _spatial()
    video = torch.randn(2, 3, 3, 32, 32)
    out, patch_mask = sp(video, torch.ones(2, 3))
    (out.square().sum() + patch_mask.mul(torch.randn_like(patch_mask)).sum()).backward()
    assert sp.scorer.weight.grad is not None and sp.scorer.weight.grad.abs().sum() > 0
    for conv in sp.convs:
        assert conv.weight.grad.abs().sum() > 0


def test_spatial_and_temporal_prompts_use_backbone_geometry_b16():
    # Defect (c): sizes were hard-coded for B/32 (224 px, 7x7, 49 patches); B/16 has 14x14 = 196.
    sp = _spatial(grid=14, patch=16, topk=6)
    video = torch.randn(1, 1, 3, 224, 224)
    out, patch_mask = sp(video, torch.ones(1, 1))
    assert out.shape == video.shape and patch_mask.shape == (1, 1, 196)
    assert torch.equal(patch_mask.detach().sum(-1), torch.full((1, 1), 6.0))
    tp = TemporalPrompt(width=32, heads=2, num_patches=196, num_local=4, scale=0.05)
    prompts = tp(torch.randn(1, 2, 196, 32), torch.ones(1, 2), patch_mask.expand(1, 2, 196))
    assert prompts.shape == (1, 2, 4, 32)
    with pytest.raises(ValueError, match="spatial_topk"):
        SpatialPrompt(grid_size=2, patch_size=8, topk=5, scale=0.05, dropout=0.0)


def test_spatial_prompt_ignores_padded_frames():
    sp = _spatial()
    video = torch.randn(1, 4, 3, 32, 32)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    out_a, m_a = sp(video, mask)
    changed = video.clone()
    changed[:, 2:] = torch.randn(1, 2, 3, 32, 32) * 5
    out_b, m_b = sp(changed, mask)
    torch.testing.assert_close(out_a[:, :2], out_b[:, :2])
    assert torch.equal(m_a[:, :2], m_b[:, :2])
    # Padding acts as the end of the video: same result as the 2-frame clip alone.
    out_c, m_c = sp(video[:, :2], mask[:, :2])
    torch.testing.assert_close(out_a[:, :2], out_c, atol=1e-5, rtol=1e-5)


def _temporal() -> TemporalPrompt:
    torch.manual_seed(0)
    return TemporalPrompt(width=32, heads=2, num_patches=16, num_local=4, scale=0.05).eval()


def test_temporal_prompt_is_per_video():
    # The reference min-max normalised over the whole batch (a defect: videos then depend on each other).
    tp = _temporal()
    patches = torch.randn(3, 4, 16, 32)
    mask, pmask = torch.ones(3, 4), torch.zeros(3, 4, 16)
    together = tp(patches, mask, pmask)
    for i in range(3):
        alone = tp(patches[i:i + 1], mask[i:i + 1], pmask[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=1e-4)
    weights = tp.frame_weights(patches.unsqueeze(1), mask, pmask)
    assert torch.allclose(weights.amin(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(weights.amax(1), torch.ones(3), atol=1e-4)


def test_temporal_prompt_static_video_is_finite():
    tp = _temporal().train()
    patches = torch.randn(1, 1, 16, 32).expand(1, 4, 16, 32).clone().requires_grad_(True)
    out = tp(patches, torch.ones(1, 4), None)
    assert torch.isfinite(out).all()
    # Equal variation values (constant tokens; a single real frame) made the reference's
    # min-max 0/0 = NaN; ours gives weight 0.
    zeros = torch.zeros(1, 1, 4, 16, 32)
    assert torch.equal(tp.frame_weights(zeros, torch.ones(1, 4), None), torch.zeros(1, 4))
    one_frame = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert torch.equal(tp.frame_weights(patches.detach().unsqueeze(1), one_frame, None), torch.zeros(1, 4))
    out.sum().backward()
    assert torch.isfinite(patches.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in tp.parameters() if p.grad is not None)


def test_temporal_prompt_excludes_padded_frames():
    tp = _temporal()
    patches = torch.randn(1, 4, 16, 32)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    a = tp(patches, mask, None)
    changed = patches.clone()
    changed[:, 3] = 100 * torch.randn(16, 32)     # would dominate attention and min-max if seen
    b = tp(changed, mask, None)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    torch.testing.assert_close(a[:, :3], tp(patches[:, :3], mask[:, :3], None), atol=1e-5, rtol=1e-4)


def test_adapter_applies_its_scale():
    torch.manual_seed(0)
    adapter = Adapter(8, 4, scale=0.1)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(adapter(x), 0.1 * adapter.mlp(x))


def test_prompt_generators_shapes():
    torch.manual_seed(0)
    gen = TransformerPromptGenerator(num_text=8, num_local=4, max_frames=3, layers=2, width=32, text_width=16, heads=2)
    text, visual = gen()
    assert text.shape == (2, 8, 16) and visual.shape == (2, 3, 4, 32)
    lin = LinearPromptGenerator(num_local=4, max_frames=3, layers=2, width=32, text_width=16, patch_size=8)
    text, visual = lin()
    assert text.shape == (2, 8, 16) and visual.shape == (2, 3, 4, 32)
    assert torch.equal(visual[:, 0], visual[:, 2])   # one table tiled over frames


def test_text_layout_faithful_and_before_eot():
    ids = torch.tensor([[49406, 10, 11, 49407, 0, 0], [49406, 10, 11, 12, 13, 49407]])
    faithful = text_positions(ids, 4, postfix_before_eot=False)
    # [SOT, prefix(2), words(5), postfix(2)] -> length 6 + 4; words shifted by 2, postfix last.
    assert faithful[0].tolist() == [0, 3, 4, 5, 6, 7, 1, 2, 8, 9]
    assert faithful.shape == (2, 10)
    before = text_positions(ids, 4, postfix_before_eot=True)
    # video 0: [SOT, p, p, w, w, q, q, EOT, pad, pad]
    assert before[0].tolist() == [0, 3, 4, 7, 8, 9, 1, 2, 5, 6]
    for pos in (faithful, before):   # a permutation of 0..L+n_t-1
        assert torch.equal(pos.sort(dim=1).values, torch.arange(10).expand(2, -1))
    # max_words 32 with 8 prompts gives a 40-token sequence.
    assert text_positions(torch.zeros(1, 32, dtype=torch.long), 8, False).shape == (1, 40)


def test_postfix_prompts_reach_eot_only_before_eot():
    torch.manual_seed(0)
    clip = CLIP(**CLIP_CONFIGS["tiny"]).eval()
    ids = torch.tensor([[49406, 10, 11, 49407, 0, 0, 0, 0]])
    prompts = torch.randn(4, 8, 128)
    changed = prompts.clone()
    changed[:, 4:] += 1.0                     # postfix prompts only
    with torch.no_grad():
        same = [prompted_text_forward(clip, ids, p, postfix_before_eot=False) for p in (prompts, changed)]
        diff = [prompted_text_forward(clip, ids, p, postfix_before_eot=True) for p in (prompts, changed)]
    torch.testing.assert_close(same[0], same[1])
    assert not torch.allclose(diff[0], diff[1])


def test_prompt_table_resampled_along_time_when_loaded_at_another_frame_count():
    def generator(frames: int) -> TransformerPromptGenerator:
        return TransformerPromptGenerator(num_text=2, num_local=3, max_frames=frames, layers=2, width=8,
                                          text_width=4, heads=2)

    trained = generator(2).prompt_table.detach()
    text, f0, f1 = trained[:2], trained[2:5], trained[5:8]
    state = {"gen.prompt_table": trained}
    messages = generator(3).adapt_loaded_state(state, "gen.")
    assert messages == ["gen.prompt_table: per-frame prompt rows resampled from 2 to 3 frames "
                        "(linear interpolation along time)"]
    torch.testing.assert_close(state["gen.prompt_table"], torch.cat([text, f0, (f0 + f1) / 2, f1]))
    same = {"gen.prompt_table": trained}
    assert generator(2).adapt_loaded_state(same, "gen.") == [] and same["gen.prompt_table"] is trained
    one = {"gen.prompt_table": trained[:5]}                        # one frame: copied to every frame
    generator(4).adapt_loaded_state(one, "gen.")
    torch.testing.assert_close(one["gen.prompt_table"], torch.cat([text, f0, f0, f0, f0]))


def test_prompt_kernels_shrink_with_the_frame_and_small_ones_run_directly():
    assert scaled_kernel((3, 11, 11), 1.0) == (3, 11, 11) and scaled_kernel((3, 15, 25), 1.0) == (3, 15, 25)
    assert scaled_kernel((5, 11, 11), 32 / 224) == (5, 3, 3)                # never below 3, taps kept
    assert scaled_kernel((3, 15, 25), 64 / 224) == (3, 5, 7)
    torch.manual_seed(0)
    for kernel in ((3, 3, 3), (5, 5, 5)):
        conv = torch.nn.Conv3d(2, 3, kernel, padding=tuple(k // 2 for k in kernel))
        x = torch.randn(1, 2, 3, 8, 8)
        torch.testing.assert_close(same_conv3d(x, conv), conv(x), atol=2e-5, rtol=1e-4)
