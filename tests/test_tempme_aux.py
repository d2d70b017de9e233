"""The auxiliary TempMe loss (`--tempme_aux_weight`): `RetrievalLoss`'s frame-selection term on the
frame teacher that `CLIP4Clip.forward` returns in training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import params
from modules.clip import random_clip_state_dict
from modules.clip4clip import CLIP4Clip
from modules.factory import build_loss, build_model
from modules.loss import RetrievalLoss

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
                            "--tempme_aux_weight", str(aux_weight)])


def _model(sd, tempme_type: str, aux_weight: float, prompt_mode: str = "none") -> CLIP4Clip:
    torch.manual_seed(0)
    return build_model(sd, _args(tempme_type, aux_weight, prompt_mode)).train()


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
    return RetrievalLoss(aux_weight=aux_weight)(model(*batch), output_dict=True)


@pytest.mark.parametrize("tempme_type,prompt_mode", [("simple", "none"), ("basic", "none"), ("adaptive", "stop")])
def test_loss_is_plain_plus_weighted_aux_and_aux_reaches_scorer(tiny_sd, tempme_type, prompt_mode):
    batch = _batch()
    plain = _model(tiny_sd, tempme_type, 0.0, prompt_mode)
    with_aux = _model(tiny_sd, tempme_type, 0.5, prompt_mode)
    assert "teacher_frame_emb" not in plain(*batch)          # no teacher pass when the weight is 0
    losses = _losses(with_aux, batch, 0.5)
    aux = losses["frame_selection"]
    assert torch.isfinite(aux) and aux > 0
    (grad,) = torch.autograd.grad(aux, _score_head(with_aux), retain_graph=True)
    assert grad.abs().sum() > 0
    # Same initialisation: the only difference of the two losses is 0.5 * aux ...
    plain_loss = build_loss(_args(tempme_type, 0.0, prompt_mode))(plain(*batch))
    torch.testing.assert_close(losses["loss"] - plain_loss, 0.5 * aux.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(build_loss(_args(tempme_type, 0.5, prompt_mode))(with_aux(*batch)), losses["loss"])
    # ... and with weight 0 the loss is the plain symmetric InfoNCE.
    text, video = plain.get_text_output(*batch[:2]), plain.get_visual_output(*batch[2:])[0]
    logits = plain.get_similarity_logits(text, video)
    labels = torch.arange(3)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(plain_loss, expected, rtol=1e-5, atol=1e-6)
    # Evaluation mode never adds the term.
    with torch.no_grad():
        assert "frame_selection" not in _losses(with_aux.eval(), batch, 0.5)
        torch.testing.assert_close(_losses(with_aux, batch, 0.5)["loss"], _losses(plain.eval(), batch)["loss"],
                                   rtol=1e-5, atol=1e-6)


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

    def encode_image(x: torch.Tensor) -> torch.Tensor:   # [B*T, 3, H, W] -> [B*T, D]
        bright = (x.mean((1, 2, 3)) > 1.0).float()[:, None]
        wobble = 0.1 * torch.randn(x.shape[0], dim, generator=torch.Generator().manual_seed(0))
        return torch.eye(dim)[0] + 4 * bright * torch.eye(dim)[1] + wobble

    monkeypatch.setattr(model.clip, "encode_image", encode_image)

    def aux_and_info() -> tuple[torch.Tensor, dict]:
        outputs = model(*batch)
        return RetrievalLoss(aux_weight=1.0)(outputs, output_dict=True)["frame_selection"], outputs["info"]

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
        RetrievalLoss(aux_weight=-1.0)
