"""CLIP (ViT image tower + causal text transformer) with OpenAI's parameter names.

The architecture is inferred from tensor shapes, so ViT-B/32, ViT-B/16, ViT-L/14 and the
small random configurations used by the demo and the tests are the same code.

The residual block is the single block class of the project. STOP reuses it unchanged:
`ResidualAttentionBlock.forward` takes an optional attention mask and an optional
`attention_core` (a function of the projected q, k, v) so the prompted ViT can run its
block-structured attention, and an optional `adapter` module runs parallel to the MLP.
Tensors are batch-first: `[N, L, W]`.
"""
from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from modules.errors import MissingFileError, UserError

# A function (q, k, v) -> out on heads-split tensors `[N, heads, L, head_dim]`.
AttentionCore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Constructor arguments of the CLIP sizes we know; "tiny" and "tiny-32" are small random models
# for the CPU demo, the tests and quick experiments (not released checkpoints).
CLIP_CONFIGS: dict[str, dict[str, int]] = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, context_length=77, vocab_size=49408,
                     transformer_width=768, transformer_heads=12, transformer_layers=12),
    "tiny": dict(embed_dim=128, image_resolution=64, vision_layers=4, vision_width=128,
                 vision_patch_size=16, context_length=77, vocab_size=49408,
                 transformer_width=128, transformer_heads=2, transformer_layers=4),
    # The demo's: "tiny" on 32 px frames (same 4x4 patch grid), where STOP's pixel-level prompt
    # convolutions cost a quarter of what they cost at 64 px.
    "tiny-32": dict(embed_dim=128, image_resolution=32, vision_layers=4, vision_width=128,
                    vision_patch_size=8, context_length=77, vocab_size=49408,
                    transformer_width=128, transformer_heads=2, transformer_layers=4),
}

# CLIP's pixel normalisation (what OpenAI's preprocessing applies after scaling to 0..1).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature (ln of 1/0.07)
# Entries of OpenAI's TorchScript state dict that are not parameters.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")
# Weights above the blocks (final norms and projections): they train at any frozen depth, as in CLIP4Clip.
_OUTPUT_LAYERS = ("ln_final.", "text_projection", "visual.ln_post.", "visual.proj")
_BLOCK = re.compile(r"(?:visual\.)?transformer\.resblocks\.(\d+)\.")


def frozen_at_depth(name: str, frozen_layers: int) -> bool:
    """Whether CLIP parameter `name` stays frozen when CLIP is fine-tuned above `frozen_layers`:
    -1 freezes nothing; N >= 0 the input embeddings (patch, class, token and position embeddings,
    `visual.ln_pre`) and the first N blocks of each tower (CLIP4Clip's `--freeze_layer_num`)."""
    if frozen_layers < 0 or name.startswith(_OUTPUT_LAYERS):
        return False
    block = _BLOCK.match(name)
    return block is None or int(block.group(1)) < frozen_layers


def normalize_video(video: torch.Tensor) -> torch.Tensor:
    """CLIP-normalise frames `[..., 3, H, W]` holding pixel values on the 0..255 scale.

    uint8 input (as the data loader returns it) gives float32; a floating input (e.g.
    `video.half()` of the loader's output, still 0..255) keeps its dtype. Runs on the tensor's
    own device, so the host ships uint8 (4x less work and transfer than float).
    """
    dtype = video.dtype if video.is_floating_point() else torch.float32
    mean = torch.tensor(CLIP_MEAN, device=video.device, dtype=dtype).view(3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD, device=video.device, dtype=dtype).view(3, 1, 1) * 255.0
    return (video.to(dtype) - mean) / std


