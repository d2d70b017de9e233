"""Token merging inside the ViT (modules/token_merge.py, `--token_merge`): the merge step against a
brute-force computation, proportional attention, the published schedule's token counts, padding and
batch independence, gradients, AMP, TempMe before merging, and a demo run."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import params
from engine.factory import build_loss, model_config
from engine.optim import _no_decay_names, parameter_groups
from modules.clip import CLIP, random_clip_state_dict
from modules.factory import build_model
from modules.token_merge import (
    MergeCount,
    TokenMergeConfig,
    TokenMerger,
    Units,
    frame_layers,
    group_units,
    merge_patches,
    merge_plan,
    tokens_per_layer,
    unit_attention_bias,
)

SIDE = 64   # the tiny CLIP: 64 px, patch 16 -> 16 patches per frame, 4 blocks
SMALL_STOP = ["--num_global_prompts", "2", "--num_local_prompts", "2", "--num_text_prompts", "2",
              "--adapter_dim", "8"]


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return random_clip_state_dict("tiny", seed=0)


@pytest.fixture(scope="module")
def b32_geometry_sd() -> dict[str, torch.Tensor]:
    """ViT-B/32's token geometry (224 px, patch 32: 49 patches, 12 blocks) at width 64."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return CLIP(embed_dim=32, image_resolution=224, vision_layers=12, vision_width=64, vision_patch_size=32,
                    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                    transformer_layers=1).state_dict()


def _model(sd, *flags: str, frames: int = 4, side: int = SIDE, conv_prompts: bool = False):
    """STOP's 3-D convolution prompts (spatial, temporal) run before the ViT and cost most of a tiny
    model's CPU time: off unless `conv_prompts`."""
    args = params.get_args(["--image_size", str(side), "--max_frames", str(frames), "--max_words", "12",
                            "--spatial_topk", "3", "--spatial_prompt", str(conv_prompts),
                            "--temporal_prompt", str(conv_prompts), *flags])
    torch.manual_seed(0)
    return build_model(sd, model_config(args)), args


