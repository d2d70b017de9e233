"""The auxiliary TempMe loss (`--tempme_aux_weight`): `RetrievalLoss`'s frame-selection term on the
frame teacher's inputs that the training step adds to the model's outputs (`engine.train.model_outputs`)."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

import params
from engine.factory import build_loss, model_config
from engine.train import model_outputs
from modules.clip import normalize_video, random_clip_state_dict
from modules.clip4clip import CLIP4Clip
from modules.factory import build_model
from modules.loss import (LossConfig, RetrievalLoss, caption_contrast_loss, caption_relevance_targets,
                          completion_targets, distinctiveness_targets)

SIDE, WORDS, T_IN = 64, 12, 6


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return random_clip_state_dict("tiny", seed=0)


def _args(tempme_type: str, aux_weight: float, prompt_mode: str = "none"):
    return params.get_args(["--clip_arch", "tiny", "--image_size", str(SIDE), "--max_words", str(WORDS),
                            "--prompt_mode", prompt_mode, "--spatial_prompt", "False", "--temporal_prompt", "False",
                            "--use_tempme", "True", "--tempme_type", tempme_type, "--max_frames", str(T_IN),
                            "--tempme_compression_ratio", "0.5", "--tempme_input_frames", str(T_IN),
                            "--tempme_output_frames", "3", "--tempme_max_input_frames", str(T_IN),
                            "--tempme_min_output_frames", "2", "--tempme_max_output_frames", "4",
                            "--tempme_hidden_dim", "16", "--tempme_num_layers", "1",
                            "--tempme_aux_weight", str(aux_weight), "--tempme_teacher", "distinct",
                            "--tempme_teacher_share", "1"])


def _model(sd, tempme_type: str, aux_weight: float, prompt_mode: str = "none") -> CLIP4Clip:
    torch.manual_seed(0)
    return build_model(sd, model_config(_args(tempme_type, aux_weight, prompt_mode))).train()


def _batch(b: int = 3):
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (b, T_IN, 3, SIDE, SIDE), dtype=torch.uint8, generator=g)
    mask = torch.ones(b, T_IN)
    mask[-1, -2:] = 0
    ids = torch.zeros(b, WORDS, dtype=torch.long)
    for i in range(b):
        ids[i, 0], ids[i, 1:4], ids[i, 4] = 49406, torch.arange(200 + 3 * i, 203 + 3 * i), 49407
    return ids, torch.ones_like(ids), video, mask


def _score_head(model: CLIP4Clip) -> torch.Tensor:
    """The zero-initialised last layer producing the learned frame scores."""
    tempme = model.tempme_compressor
    return tempme.key.weight if hasattr(tempme, "key") else tempme.scorer.head.weight


def _losses(model: CLIP4Clip, batch, aux_weight: float = 1.0) -> dict[str, torch.Tensor]:
    loss_fn = RetrievalLoss(LossConfig(aux_weight=aux_weight, teacher="distinct", teacher_share=1.0))
    return loss_fn(model_outputs(model, loss_fn, list(batch)), output_dict=True)


@pytest.mark.parametrize("tempme_type,prompt_mode", [("simple", "none"), ("basic", "none"), ("adaptive", "stop")])
def test_loss_is_plain_plus_weighted_aux_and_aux_reaches_scorer(tiny_sd, tempme_type, prompt_mode):
    batch = _batch()
    plain = _model(tiny_sd, tempme_type, 0.0, prompt_mode)
    with_aux = _model(tiny_sd, tempme_type, 0.5, prompt_mode)
    no_teacher = build_loss(_args(tempme_type, 0.0, prompt_mode))
    assert "teacher_frame_emb" not in model_outputs(plain, no_teacher, list(batch))   # weight 0: no teacher pass
    losses = _losses(with_aux, batch, 0.5)
    aux = losses["frame_selection"]
    assert torch.isfinite(aux) and aux > 0
    (grad,) = torch.autograd.grad(aux, _score_head(with_aux), retain_graph=True)
    assert grad.abs().sum() > 0
    # Same initialisation: the only difference of the two losses is 0.5 * aux ...
    plain_loss = no_teacher(plain(*batch))
    torch.testing.assert_close(losses["loss"] - plain_loss, 0.5 * aux.detach(), rtol=1e-4, atol=1e-5)
    flags_loss = build_loss(_args(tempme_type, 0.5, prompt_mode))
    torch.testing.assert_close(flags_loss(model_outputs(with_aux, flags_loss, list(batch))), losses["loss"])
    # ... and with weight 0 the loss is the plain symmetric InfoNCE.
    text, video = plain.get_text_output(*batch[:2]), plain.get_visual_output(*batch[2:])[0]
    logits = plain.get_similarity_logits(text, video)
    labels = torch.arange(3)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(plain_loss, expected, rtol=1e-5, atol=1e-6)


def test_aux_alone_teaches_the_distinct_frame(tiny_sd, monkeypatch):
    """Frame 3 (a bright flash) stands out in CLIP space: after a few steps on the aux term
    alone the compressor ranks it first, although its coverage prior starts it low."""
    model = _model(tiny_sd, "simple", 1.0)
    batch = list(_batch(2))
    video, mask = batch[2], batch[3]
    video[:, :, :] //= 3
    video[:, 3] = 255
    mask[:] = 1
    dim = 8

    def frame_embeddings(x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:   # normalised [B, T, 3, H, W] -> [B, T, D]
        bright = (x.mean((2, 3, 4)) > 1.0).float()[..., None]
        wobble = 0.1 * torch.randn(*x.shape[:2], dim, generator=torch.Generator().manual_seed(0))
        return torch.nn.functional.normalize(torch.eye(dim)[0] + 4 * bright * torch.eye(dim)[1] + wobble, dim=-1)

    monkeypatch.setattr(model, "frame_embeddings", frame_embeddings)

    loss_fn = RetrievalLoss(LossConfig(aux_weight=1.0, teacher="distinct", teacher_share=1.0))

    def aux_and_info() -> tuple[torch.Tensor, dict]:
        outputs = model_outputs(model, loss_fn, batch)
        return loss_fn(outputs, output_dict=True)["frame_selection"], outputs["info"]

    first, info = aux_and_info()
    assert info["scores"][:, 3].lt(info["scores"].amax(1)).all()
    opt = torch.optim.Adam(model.tempme_compressor.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        loss, info = aux_and_info()
        loss.backward()
        opt.step()
    assert loss < first
    assert info["scores"].argmax(1).eq(3).all()
    assert (info["indices"] == 3).any(1).all()


def test_negative_weight_is_rejected():
    with pytest.raises(SystemExit):
        params.get_args(["--tempme_aux_weight", "-1"])
    with pytest.raises(ValueError, match="tempme_aux_weight"):
        RetrievalLoss(LossConfig(aux_weight=-1.0))


def test_caption_relevance_is_the_frames_posterior_of_its_own_caption():
    torch.manual_seed(0)
    frames = F.normalize(torch.randn(2, 5, 8), dim=-1)
    texts = torch.randn(3, 8)                                  # 2 taught videos, 3 captions in the batch
    scale = torch.tensor(20.0)
    got = caption_relevance_targets(frames, texts, scale)
    for b in range(2):
        for t in range(5):
            logits = scale * F.cosine_similarity(frames[b, t][None], texts, dim=-1)
            torch.testing.assert_close(got[b, t], logits.log_softmax(0)[b])


def test_text_teacher_prefers_the_telling_frame_where_distinctiveness_chases_the_outlier():
    """Video 0's caption differs from video 1's by an event shown in frame 2 only; frame 4 is an
    uncaptioned outlier (a cut); video 2 shows something else. Distinctiveness ranks the outlier
    first; caption relevance ranks the event first and the outlier, which matches no caption, last."""
    content, event, other, outlier, elsewhere = torch.eye(8)[:5]
    captions = torch.stack([content + event, content + other, elsewhere])
    frames = torch.stack([content, content, content + event, content, outlier])[None]   # [1, 5, D]
    frames = F.normalize(frames + 0.01 * torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    mask = torch.ones(1, 5)
    assert distinctiveness_targets(frames, mask).argmax() == 4
    relevance = caption_relevance_targets(frames, captions, torch.tensor(30.0))
    assert relevance.argmax() == 2 and relevance[0, 4] < relevance[0, :4].min()


@pytest.mark.parametrize("prompt_mode", ["none", "stop"])
def test_frame_embeddings_are_one_frame_videos_at_their_place_in_time(tiny_sd, prompt_mode):
    model = _model(tiny_sd, "simple", 1.0, prompt_mode).eval()
    _, _, video, mask = _batch(2)
    video = normalize_video(video)
    emb = model.frame_embeddings(video, mask)
    assert emb.shape == (2, T_IN, 128) and emb.grad_fn is None
    assert torch.equal(emb[-1, -2:], torch.zeros(2, 128))              # padded frames stay empty
    with torch.no_grad():
        for b, t in ((0, 0), (1, 3)):
            alone = model._embed(video[b:b + 1, t:t + 1], torch.ones(1, 1), torch.tensor([[t]]), T_IN)
            torch.testing.assert_close(emb[b, t], F.normalize(alone[0], dim=-1), atol=1e-5, rtol=1e-4)


def test_completion_teacher_prefers_the_frame_that_completes_the_others():
    """Captions: the own one names content + event, the partner content + another event, two others
    share the event but not the content. Frame 2 shows the event alone (a flash washes the content
    out), frame 4 is an uncaptioned outlier, the compressor keeps the content frames 0, 1, 3. Alone,
    the event frame matches three captions and ranks below the content frames (`text`); with the
    kept frames it picks out its own caption, so the completion teacher ranks it first and the
    outlier, which adds nothing to any caption, not above the content frames. Once the event frame is
    kept it still ranks first (dropping it would lose what tells the caption apart)."""
    content, event, other, x, y, outlier = torch.eye(8)[:6]
    captions = torch.stack([content + event, content + other, event + x, event + y])
    frames = F.normalize(torch.stack([content, content, event, content, outlier])[None], dim=-1)   # [1, 5, D]
    mask, kept = torch.ones(1, 5), torch.tensor([[0, 1, 3]])
    scale = torch.tensor(30.0)
    alone = caption_relevance_targets(frames, captions, scale)
    assert alone[0, 2] < alone[0, 0]
    completion = completion_targets(frames, mask, kept, captions, scale)
    assert completion.argmax() == 2 and completion[0, 4] <= completion[0, [0, 1, 3]].min() + 1e-5
    torch.testing.assert_close(completion[0, 0], completion[0, 1])      # kept content frames alike
    with_event = completion_targets(frames, mask, torch.tensor([[0, 2, 3]]), captions, scale)
    assert with_event.argmax() == 2 and with_event[0, 2] > with_event[0, [0, 1, 3, 4]].max()
    outputs = {"teacher_frame_emb": frames, "input_mask": mask, "text_emb": captions, "logit_scale": scale,
               "info": {"indices": kept}}
    via_loss = RetrievalLoss(LossConfig(teacher="completion")).frame_targets(outputs)
    torch.testing.assert_close(via_loss, completion)
    # Padded frames and empty slots are ignored: the same video padded to 7 frames, one slot unused.
    padded = torch.cat([frames, torch.zeros(1, 2, 8)], 1)
    again = completion_targets(padded, torch.cat([mask, torch.zeros(1, 2)], 1), torch.tensor([[0, 1, 3, -1]]),
                               captions, scale)
    torch.testing.assert_close(again[0, :5], completion[0])


def test_caption_contrast_tells_captions_apart_but_not_those_of_one_video():
    torch.manual_seed(0)
    texts = torch.randn(4, 8, requires_grad=True)
    scale = torch.tensor(10.0)
    got = caption_contrast_loss(texts, scale)
    unit = F.normalize(texts.detach(), dim=-1)
    expected = statistics.fmean(-math.log(math.exp(10 * float(unit[i] @ unit[i]))
                                          / sum(math.exp(10 * float(unit[i] @ unit[j])) for j in range(4)))
                                for i in range(4))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Captions 0 and 1 belong to one video: neither is the other's negative.
    owners = torch.tensor([0, 0, 1, 2])
    masked = caption_contrast_loss(texts, scale, owners)
    rows = [[j for j in range(4) if j == i or owners[j] != owners[i]] for i in range(4)]
    expected = statistics.fmean(-math.log(math.exp(10 * float(unit[i] @ unit[i]))
                                          / sum(math.exp(10 * float(unit[i] @ unit[j])) for j in rows[i]))
                                for i in range(4))
    assert masked.item() == pytest.approx(expected, rel=1e-5)
    # Two captions that (nearly) collapsed are pushed apart by its gradient.
    close = torch.stack([torch.eye(8)[0], torch.eye(8)[0] + 0.01 * torch.eye(8)[1], torch.eye(8)[2]]).requires_grad_()
    (grad,) = torch.autograd.grad(caption_contrast_loss(close, scale), close)
    before, after = F.normalize(close.detach(), dim=-1), F.normalize(close.detach() - 0.5 * grad, dim=-1)
    assert float(after[0] @ after[1]) < float(before[0] @ before[1])


def test_retrieval_loss_adds_the_weighted_caption_contrast():
    torch.manual_seed(0)
    outputs = {"text_emb": torch.randn(4, 8), "video_emb": torch.randn(4, 8), "logit_scale": torch.tensor(10.0),
               "video_index": torch.tensor([0, 0, 1, 2])}
    plain = RetrievalLoss(LossConfig(aux_weight=0.0))(outputs, output_dict=True)
    with_contrast = RetrievalLoss(LossConfig(aux_weight=0.0, caption_contrast=0.5))(outputs, output_dict=True)
    assert "caption_contrast" not in plain
    expected = caption_contrast_loss(outputs["text_emb"], outputs["logit_scale"], outputs["video_index"])
    torch.testing.assert_close(with_contrast["caption_contrast"], expected)
    torch.testing.assert_close(with_contrast["loss"], plain["loss"] + 0.5 * expected)
    with pytest.raises(ValueError, match="caption_contrast"):
        RetrievalLoss(LossConfig(caption_contrast=-1.0))


@pytest.mark.parametrize("tempme_type", ["simple", "basic", "adaptive"])
def test_completion_teacher_reaches_the_selector(tiny_sd, tempme_type):
    """The completion targets (built from the kept frames of the step's own selection) give every
    compressor's score head a gradient through the frame-selection term."""
    model = _model(tiny_sd, tempme_type, 1.0)
    batch = list(_batch())
    loss_fn = RetrievalLoss(LossConfig(aux_weight=1.0, teacher="completion", teacher_share=1.0))
    outputs = model_outputs(model, loss_fn, batch, torch.tensor([0, 1, 2]))
    aux = loss_fn(outputs, output_dict=True)["frame_selection"]
    assert torch.isfinite(aux) and aux > 0
    (grad,) = torch.autograd.grad(aux, _score_head(model))
    assert grad.abs().sum() > 0