class QuickGELU(nn.Module):
    """The GELU approximation CLIP was trained with: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter names.

    forward(x [N, L, W]) -> [N, L, W]. `attn_mask` is additive (float) or boolean
    (True = may attend), broadcastable to `[N, heads, L, L]`. `attention_core`, when given,
    replaces the scaled-dot-product step and receives q, k, v as `[N, heads, L, head_dim]`.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                attention_core: AttentionCore | None = None) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(n, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        if attention_core is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = attention_core(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) [+ adapter(x)].

    `adapter` is None for plain CLIP; STOP assigns a bottleneck module (which applies its own
    scale) that runs in parallel to the MLP on the block's residual stream. `after_attention`,
    when given, maps the residual stream between attention and MLP to a new (possibly
    shorter) one: token merging (`modules.token_merge`) runs there, so the MLP sees fewer tokens.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.attn = Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)
        self.adapter: nn.Module | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                attention_core: AttentionCore | None = None,
                after_attention: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, attention_core=attention_core)
        if after_attention is not None:
            x = after_attention(x)
        out = x + self.mlp(self.ln_2(x))
        if self.adapter is not None:
            out = out + self.adapter(x)
        return out


class Transformer(nn.Module):
    """A stack of residual blocks; `resblocks` is public so prompted variants can loop over it."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.heads = heads
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT. images [N, 3, H, W] (normalised) -> embeddings [N, output_dim]."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.grid_size = input_resolution // patch_size
        self.width = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(self.grid_size ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> tokens [N, 1 + P, W]: CLS + patches, positions added, `ln_pre` applied."""
        if images.shape[-1] != self.input_resolution or images.shape[-2] != self.input_resolution:
            raise ValueError(f"CLIP expects {self.input_resolution}x{self.input_resolution} images, got "
                             f"{tuple(images.shape[-2:])}; set --image_size {self.input_resolution}")
        patches = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.positional_embedding.to(patches.dtype)
        return self.ln_pre(tokens)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled tokens [..., W] -> projected embeddings [..., output_dim]."""
        return self.ln_post(tokens) @ self.proj

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(self.embed(images))[:, 0])


class CLIP(nn.Module):
    """CLIP with OpenAI's parameter names (a state dict of theirs loads strictly)."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        heads=vision_width // 64, output_dim=embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))
        self._init_parameters()

    def _init_parameters(self) -> None:
        """Random initialisation with the scales of OpenAI's CLIP (used when no weights are loaded)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for tower in (self.visual.transformer, self.transformer):
            width = tower.width
            proj_std = width ** -0.5 * (2 * tower.layers) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        visual = self.visual
        nn.init.normal_(visual.class_embedding, std=visual.width ** -0.5)
        nn.init.normal_(visual.positional_embedding, std=visual.width ** -0.5)
        nn.init.normal_(visual.proj, std=visual.width ** -0.5)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] normalised float -> [N, D] (projected, not L2-normalised)."""
        return self.visual(images.to(self.dtype))

    def causal_mask(self, length: int, device: torch.device) -> torch.Tensor:
        """Boolean [length, length], True where a token may attend (itself and earlier tokens)."""
        return torch.ones(length, length, dtype=torch.bool, device=device).tril()

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [N, L] long (L <= context length, EOT = largest id) -> [N, D] (not L2-normalised)."""
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"text length {length} exceeds CLIP's context length {self.context_length}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, attn_mask=self.causal_mask(length, x.device)))
        eot = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
        return eot @ self.text_projection

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(input_ids)


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(1 for key in state_dict if key.startswith(prefix) and key.endswith(".attn.in_proj_weight"))


def clip_config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Infer CLIP's constructor arguments from tensor shapes (as OpenAI's `build_model` does)."""
    if "visual.conv1.weight" not in state_dict:
        raise ValueError("not a ViT CLIP state dict (no 'visual.conv1.weight'); ResNet CLIPs are not supported")
    vision_width = state_dict["visual.conv1.weight"].shape[0]
    patch_size = state_dict["visual.conv1.weight"].shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state_dict["ln_final.weight"].shape[0]
    return dict(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=patch_size * grid,
        vision_layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_patch_size=patch_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=text_width,
        transformer_heads=text_width // 64,
        transformer_layers=_count_blocks(state_dict, "transformer.resblocks."),
    )


def build_clip(state_dict: dict[str, torch.Tensor]) -> CLIP:
    """A float32 CLIP in eval mode holding `state_dict` (architecture inferred from it, loaded strictly)."""
    state_dict = {k: v for k, v in state_dict.items() if k not in _NON_PARAMETER_KEYS}
    model = CLIP(**clip_config_from_state_dict(state_dict))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return model.float().eval()


def _describe_unreadable(path: str) -> str:
    """What a file torch cannot read looks like, from its first bytes (for the error message)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        if zipfile.is_zipfile(path):
            return "a PyTorch file holding Python objects besides tensors, which are not loaded for safety"
        return "a damaged zip archive: was the download cut short?"
    if head.startswith(b"\x80"):
        return "a Python pickle, not tensors saved with torch.save"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unrecognised binary content"