def _video(b: int, t: int, side: int = SIDE, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _ids(b: int, words: int = 12) -> torch.Tensor:
    ids = torch.zeros(b, words, dtype=torch.long)
    for i in range(b):
        ids[i, 0], ids[i, 1:4], ids[i, 4] = 49406, torch.arange(100 + i, 103 + i), 49407
    return ids


def _randomise_temporal_embeddings(model) -> None:
    """They start at zero; random rows make a test see whether they are used."""
    with torch.no_grad():
        for table in model.token_merger.temporal_embeddings:
            table.normal_(std=0.5, generator=torch.Generator().manual_seed(3))


# ---------------------------------------------------------------------------------------------
# The merge step and proportional attention
# ---------------------------------------------------------------------------------------------

def _brute_force_merge(x, size, metric, m):
    """One unit, all tokens real, no head: ToMe's rule written out with loops."""
    n = x.shape[0]
    dst, src = list(range(0, n, 2)), list(range(1, n, 2))
    cos = F.normalize(metric, dim=-1) @ F.normalize(metric, dim=-1).t()
    match = {i: max(dst, key=lambda j: (cos[i, j].item(), -j)) for i in src}
    chosen = sorted(src, key=lambda i: (-cos[i, match[i]].item(), i))[:m]
    total, weight = {j: x[j] * size[j] for j in range(n)}, {j: size[j].clone() for j in range(n)}
    for i in chosen:
        total[match[i]] = total[match[i]] + x[i] * size[i]
        weight[match[i]] = weight[match[i]] + size[i]
    kept = [j for j in range(n) if j not in chosen]
    return torch.stack([total[j] / weight[j] for j in kept]), torch.stack([weight[j] for j in kept])


def test_merge_step_equals_brute_force_and_keeps_the_size_weighted_sum():
    g = torch.Generator().manual_seed(0)
    b, u, head, n, w = 2, 3, 2, 11, 5
    x = torch.randn(b, u, head + n, w, generator=g, dtype=torch.float64)
    size = torch.cat([torch.ones(b, u, head), torch.randint(1, 4, (b, u, n), generator=g)], dim=2).double()
    metric = torch.randn(b, u, head + n, 4, generator=g, dtype=torch.float64)
    units = Units(x, size, torch.ones(b, u, head + n, dtype=torch.bool), head=head, frames=1)
    # head_per_frame = head: one frame of 2 head tokens (CLS + 1 prompt) per unit
    out = merge_patches(units, metric, MergeCount(tokens=3))
    assert out.x.shape == (b, u, head + n - 3, w) and out.weighted
    assert torch.equal(out.x[:, :, :head], x[:, :, :head])                       # head untouched
    for i in range(b):
        for j in range(u):
            expected_x, expected_size = _brute_force_merge(x[i, j, head:], size[i, j, head:], metric[i, j, head:], 3)
            torch.testing.assert_close(out.x[i, j, head:], expected_x)
            torch.testing.assert_close(out.size[i, j, head:].double(), expected_size)
    weighted_sum = (x * size.unsqueeze(-1)).sum(2)
    torch.testing.assert_close((out.x * out.size.unsqueeze(-1).double()).sum(2), weighted_sum)
    torch.testing.assert_close(out.size.sum(2).double(), size.sum(2))


def test_merge_counts_share_and_cap():
    count = MergeCount(share=0.3)
    # The published counts for B/32 at 12 frames: 68 tokens (2 CLS) -> 20; at most half the patches.
    assert count(torch.tensor(2), torch.tensor(66)).item() == 20
    assert MergeCount(tokens=9)(torch.tensor(1), torch.tensor(10)).item() == 5
    assert MergeCount(share=0.1)(torch.tensor(12), torch.tensor(95)).item() == 10


def test_proportional_attention_weighs_a_merged_token_as_its_copies():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 4, generator=g) for _ in range(3))
    units = Units(torch.zeros(1, 1, 3, 4), torch.ones(1, 1, 3), torch.ones(1, 1, 3, dtype=torch.bool), head=1,
                  weighted=True)
    # All sizes 1: proportional attention is plain attention.
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=unit_attention_bias(units, 0, q.dtype)),
                               F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-7)
    assert unit_attention_bias(Units(units.x, units.size, units.real, head=1), 0, q.dtype) is None
    # A token of size 2 attracts the attention of two copies of it.
    units.size[0, 0, 1] = 2.0
    copies = [0, 1, 1, 2]
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k, v, attn_mask=unit_attention_bias(units, 0, q.dtype)),
        F.scaled_dot_product_attention(q, k[:, :, copies], v[:, :, copies]))


def test_grouped_units_hide_padded_keys_from_real_queries():
    real = torch.tensor([[[True, False, True, False]]])
    units = Units(torch.zeros(1, 1, 4, 2), torch.ones(1, 1, 4), real, head=2, frames=2, weighted=True)
    bias = unit_attention_bias(units, prefix=1, dtype=torch.float32)[0, 0]   # [query, 1 + key]
    assert bias.shape == (4, 5) and torch.equal(bias[:, 0], torch.zeros(4))
    assert torch.isinf(bias[0, 2]) and torch.isinf(bias[2, 4]) and bias[0, 3] == 0   # real query, padded key
    assert torch.equal(bias[1, 1:], torch.zeros(4))                                  # padded query sees all


# ---------------------------------------------------------------------------------------------
# Schedules and grouping
# ---------------------------------------------------------------------------------------------

