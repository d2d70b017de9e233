"""modules/factory.py builds the model from typed configurations; engine/factory.py turns flags into them."""
from __future__ import annotations

import pytest
import torch

import params
from engine.factory import build_loss, model_config
from modules.clip import build_clip, random_clip_state_dict
from modules.clip4clip import CLIP4Clip
from modules.factory import ModelConfig, build_model
from modules.loss import LossConfig, RetrievalLoss
from modules.stop import StopConfig, StopPrompts, add_adapters
from modules.tempme import SimpleTempMe, TempMeConfig, get_tempme_model
from modules.token_merge import TokenMergeConfig

FLAGS = ["--clip_arch", "tiny", "--image_size", "64", "--max_frames", "4", "--max_words", "12", "--spatial_topk", "3",
         "--use_tempme", "True", "--tempme_compression_ratio", "0.5", "--tempme_hidden_dim", "16"]


def test_model_from_typed_parts_equals_the_factory_model():
    """What `build_model` does from the flags' configuration, done by hand from dataclasses: same
    parameters, same outputs."""
    sd = random_clip_state_dict("tiny", seed=0)
    args = params.get_args(FLAGS)
    torch.manual_seed(0)
    built = build_model(sd, model_config(args)).eval()

    torch.manual_seed(0)
    clip = build_clip(sd)
    compressor = get_tempme_model(TempMeConfig(enabled=True, type="simple", compression_ratio=0.5, hidden_dim=16,
                                               max_frames=4))
    stop = StopConfig(spatial_topk=3, prompt_frames=4, kernel_scale=64 / 224)   # 64 px frames: smaller kernels
    prompts = StopPrompts(stop, clip)
    add_adapters(clip, dim=32, scale=0.1)
    by_hand = CLIP4Clip(clip, prompts, compressor).eval()

    assert model_config(args) == ModelConfig(image_size=64, stop=StopConfig(spatial_topk=3), tempme=TempMeConfig(
        enabled=True, type="simple", compression_ratio=0.5, hidden_dim=16, max_frames=4), token_merge=TokenMergeConfig())
    assert model_config(args).stop_for_frames() == stop
    assert built.prompts.spatial_prompt.convs[0].kernel_size == (3, 3, 3)           # 11 * 64/224 -> 3
    assert built.prompts.temporal_prompt.inter_convs[0].kernel_size == (3, 5, 7)     # 15, 25 -> 5, 7
    assert isinstance(built.tempme_compressor, SimpleTempMe)
    a, b = built.state_dict(), by_hand.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    video = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(built.get_visual_output(video, mask)[0], by_hand.get_visual_output(video, mask)[0],
                                   rtol=0, atol=0)


def test_loss_follows_the_flags():
    assert build_loss(params.get_args(FLAGS)).config == LossConfig(aux_weight=1.0, teacher="completion", teacher_share=0.25)
    assert build_loss(params.get_args(FLAGS + ["--tempme_teacher", "distinct"])).config.teacher == "distinct"
    assert build_loss(params.get_args(FLAGS + ["--tempme_aux_weight", "0.3"])).config.aux_weight == 0.3
    assert build_loss(params.get_args(FLAGS + ["--use_tempme", "False"])).config.aux_weight == 0.0
    assert isinstance(build_loss(params.get_args([])), RetrievalLoss)
    assert LossConfig(teacher_share=0.25).taught_videos(9) == 3 and LossConfig(aux_weight=0).taught_videos(9) == 0


def test_tempme_config_counts_frames_in_one_place():
    base = ["--max_frames", "10"]
    assert TempMeConfig.from_flags(params.get_args(base)).num_input_frames == 10
    for tempme_type, loaded, reaching_clip in (("simple", 10, 8), ("basic", 32, 12), ("adaptive", 48, 16)):
        config = model_config(params.get_args(base + ["--use_tempme", "True", "--tempme_type", tempme_type,
                                                      "--tempme_compression_ratio", "0.8"])).tempme
        assert (config.num_input_frames, config.num_output_frames) == (loaded, reaching_clip)
        assert get_tempme_model(config).output_frames == reaching_clip


def test_factory_errors_name_the_flag():
    sd = random_clip_state_dict("tiny", seed=0)
    with pytest.raises(ValueError, match="--image_size 224"):
        build_model(sd, model_config(params.get_args(FLAGS + ["--image_size", "224"])))
    with pytest.raises(SystemExit):   # the compressor's own range check runs at parse time
        params.get_args(FLAGS + ["--tempme_compression_ratio", "1.5"])