def read_weights_file(path: str | os.PathLike, flag: str, expected: str) -> tuple[Any, bool]:
    """The content of the PyTorch file `path` that `flag` names, and whether it was a TorchScript
    archive (the format of OpenAI's CLIP release; its state dict is returned).

    Files written by `torch.save` are read with `weights_only=True`. A missing path raises
    MissingFileError, a folder or a file torch cannot read a UserError; each names `flag`, the
    path and `expected` (what the flag wants)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; expected {expected}")
    if not os.path.isfile(path):
        raise MissingFileError(f"{flag} {path} does not exist; expected {expected}")
    with warnings.catch_warnings():  # torch.jit's deprecation notice, pickle-protocol notes
        warnings.simplefilter("ignore")
        try:
            return torch.jit.load(path, map_location="cpu").state_dict(), True
        except Exception:
            pass  # not a TorchScript archive: a file written by torch.save, or no weights at all
        try:
            return torch.load(path, map_location="cpu", weights_only=True), False
        except Exception:
            reason = _describe_unreadable(path)
    raise UserError(f"{flag} {path} is not a PyTorch weights file ({reason}); expected {expected}")


def weights_kind(content: Any) -> str:
    """What a weights file holds: "clip" (a ViT CLIP state dict, possibly under 'state_dict' or
    'model' of a dict), "resnet_clip", "checkpoint" (a dict whose 'model' is a dict of tensors,
    as this project's checkpoints), "state_dict" (another dict of tensors, such as the trained
    tensors of this project) or "unknown"."""
    if not isinstance(content, dict):
        return "unknown"
    keys = {str(k).removeprefix("module.") for k in _unwrap_state_dict(content)}
    if "visual.conv1.weight" in keys:
        return "clip"
    if "visual.attnpool.positional_embedding" in keys:
        return "resnet_clip"
    if isinstance(content.get("model"), dict):
        return "checkpoint"
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return "state_dict"
    return "unknown"


def _unwrap_state_dict(content: dict) -> dict:
    """A state dict saved under 'state_dict' or 'model' of a dict, else `content` itself."""
    for key in ("state_dict", "model"):
        if isinstance(content.get(key), dict):
            return content[key]
    return content


CLIP_EXPECTED = ("OpenAI's CLIP weights, e.g. ViT-B-32.pt from OpenAI's CLIP repository (point --clip_weights "
                 "at the file, or --pretrained_dir at its folder)")


def load_clip_state_dict(path: str | os.PathLike, flag: str = "--clip_weights") -> dict[str, torch.Tensor]:
    """Read CLIP weights: OpenAI's TorchScript archive, a plain state dict, or a dict holding one.

    Returns float32 tensors with OpenAI's names (`module.` prefixes stripped, TorchScript
    bookkeeping entries such as `input_resolution` removed). Anything else (a missing file, a
    training checkpoint of this project, a ResNet CLIP, other tensors) raises a UserError
    naming `flag`, the file and the flag it belongs to.
    """
    content, _ = read_weights_file(path, flag, CLIP_EXPECTED)
    kind = weights_kind(content)
    if kind != "clip":
        found = {
            "checkpoint": "a training checkpoint of this project, not CLIP weights: pass it as --init_model "
                          "(or --resume to continue its run) and point --clip_weights at OpenAI's CLIP file",
            "resnet_clip": "a ResNet CLIP; only ViT CLIPs are supported (ViT-B-32.pt, ViT-B-16.pt, ViT-L-14.pt)",
            "state_dict": f"tensors that are not a ViT CLIP state dict (keys such as {sorted(content)[:3]}): "
                          f"trained weights of this project go to --init_model; expected {CLIP_EXPECTED}",
        }.get(kind, f"no CLIP state dict (a {type(content).__name__}); expected {CLIP_EXPECTED}")
        raise UserError(f"{flag} {os.fspath(path)} holds {found}")
    state_dict = _unwrap_state_dict(content)
    return {k.removeprefix("module."): v.float() for k, v in state_dict.items()
            if k.removeprefix("module.") not in _NON_PARAMETER_KEYS}


def random_clip_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised CLIP of a known size (demo, tests, benchmarks)."""
    if arch not in CLIP_CONFIGS:
        raise ValueError(f"unknown CLIP architecture '{arch}'; choose one of {sorted(CLIP_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(**CLIP_CONFIGS[arch]).state_dict()
