"""CLIP4Clip with STOP (modules/clip4clip.py, built by modules/factory.py from the flags' configuration): API, masking, batch
independence, gradients, the plain-CLIP baseline, the default parameter count and the TempMe
integration."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import params
from engine.factory import build_loss, model_config
from engine.logger import parameter_summary
from engine.optim import parameter_groups
from engine.train import model_outputs
from modules.clip import build_clip, normalize_video, random_clip_state_dict
from modules.clip4clip import CLIP4Clip
from modules.errors import UserError
from modules.factory import build_model
from modules.stop import LinearPromptGenerator, prompt_rows

SIDE, WORDS = 64, 12   # the tiny CLIP: 64 px, patch 16 -> 16 patches per frame


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return random_clip_state_dict("tiny", seed=0)


def _args(*extra: str):
    return params.get_args(["--clip_arch", "tiny", "--image_size", str(SIDE), "--max_frames", "3",
                            "--max_words", str(WORDS), "--spatial_topk", "3", *extra])


def _model(sd, *extra: str) -> CLIP4Clip:
    torch.manual_seed(0)
    return build_model(sd, model_config(_args(*extra)))


def _loss(model: CLIP4Clip, *batch) -> torch.Tensor:
    return build_loss(_args())(model(*batch))


def _video(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, SIDE, SIDE), dtype=torch.uint8, generator=g)


def _ids(b: int) -> torch.Tensor:
    ids = torch.zeros(b, WORDS, dtype=torch.long)
    for i in range(b):
        n = 3 + i % 5
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = 49406, torch.arange(100 + i, 100 + i + n), 49407
    return ids


def test_api_shapes_groups_and_frozen_clip(tiny_sd):
    model = _model(tiny_sd).train()
    assert not model.clip.training and model.prompts.spatial_prompt.training   # frozen CLIP stays in eval mode
    emb, mask = model.get_visual_output(_video(2, 3), torch.ones(2, 3))
    assert emb.shape == (2, 128) and mask.shape == (2, 3)
    text = model.get_text_output(_ids(2), torch.ones(2, WORDS))
    assert text.shape == (2, 128)
    assert model.get_similarity_logits(text, emb).shape == (2, 2)
    groups = parameter_groups(model)
    assert set(groups) == {"stop"}
    names = {n for n, _ in groups["stop"]}
    assert any(".adapter." in n for n in names) and "prompts.global_prompts" in names
    assert all(not p.requires_grad for n, p in model.clip.named_parameters() if ".adapter." not in n)
    summary = parameter_summary(model)
    print(summary)
    total = sum(p.numel() for _, p in groups["stop"])
    assert f"{total:,}" in summary.splitlines()[-1]


def test_train_clip_group_and_logit_scale(tiny_sd):
    model = _model(tiny_sd, "--train_clip", "True").train()
    groups = parameter_groups(model)
    assert set(groups) == {"stop", "clip"} and model.clip.training
    clip_names = {n for n, _ in groups["clip"]}
    assert "clip.visual.conv1.weight" in clip_names and "clip.logit_scale" not in clip_names
    with torch.no_grad():
        model.clip.logit_scale.fill_(10.0)     # clamped to ln 100
    t = F.normalize(torch.randn(2, 128), dim=-1)
    torch.testing.assert_close(model.get_similarity_logits(t, t).diagonal(), torch.full((2,), 100.0))


@pytest.mark.parametrize("frozen_layers", [-1, 0, 2, 4])
def test_clip_frozen_layers_train_only_the_blocks_above(tiny_sd, frozen_layers):
    """The tiny CLIP has 4 blocks per tower; N >= 0 freezes the input embeddings and blocks 0..N-1."""
    model = _model(tiny_sd, "--train_clip", "True", "--clip_frozen_layers", str(frozen_layers))
    trained = {n for n, p in model.clip.named_parameters() if p.requires_grad and ".adapter." not in n}
    embeddings = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                  "visual.ln_pre.weight", "token_embedding.weight", "positional_embedding"}
    outputs = {"visual.ln_post.weight", "visual.proj", "ln_final.weight", "text_projection"}
    assert outputs <= trained and "logit_scale" not in trained
    assert embeddings & trained == (embeddings if frozen_layers == -1 else set())
    for tower in ("visual.transformer", "transformer"):
        for block in range(4):
            name = f"{tower}.resblocks.{block}.mlp.c_fc.weight"
            assert (name in trained) == (block >= frozen_layers), name
    assert all(p.requires_grad for n, p in model.clip.named_parameters() if ".adapter." in n)
    assert {n.removeprefix("clip.") for n, _ in parameter_groups(model).get("clip", [])} == trained


def test_clip_frozen_layers_needs_train_clip_and_a_depth_clip_has(tiny_sd, capsys):
    with pytest.raises(SystemExit):
        _args("--clip_frozen_layers", "2")
    assert "--clip_frozen_layers 2 freezes part of a fine-tuned CLIP: add --train_clip True" in capsys.readouterr().err
    with pytest.raises(UserError, match="--clip_frozen_layers 5 is more than CLIP's 4 blocks"):
        _model(tiny_sd, "--train_clip", "True", "--clip_frozen_layers", "5")


def test_forward_returns_both_towers_and_loss_is_symmetric_infonce(tiny_sd):
    model = _model(tiny_sd).eval()
    ids, video, mask = _ids(3), _video(3, 3), torch.ones(3, 3)
    outputs = model(ids, torch.ones_like(ids), video, mask)
    assert outputs["text_emb"].shape == outputs["video_emb"].shape == (3, 128) and outputs["info"] is None
    assert "teacher_frame_emb" not in outputs
    loss = build_loss(_args())(outputs)
    logits = model.get_similarity_logits(model.get_text_output(ids, torch.ones_like(ids)),
                                         model.get_visual_output(video, mask)[0])
    labels = torch.arange(3)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(loss, expected)


def test_uint8_and_normalised_input_agree(tiny_sd):
    model = _model(tiny_sd).eval()
    video, mask = _video(1, 3), torch.ones(1, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.get_visual_output(video, mask)[0],
                                   model.get_visual_output(normalize_video(video), mask)[0])


def test_frame_tokens_do_not_see_other_frames(tiny_sd):
    # Block 0's output for frame 0 must not change when frame 2's pixels change (prompts that
    # legitimately mix frames - spatial conv, temporal prompt - are off here; later blocks
    # mix frames through the global prompts by design).
    model = _model(tiny_sd, "--spatial_prompt", "False", "--temporal_prompt", "False").eval()
    seen = []
    model.clip.visual.transformer.resblocks[0].register_forward_hook(lambda m, i, o: seen.append(o))
    video, mask = _video(1, 3), torch.ones(1, 3)
    changed = video.clone()
    changed[:, 2] = 255 - changed[:, 2]
    with torch.no_grad():
        model.get_visual_output(video, mask)
        model.get_visual_output(changed, mask)
    n_g, s = 4, 1 + 4 + 16
    assert seen[0].shape[1] == n_g + 3 * s          # 4 global prompts + per frame [CLS, 4 local, 16 patches]
    frames = [x[:, n_g:].view(1, 3, s, -1) for x in seen]
    torch.testing.assert_close(frames[0][:, :2], frames[1][:, :2])
    assert not torch.allclose(frames[0][:, 2], frames[1][:, 2])
    assert not torch.allclose(seen[0][:, :n_g], seen[1][:, :n_g])   # global prompts see every frame


@pytest.mark.parametrize("extra", [(), ("--video_output", "mean_cls"), ("--prompt_mode", "none")])
def test_padded_frames_change_nothing(tiny_sd, extra):
    model = _model(tiny_sd, *extra).eval()
    video, mask = _video(2, 3), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    changed = video.clone()
    changed[0, 2], changed[1, 1:] = 255 - changed[0, 2], 0
    with torch.no_grad():
        a, _ = model.get_visual_output(video, mask)
        b, _ = model.get_visual_output(changed, mask)
        short, _ = model.get_visual_output(video[:1, :2], mask[:1, :2])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:1], short, atol=1e-5, rtol=1e-4)   # padding = a shorter clip


def test_batch_independence_in_eval(tiny_sd):
    model = _model(tiny_sd).eval()
    video, mask = _video(3, 3), torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ids = _ids(3)
    with torch.no_grad():
        together = model.get_visual_output(video, mask)[0]
        text_together = model.get_text_output(ids, torch.ones_like(ids))
        for i in range(3):
            alone = model.get_visual_output(video[i:i + 1], mask[i:i + 1])[0]
            torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(text_together[i:i + 1],
                                       model.get_text_output(ids[i:i + 1], torch.ones_like(ids[i:i + 1])),
                                       atol=1e-5, rtol=1e-4)


def test_training_step_gradients_static_video(tiny_sd):
    model = _model(tiny_sd).train()
    video = _video(2, 1).expand(2, 3, 3, SIDE, SIDE).clone()     # static: every frame identical
    ids = _ids(2)
    loss = _loss(model, ids, torch.ones_like(ids), video, torch.ones(2, 3))
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name                      # nothing reaches frozen CLIP
        elif name == "prompts.spatial_prompt.scorer.bias":
            # A constant added to every patch score changes neither the top-k nor the
            # softmax of the straight-through estimator: its gradient is exactly zero.
            assert param.grad is None or param.grad.abs().max() < 1e-6
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name


def test_prompt_mode_none_is_clip_meanp(tiny_sd):
    model = _model(tiny_sd, "--prompt_mode", "none").eval()
    assert model.prompts is None and parameter_groups(model) == {}
    assert all(block.adapter is None for block in model.clip.visual.transformer.resblocks)
    clip = build_clip(tiny_sd)
    video, mask = _video(2, 3), torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    with torch.no_grad():
        ours, _ = model.get_visual_output(video, mask)
        frames = clip.encode_image(normalize_video(video).flatten(0, 1)).view(2, 3, -1)
        frames = frames / frames.norm(dim=-1, keepdim=True)
        expected = torch.stack([frames[0].mean(0), frames[1, 0]])
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        ids = _ids(2)
        torch.testing.assert_close(model.get_text_output(ids, torch.ones_like(ids)), clip.encode_text(ids))


def test_linear_generator_builds_and_validates(tiny_sd):
    model = _model(tiny_sd, "--prompt_generator", "linear").eval()
    emb, _ = model.get_visual_output(_video(1, 3), torch.ones(1, 3))
    assert emb.shape == (1, 128)
    with pytest.raises(SystemExit):   # StopConfig's own check, at parse time
        _args("--prompt_generator", "linear", "--num_text_prompts", "4")
    config = model_config(_args("--prompt_generator", "linear"))
    config.stop.num_text_prompts = 4
    with pytest.raises(ValueError, match="num_text_prompts"):     # and when building from a configuration
        build_model(tiny_sd, config)
    with pytest.raises(ValueError, match="image_size"):
        _model(tiny_sd, "--image_size", "224")


# Reference code (ViT-B/32, T=12): 13,081,528 trainable with the transformer generator.
B32_TRAINABLE_TRANSFORMER = 13_081_528
B32_TRAINABLE_LINEAR = 4_333_752


@pytest.mark.slow
def test_default_parameter_count_b32():
    sd = random_clip_state_dict("ViT-B/32", seed=0)
    model = build_model(sd, model_config(params.get_args([])))
    count = sum(p.numel() for group in parameter_groups(model).values() for _, p in group)
    generator = sum(p.numel() for p in model.prompts.prompt_generator.parameters())
    linear = sum(p.numel() for p in LinearPromptGenerator(num_local=4, max_frames=12, layers=12, width=768,
                                                          text_width=512, patch_size=32).parameters())
    print(f"B/32 default trainable: {count:,} (transformer generator), {count - generator + linear:,} (linear)")
    print(parameter_summary(model))
    assert count == B32_TRAINABLE_TRANSFORMER
    assert count - generator + linear == B32_TRAINABLE_LINEAR
    # One 1-frame video through the real B/32 geometry: 4 + 54 T tokens.
    seen = []
    model.clip.visual.transformer.resblocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        emb, _ = model.eval().get_visual_output(torch.zeros(1, 1, 3, 224, 224, dtype=torch.uint8), torch.ones(1, 1))
    assert seen[0] == (1, 4 + 54 * 1, 768) and emb.shape == (1, 512) and torch.isfinite(emb).all()


# ---------------------------------------------------------------------------------------------
# TempMe integration
# ---------------------------------------------------------------------------------------------

def _tempme_args(tempme_type: str) -> list[str]:
    return ["--use_tempme", "True", "--tempme_type", tempme_type, "--tempme_compression_ratio", "0.5",
            "--max_frames", "4", "--tempme_input_frames", "4", "--tempme_output_frames", "2",
            "--tempme_max_input_frames", "4", "--tempme_min_output_frames", "1", "--tempme_max_output_frames", "3",
            "--tempme_hidden_dim", "16", "--tempme_num_layers", "1"]


@pytest.mark.parametrize("tempme_type,t_out", [("simple", 2), ("basic", 2), ("adaptive", 3)])
def test_tempme_inside_clip4clip(tiny_sd, tempme_type, t_out):
    model = _model(tiny_sd, *_tempme_args(tempme_type)).train()
    compressor = model.tempme_compressor
    assert model.prompts.prompt_frames == max(4, compressor.output_frames)
    groups = parameter_groups(model)
    assert {n for n, _ in groups["tempme"]} == {f"tempme_compressor.{n}" for n, _ in compressor.named_parameters()}
    video, mask = _video(2, 4), torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    ids = _ids(2)
    loss_fn = build_loss(_args(*_tempme_args(tempme_type)))
    assert "teacher_frame_emb" not in model(ids, torch.ones_like(ids), video, mask)   # the towers alone
    outputs = model_outputs(model, loss_fn, [ids, torch.ones_like(ids), video, mask])  # the training step's
    assert outputs["info"]["indices"].shape[0] == 2
    assert outputs["teacher_frame_emb"].shape[:2] == (1, 4)          # ceil(0.25 * 2) videos taught
    loss = loss_fn(outputs)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in groups["tempme"])
    model.eval()
    with torch.no_grad():
        emb, mask_out, info = model.encode_video(video, mask)
    assert emb.shape == (2, 128) and torch.isfinite(emb).all()
    assert mask_out.shape[0] == 2 and mask_out.shape[1] <= t_out
    assert torch.equal(mask_out.sum(1), info["frames_kept"].to(mask_out.dtype))
    assert all(k.startswith("tempme_compressor.") for k in model.state_dict() if "tempme" in k)


def test_prompt_rows_follow_source_frames():
    assert torch.equal(prompt_rows(None, 3, 3, 4, torch.device("cpu")), torch.arange(3))
    indices = torch.tensor([[0, 2, 5, 11], [1, 3, -1, -1]])
    rows = prompt_rows(indices, 4, 12, 12, torch.device("cpu"))
    assert torch.equal(rows, torch.tensor([[0, 2, 5, 11], [1, 3, 0, 0]]))   # same frames, same prompts
    assert torch.equal(prompt_rows(torch.tensor([[0, 47]]), 2, 48, 16, torch.device("cpu")), torch.tensor([[0, 15]]))
    with pytest.raises(ValueError, match="max_frames"):
        prompt_rows(None, 5, 5, 4, torch.device("cpu"))


def test_use_tempme_false_is_the_baseline(tiny_sd):
    base = _model(tiny_sd)
    off = _model(tiny_sd, "--use_tempme", "False", "--tempme_type", "basic", "--tempme_hidden_dim", "8")
    assert off.tempme_compressor is None and set(parameter_groups(off)) == {"stop"}
    sd_base, sd_off = base.state_dict(), off.state_dict()
    assert sd_base.keys() == sd_off.keys()
    assert all(torch.equal(sd_base[k], sd_off[k]) for k in sd_base)
    video, mask = _video(1, 3), torch.ones(1, 3)
    with torch.no_grad():
        torch.testing.assert_close(base.eval().get_visual_output(video, mask)[0],
                                   off.eval().get_visual_output(video, mask)[0], rtol=0, atol=0)


def test_inference_cache_follows_parameter_updates(tiny_sd):
    # Prompt tables and FFT kernel spectra are cached while no gradient is recorded; an
    # in-place update (optimiser step, load_state_dict) must invalidate them.
    model = _model(tiny_sd).eval()
    video, mask = _video(1, 3), torch.ones(1, 3)
    with torch.no_grad():
        first = model.get_visual_output(video, mask)[0]
        torch.testing.assert_close(model.get_visual_output(video, mask)[0], first, rtol=0, atol=0)
        for param in (model.prompts.prompt_generator.prompt_table, model.prompts.spatial_prompt.convs[0].weight):
            param.add_(0.5)
            assert not torch.allclose(model.get_visual_output(video, mask)[0], first)
            param.sub_(0.5)
        torch.testing.assert_close(model.get_visual_output(video, mask)[0], first, atol=1e-5, rtol=1e-5)
    text, visual = model.prompts.prompt_generator()            # gradients on: computed afresh, with a graph
    assert text.grad_fn is not None and visual.grad_fn is not None
