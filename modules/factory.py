"""The one place where model configurations become modules: `ModelConfig` and `build_model`.

    config = ModelConfig(stop=StopConfig(num_local_prompts=8), tempme=TempMeConfig(enabled=True))
    model = build_model(clip_state_dict, config)      # CLIP4Clip with its STOP prompts and TempMe

Below this module everything takes typed configurations or explicit arguments; the engine turns
the command-line flags into a `ModelConfig` (`engine.factory.model_config`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from modules.clip import build_clip
from modules.clip4clip import PROMPT_MODES, VIDEO_OUTPUTS, CLIP4Clip
from modules.errors import UserError
from modules.stop import REFERENCE_RESOLUTION, StopConfig, StopPrompts, add_adapters
from modules.tempme import TempMeConfig, get_tempme_model
from modules.token_merge import TokenMergeConfig, TokenMerger

__all__ = ["ModelConfig", "build_model", "StopConfig", "TempMeConfig", "TokenMergeConfig"]


@dataclass
class ModelConfig:
    """Everything `build_model` needs besides CLIP's weights. The scalar fields are the flags of
    the same name (their defaults the flags'); `stop`, `tempme` and `token_merge` the flag groups.

    prompt_mode: "stop" (STOP's prompts and adapters) or "none" (plain CLIP4Clip meanP).
    video_output: with prompts, "global_prompt0" (STOP) or "mean_cls".
    train_clip: fine-tune CLIP itself.
    clip_frozen_layers: with `train_clip`, -1 fine-tunes all of CLIP; N >= 0 keeps its input
        embeddings and first N blocks of each tower frozen (CLIP4Clip's `--freeze_layer_num`).
    image_size: frame side; must be CLIP's input resolution.
    """
    prompt_mode: str = "stop"
    video_output: str = "global_prompt0"
    train_clip: bool = False
    clip_frozen_layers: int = -1
    image_size: int = 224
    stop: StopConfig = field(default_factory=StopConfig)
    tempme: TempMeConfig = field(default_factory=TempMeConfig)
    token_merge: TokenMergeConfig = field(default_factory=TokenMergeConfig)

    @classmethod
    def from_flags(cls, flags: Any) -> "ModelConfig":
        """From any object carrying the flags as attributes (the namespace of `params.get_args`)."""
        return cls(prompt_mode=flags.prompt_mode, video_output=flags.video_output, train_clip=flags.train_clip,
                   clip_frozen_layers=flags.clip_frozen_layers, image_size=flags.image_size, stop=StopConfig.from_flags(flags),
                   tempme=TempMeConfig.from_flags(flags), token_merge=TokenMergeConfig.from_flags(flags))

    def validate(self) -> None:
        """Raise ValueError naming the flag for values no model can be built from (each part's own
        checks included; those depending on CLIP's size are made when building)."""
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"--prompt_mode must be one of {', '.join(PROMPT_MODES)}, got {self.prompt_mode!r}")
        if self.video_output not in VIDEO_OUTPUTS:
            raise ValueError(f"--video_output must be one of {', '.join(VIDEO_OUTPUTS)}, got {self.video_output!r}")
        if self.image_size < 1:
            raise ValueError(f"--image_size must be >= 1, got {self.image_size}")
        if self.clip_frozen_layers < -1:
            raise ValueError(f"--clip_frozen_layers must be -1 (nothing frozen) or a number of blocks >= 0, "
                             f"got {self.clip_frozen_layers}")
        if self.clip_frozen_layers >= 0 and not self.train_clip:
            raise ValueError(f"--clip_frozen_layers {self.clip_frozen_layers} freezes part of a fine-tuned CLIP: "
                             f"add --train_clip True, or drop it (without --train_clip all of CLIP is frozen)")
        self.tempme.validate()
        self.token_merge.validate()
        if self.prompt_mode == "stop":
            self.stop_for_frames().validate()

    def stop_for_frames(self) -> StopConfig:
        """`stop` with its derived fields: one prompt-table row per frame that can reach CLIP
        (`--max_frames`, or the compressor's most output frames if larger), kernels shrunk with
        frames smaller than the reference's 224 px."""
        return replace(self.stop, prompt_frames=max(self.tempme.max_frames, self.tempme.num_output_frames),
                       kernel_scale=min(1.0, self.image_size / REFERENCE_RESOLUTION))


def build_model(clip_state_dict: dict[str, torch.Tensor], config: ModelConfig) -> CLIP4Clip:
    """CLIP4Clip over a CLIP holding `clip_state_dict`, with what `config` asks for: STOP's prompts
    and adapters, a TempMe compressor, token merging inside the ViT, the output mode and CLIP
    fine-tuning. Raises ValueError naming the flag for values that cannot be built (a UserError
    for `--image_size` other than CLIP's resolution)."""
    config.validate()
    clip = build_clip(clip_state_dict)
    if config.image_size != clip.visual.input_resolution:
        raise UserError(f"--image_size {config.image_size} does not match CLIP's input resolution "
                        f"{clip.visual.input_resolution}; set --image_size {clip.visual.input_resolution}")
    depth = max(clip.visual.transformer.layers, clip.transformer.layers)
    if config.clip_frozen_layers > depth:
        raise UserError(f"--clip_frozen_layers {config.clip_frozen_layers} is more than CLIP's {depth} blocks; "
                        f"at most {depth} (every block frozen, the final norms and projections trained)")
    compressor = get_tempme_model(config.tempme)
    prompts = None
    if config.prompt_mode == "stop":
        stop = config.stop_for_frames()
        prompts = StopPrompts(stop, clip)
        if stop.adapter:
            add_adapters(clip, stop.adapter_dim, stop.adapter_scale)
    merge = replace(config.token_merge, max_frames=config.tempme.num_output_frames)
    merger = None if merge.mode == "none" else TokenMerger(
        merge, depth=clip.visual.transformer.layers, num_patches=clip.visual.num_patches, width=clip.visual.width)
    return CLIP4Clip(clip, prompts, compressor, video_output=config.video_output, train_clip=config.train_clip,
                     frozen_clip_layers=config.clip_frozen_layers, token_merger=merger)
