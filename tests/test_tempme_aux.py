"""The auxiliary TempMe loss of CLIP4Clip (`--tempme_aux_weight`, `CLIP4Clip.frame_selection_loss`)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import params
from dataloaders.video_reader import normalize_video
from modules.clip import random_clip_state_dict
from modules.clip4clip import CLIP4Clip

SIDE, WORDS, T_IN = 64, 12, 6


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return random_clip_state_dict("tiny", seed=0)


def _model(sd, tempme_type: str, aux_weight: float, prompt_mode: str = "none") -> CLIP4Clip:
    args = params.get_args(["--clip_arch", "tiny", "--image_size", str(SIDE), "--max_words", str(WORDS),
                            "--prompt_mode", prompt_mode, "--spatial_prompt", "False", "--temporal_prompt", "False",
                            "--use_tempme", "True", "--tempme_type", tempme_type, "--max_frames", str(T_IN),
                            "--tempme_compression_ratio", "0.5", "--tempme_input_frames", str(T_IN),
                            "--tempme_output_frames", "3", "--tempme_max_input_frames", str(T_IN),
                            "--tempme_min_output_frames", "2", "--tempme_max_output_frames", "4",
                            "--tempme_hidden_dim", "16", "--tempme_num_layers", "1",
                            "--tempme_aux_weight", str(aux_weight)])
    torch.manual_seed(0)
    return CLIP4Clip(sd, args).train()


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
    tempme = model.tempme
    return tempme.key.weight if hasattr(tempme, "key") else tempme.scorer.head.weight


def _aux(model: CLIP4Clip, video, mask) -> torch.Tensor:
    model.get_visual_output(normalize_video(video), mask)   # sets last_tempme_info
    return model.frame_selection_loss(normalize_video(video), mask)


@pytest.mark.parametrize("tempme_type,prompt_mode", [("simple", "none"), ("basic", "none"), ("adaptive", "stop")])
def test_loss_is_plain_plus_weighted_aux_and_aux_reaches_scorer(tiny_sd, tempme_type, prompt_mode):
    batch = _batch()
    plain = _model(tiny_sd, tempme_type, 0.0, prompt_mode)
    with_aux = _model(tiny_sd, tempme_type, 0.5, prompt_mode)
    aux = _aux(with_aux, *batch[2:])
    assert torch.isfinite(aux) and aux > 0
    (grad,) = torch.autograd.grad(aux, _score_head(with_aux))
    assert grad.abs().sum() > 0
    # Same initialisation: the only difference of the two losses is 0.5 * aux ...
    torch.testing.assert_close(with_aux(*batch) - plain(*batch), 0.5 * aux.detach(), rtol=1e-4, atol=1e-5)
    # ... and with weight 0 the loss is the plain symmetric InfoNCE.
    text, video = plain.get_text_output(*batch[:2]), plain.get_visual_output(*batch[2:])[0]
    logits = plain.get_similarity_logits(text, video)
    labels = torch.arange(3)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(plain(*batch), expected, rtol=1e-5, atol=1e-6)
    # Evaluation mode never adds the term.
    with torch.no_grad():
        torch.testing.assert_close(with_aux.eval()(*batch), plain.eval()(*batch), rtol=1e-5, atol=1e-6)


def test_aux_alone_teaches_the_distinct_frame(tiny_sd, monkeypatch):
    """Frame 3 (a bright flash) stands out in CLIP space: after a few steps on the aux term
    alone the compressor ranks it first, although its coverage prior starts it low."""
    model = _model(tiny_sd, "simple", 1.0)
    _, _, video, mask = _batch(2)
    video[:, :, :] //= 3
    video[:, 3] = 255
    mask[:] = 1
    dim = 8

    def encode_image(x: torch.Tensor) -> torch.Tensor:   # [B*T, 3, H, W] -> [B*T, D]
        bright = (x.mean((1, 2, 3)) > 1.0).float()[:, None]
        wobble = 0.1 * torch.randn(x.shape[0], dim, generator=torch.Generator().manual_seed(0))
        return torch.eye(dim)[0] + 4 * bright * torch.eye(dim)[1] + wobble

    monkeypatch.setattr(model.clip, "encode_image", encode_image)
    first = _aux(model, video, mask)
    assert model.last_tempme_info["scores"][:, 3].lt(model.last_tempme_info["scores"].amax(1)).all()
    opt = torch.optim.Adam(model.tempme.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        loss = _aux(model, video, mask)
        loss.backward()
        opt.step()
    assert loss < first
    assert model.last_tempme_info["scores"].argmax(1).eq(3).all()
    assert (model.last_tempme_info["indices"] == 3).any(1).all()


def test_negative_weight_is_rejected():
    with pytest.raises(SystemExit):
        params.get_args(["--tempme_aux_weight", "-1"])