def test_schedule_scales_with_depth_and_patches():
    assert [frame_layers(d) for d in (4, 12, 24)] == [3, 8, 16]
    assert tokens_per_layer(2, 49, 12) == 2                     # B/32: the published r
    assert tokens_per_layer(2, 196, 12) == 8                    # B/16: the same share of 196 patches
    assert tokens_per_layer(2, 256, 24) == 5                    # L/14: 16 merging blocks of 256 patches
    assert tokens_per_layer(0, 196, 12) == 0 and tokens_per_layer(1, 16, 4) == 1
    plan = merge_plan("clip", 2, 12, 49)
    assert [p.after.tokens for p in plan[:8]] == [2] * 8 and all(p.group == 1 for p in plan[:8])
    assert [p.group for p in plan[8:]] == [2, 2, 3, 1]
    assert [p.before.share for p in plan[8:11]] == [0.3] * 3 and [p.after.share for p in plan[8:]] == [0.1] * 4
    assert all(p.after is None and p.group == 1 for p in merge_plan("frame", 2, 12, 49)[8:])
    assert [p.group for p in merge_plan("clip", 2, 24, 256)[16:20]] == [2, 2, 3, 1]
    assert [p.group for p in merge_plan("clip", 2, 4, 16)] == [1, 1, 1, 2]       # tiny: one grouping block


def test_group_units_pads_the_last_group_and_orders_heads_first():
    b, u, head, n, w = 1, 3, 2, 3, 1
    x = torch.arange(u * (head + n), dtype=torch.float32).view(b, u, head + n, w)
    real = torch.tensor([True, True, False]).view(1, 3, 1).expand(b, u, head + n)
    grouped = group_units(Units(x, torch.ones(b, u, head + n), real, head=head), 2)
    assert grouped.x.shape == (1, 2, 2 * (head + n), 1) and (grouped.head, grouped.frames) == (4, 2)
    # Unit 0 = [heads of frames 0, 1, patches of frames 0, 1]; unit 1 = frame 2 + an empty unit.
    assert grouped.x[0, 0, :, 0].tolist() == [0, 1, 5, 6, 2, 3, 4, 7, 8, 9]
    assert grouped.x[0, 1, :, 0].tolist() == [10, 11, 0, 0, 12, 13, 14, 0, 0, 0]
    assert not grouped.real[0, 1].any() and grouped.real[0, 0].all()
    assert torch.equal(grouped.size, torch.ones_like(grouped.size)) and grouped.weighted


def test_temporal_embedding_rows_follow_the_groups():
    for frames, rows in ((12, [12, 6, 3]), (10, [10, 5, 3]), (4, [4, 2, 1])):
        merger = TokenMerger(TokenMergeConfig("clip", 2, frames), depth=12, num_patches=49, width=8)
        assert [t.shape[0] for t in merger.temporal_embeddings] == rows
    assert len(TokenMerger(TokenMergeConfig("frame", 2, 12), depth=12, num_patches=49, width=8).temporal_embeddings) == 0
    merger = TokenMerger(TokenMergeConfig("clip", 2, 12), depth=12, num_patches=49, width=8)
    assert "blocks 0-7 merge 2 tokens per frame" in merger.describe() and "group 2, 2, 3" in merger.describe()
    names = _no_decay_names(merger)
    assert names >= {"temporal_embeddings.0", "temporal_embeddings.1", "temporal_embeddings.2"}


def _block_shapes(model, video, mask):
    shapes = []
    hooks = [block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
             for block in model.clip.visual.transformer.resblocks]
    with torch.no_grad():
        model.eval().get_visual_output(video, mask)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.slow
def test_token_counts_follow_the_published_schedule_b32(b32_geometry_sd):
    video, mask = _video(1, 12, side=224), torch.ones(1, 12)
    frame, _ = _model(b32_geometry_sd, "--prompt_mode", "none", "--token_merge", "frame", frames=12, side=224)
    per_frame = [s[1] for s in _block_shapes(frame, video, mask)]
    assert per_frame == [48, 46, 44, 42, 40, 38, 36, 34, 34, 34, 34, 34]          # 50 -> 34 over 8 blocks
    clip, _ = _model(b32_geometry_sd, "--prompt_mode", "none", "--token_merge", "clip", frames=12, side=224)
    shapes = _block_shapes(clip, video, mask)
    assert [s[:2] for s in shapes[7:]] == [(12, 34), (6, 44), (3, 56), (1, 107), (1, 97)]
    # STOP: 4 global prompts + per frame CLS, 4 local prompts, patches; prompts are never merged.
    stop, _ = _model(b32_geometry_sd, "--token_merge", "frame", frames=12, side=224)
    assert [s[1] for s in _block_shapes(stop, video, mask)][7:] == [4 + 12 * (5 + 33)] * 5
    stop_clip, _ = _model(b32_geometry_sd, "--token_merge", "clip", frames=12, side=224)
    # block 8: groups of 2 frames, head 2 x 5 tokens, 66 patches - 20 (30% of 68) - 4 (10% of 48)
    assert _block_shapes(stop_clip, video, mask)[8][1] == 4 + 6 * (10 + 66 - 20 - 4)


