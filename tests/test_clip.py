"""CLIP backbone: weight formats, size inference, and outputs against open_clip's OpenAI loader."""
from __future__ import annotations

import open_clip
import pytest
import torch
from clip_archives import save_openai_archive, save_state_dict

from modules.clip import (
    CLIP,
    CLIP_CONFIGS,
    build_clip,
    clip_config_from_state_dict,
    load_clip_state_dict,
    random_clip_state_dict,
)


@pytest.fixture(scope="module")
def tiny_state_dict() -> dict[str, torch.Tensor]:
    return random_clip_state_dict("tiny", seed=3)


def _reference(path) -> torch.nn.Module:
    """open_clip's CLIP built by its own reader of OpenAI archives: an implementation independent of ours.

    open_clip rounds OpenAI weights through fp16 while building, so the archive's exact tensors
    are loaded into it again to compare fp32 archives exactly.
    """
    reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    exact = torch.jit.load(str(path), map_location="cpu").state_dict()
    reference.load_state_dict({k: v.float() for k, v in exact.items()
                               if k not in ("input_resolution", "context_length", "vocab_size")})
    return reference


def _inputs(resolution: int, context: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(3, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    texts = ["a man is driving a red car", "Two cats &amp; a dog 🐶 play", "x " * 120]
    return images, open_clip.tokenize(texts, context_length=context)


def _assert_matches_reference(model, reference, resolution: int) -> None:
    images, ids = _inputs(resolution)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), atol=1e-4, rtol=0)
        torch.testing.assert_close(model.encode_text(ids), reference.encode_text(ids), atol=1e-4, rtol=0)
    assert model.logit_scale.item() == pytest.approx(reference.logit_scale.item())


@pytest.mark.parametrize("fp16", [True, False])
def test_openai_archive_matches_reference(tiny_state_dict, tmp_path, fp16):
    path = save_openai_archive(tiny_state_dict, tmp_path / "ViT-tiny.pt", fp16=fp16)
    model = build_clip(load_clip_state_dict(path))
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_matches_reference(model, _reference(path), CLIP_CONFIGS["tiny"]["image_resolution"])


def test_plain_state_dict_equals_archive(tiny_state_dict, tmp_path):
    plain = load_clip_state_dict(save_state_dict(tiny_state_dict, tmp_path / "plain.pt"))
    wrapped = load_clip_state_dict(save_state_dict(
        {"state_dict": {f"module.{k}": v for k, v in tiny_state_dict.items()}}, tmp_path / "wrapped.pt"))
    archive = load_clip_state_dict(save_openai_archive(tiny_state_dict, tmp_path / "a.pt", fp16=False))
    assert "input_resolution" not in archive and "vocab_size" not in archive
    for other in (wrapped, archive):
        assert other.keys() == plain.keys()
        for key in plain:
            assert torch.equal(plain[key], other[key]), key


def test_fp16_archive_is_read_as_float32_rounded_weights(tiny_state_dict, tmp_path):
    loaded = load_clip_state_dict(save_openai_archive(tiny_state_dict, tmp_path / "h.pt", fp16=True))
    weight = loaded["visual.conv1.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, tiny_state_dict["visual.conv1.weight"].half().float())


@pytest.mark.slow
def test_vit_b32_archive_matches_reference(tmp_path):
    """A full-size random ViT-B/32 in OpenAI's fp16 archive format, compared end to end."""
    state_dict = random_clip_state_dict("ViT-B/32", seed=1)
    path = save_openai_archive(state_dict, tmp_path / "ViT-B-32.pt", fp16=True)
    model = build_clip(load_clip_state_dict(path))
    assert model.visual.num_patches == 49 and model.visual.width == 768
    _assert_matches_reference(model, _reference(path), 224)


@pytest.mark.parametrize("arch", ["ViT-B/32", "ViT-B/16", "ViT-L/14", "tiny"])
def test_size_inferred_from_shapes(arch):
    with torch.device("meta"):  # shapes only: large models are never materialised
        shapes = CLIP(**CLIP_CONFIGS[arch]).state_dict()
    assert clip_config_from_state_dict(shapes) == CLIP_CONFIGS[arch]


def test_text_length_below_context_gives_same_features(tiny_state_dict):
    """CLIP4Clip feeds max_words (32) tokens, not 77: under the causal mask EOT's feature is the same."""
    model = build_clip(tiny_state_dict)
    ids = open_clip.tokenize(["a man is driving a red car", "two cats play"], context_length=77)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), model.encode_text(ids[:, :32]), atol=1e-5, rtol=0)


def test_missing_weights_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "ViT-B-32.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_clip_state_dict(missing)
    assert str(missing) in str(err.value) and "ViT-B-32.pt" in str(err.value)


def test_wrong_image_size_is_a_clear_error(tiny_state_dict):
    model = build_clip(tiny_state_dict)
    with pytest.raises(ValueError, match="--image_size 64"):
        model.encode_image(torch.zeros(1, 3, 32, 32))


def test_random_state_dict_is_deterministic():
    a, b = random_clip_state_dict("tiny", seed=5), random_clip_state_dict("tiny", seed=5)
    c = random_clip_state_dict("tiny", seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj"], c["visual.proj"])