# ---------------------------------------------------------------------------------------------
# The model: bit-identity at r = 0, padding, batch independence, gradients, AMP
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--video_output", "mean_cls"], ["--prompt_mode", "none"]])
def test_r0_frame_mode_is_the_unmerged_model_exactly(tiny_sd, mode):
    video, mask = _video(3, 4), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    base, _ = _model(tiny_sd, *mode)
    merged, _ = _model(tiny_sd, *mode, "--token_merge", "frame", "--token_merge_r", "0")
    assert merged.token_merger is not None
    with torch.no_grad():
        torch.testing.assert_close(merged.eval().get_visual_output(video, mask)[0],
                                   base.eval().get_visual_output(video, mask)[0], rtol=0, atol=0)
        other, _ = _model(tiny_sd, *mode, "--token_merge", "frame")
        assert not torch.allclose(other.eval().get_visual_output(video, mask)[0],
                                  base.get_visual_output(video, mask)[0])


@pytest.mark.slow
@pytest.mark.parametrize("prompt_mode", ["none", "stop"])
def test_embedding_ignores_padded_frames_and_batch_mates_b32_clip(b32_geometry_sd, prompt_mode):
    """12 frame slots of B/32 geometry in `clip` mode: groups of 2, 2, 3 with empty units completing them."""
    model, _ = _model(b32_geometry_sd, "--prompt_mode", prompt_mode, "--token_merge", "clip", "--video_output", "mean_cls",
                      *SMALL_STOP,
                      frames=12, side=224)
    _randomise_temporal_embeddings(model)
    video, mask = _video(3, 12, side=224), torch.ones(3, 12)
    mask[1, 7:], mask[2, 4:] = 0, 0
    changed = video.clone()
    changed[1, 7:], changed[2, 4:] = 0, 255 - changed[2, 4:]
    with torch.no_grad():
        model.eval()
        together = model.get_visual_output(video, mask)[0]
        torch.testing.assert_close(model.get_visual_output(changed, mask)[0], together, rtol=0, atol=0)
        for i, real in enumerate((12, 7, 4)):   # alone and unpadded: the same embedding
            alone = model.get_visual_output(video[i:i + 1, :real], mask[i:i + 1, :real])[0]
            torch.testing.assert_close(alone, together[i:i + 1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("flags", [["--token_merge", "frame"], ["--token_merge", "clip"],
                                   ["--token_merge", "clip", "--prompt_mode", "none"]])
def test_embedding_ignores_padded_frames_and_batch_mates_tiny(tiny_sd, flags):
    model, _ = _model(tiny_sd, *flags)
    if model.token_merger.temporal_embeddings:
        _randomise_temporal_embeddings(model)
    video, mask = _video(3, 4), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    changed = video.clone()
    changed[1, 3], changed[2, 1:] = 255 - changed[1, 3], 0
    with torch.no_grad():
        model.eval()
        together = model.get_visual_output(video, mask)[0]
        torch.testing.assert_close(model.get_visual_output(changed, mask)[0], together, rtol=0, atol=0)
        for i, real in enumerate((4, 3, 1)):
            alone = model.get_visual_output(video[i:i + 1, :real], mask[i:i + 1, :real])[0]
            torch.testing.assert_close(alone, together[i:i + 1], atol=1e-5, rtol=1e-4)


def _tempme(tempme_type: str) -> list[str]:
    return ["--use_tempme", "True", "--tempme_type", tempme_type, "--tempme_compression_ratio", "0.5",
            "--tempme_input_frames", "4", "--tempme_output_frames", "3", "--tempme_max_input_frames", "4",
            "--tempme_min_output_frames", "1", "--tempme_max_output_frames", "3", "--tempme_hidden_dim", "16",
            "--tempme_num_layers", "1"]


@pytest.mark.parametrize("flags,conv_prompts", [
    pytest.param(["--token_merge", "clip"], True, marks=pytest.mark.slow),
    (["--token_merge", "clip", "--prompt_mode", "none"], False),
    (["--token_merge", "frame", "--prompt_mode", "none", "--train_clip", "True"], False),
    (["--token_merge", "frame", *_tempme("simple")], False),
    (["--token_merge", "clip", *_tempme("basic")], False),
    (["--token_merge", "clip", "--video_output", "mean_cls", *_tempme("adaptive")], False),
])
def test_gradients_reach_every_trainable_tensor(tiny_sd, flags, conv_prompts):
    model, args = _model(tiny_sd, *flags, conv_prompts=conv_prompts)
    model.train()
    video, mask, ids = _video(2, 4), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), _ids(2)
    loss = build_loss(args)(model(ids, torch.ones_like(ids), video, mask))
    assert torch.isfinite(loss)
    loss.backward()
    groups = parameter_groups(model)
    trainable = {name for group in groups.values() for name, _ in group}
    assert "tempme" not in groups or any(p.grad.abs().sum() > 0 for _, p in groups["tempme"])
    assert trainable >= {f"token_merger.{n}" for n, _ in model.token_merger.named_parameters()}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
        elif name == "prompts.spatial_prompt.scorer.bias":   # a constant shift of every patch score
            continue
        elif name.startswith("tempme_compressor."):
            # Its zero-initialised score layer passes no gradient further back at the first step.
            assert param.grad is not None, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("prompt_mode", ["none", "stop"])
def test_bf16_autocast_keeps_sizes_in_float32(tiny_sd, prompt_mode):
    model, _ = _model(tiny_sd, "--token_merge", "clip", "--prompt_mode", prompt_mode)
    model.eval()   # no dropout: the two passes differ by precision only
    sizes = []
    merge = merge_patches

    def spy(units, metric, count):
        out = merge(units, metric, count)
        sizes.append(out.size.dtype)
        return out
    video, mask = _video(2, 4), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    reference = model.get_visual_output(video, mask)[0].detach()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("modules.token_merge.merge_patches", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model.get_visual_output(video, mask)[0]
    assert emb.dtype == torch.bfloat16 and sizes and set(sizes) == {torch.float32}
    emb.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.token_merger.parameters())
    assert F.cosine_similarity(emb.float(), reference).min() > 0.99


def test_flags_and_errors(tiny_sd):
    assert params.get_args([]).token_merge == "none" and params.get_args([]).token_merge_r == 2
    with pytest.raises(SystemExit):
        params.get_args(["--token_merge_r", "-1"])
    with pytest.raises(SystemExit):
        params.get_args(["--token_merge", "tokens"])
    model, _ = _model(tiny_sd, "--token_merge", "clip", frames=2)
    with pytest.raises(ValueError, match="--max_frames to at least 4"):
        model.eval().get_visual_output(_video(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="--token_merge_r must be >= 0"):
        TokenMerger(TokenMergeConfig("frame", -1), depth=4, num_patches=16, width=8)


@pytest.mark.slow
def test_demo_runs_with_token_merging(tmp_path):
    import main
    result = main.main(["--demo", "--token_merge", "frame", "--synthetic_dir", str(tmp_path / "data"),
                        "--synthetic_num_videos", "16", "--synthetic_num_test_videos", "8", "--epochs", "1",
                        "--batch_size", "8", "--batch_size_val", "8", "--num_workers", "0", "--no_progress",
                        "--device", "cpu", "--output_dir", str(tmp_path / "runs")])
    assert math.isfinite(result["test"]["metrics"]["t2v"]["R1"])
    log_text = (tmp_path / "runs" / "demo" / "log.txt").read_text()
    assert "Token merge: mode=frame r=2 | blocks 0-2 merge 2 tokens per frame after attention (17 -> 11 per frame)" \
        in log_text
