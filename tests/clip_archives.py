"""Write CLIP weights files in the formats users have: plain state dict, OpenAI TorchScript archive."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _holder_module(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """An nn.Module tree whose parameters carry exactly the names of `state_dict`."""
    root = nn.Module()
    for name, tensor in state_dict.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        if tensor.is_floating_point():
            module.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, tensor.clone())
    return root


def save_openai_archive(state_dict: dict[str, torch.Tensor], path: Path, fp16: bool = True) -> Path:
    """Save as a TorchScript archive shaped like OpenAI's release: fp16 weights plus the
    non-parameter entries `input_resolution`, `context_length`, `vocab_size`."""
    tensors = {k: (v.half() if fp16 and v.is_floating_point() else v.clone()) for k, v in state_dict.items()}
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    tensors["input_resolution"] = torch.tensor(grid * state_dict["visual.conv1.weight"].shape[-1])
    tensors["context_length"] = torch.tensor(state_dict["positional_embedding"].shape[0])
    tensors["vocab_size"] = torch.tensor(state_dict["token_embedding.weight"].shape[0])
    torch.jit.script(_holder_module(tensors)).save(str(path))
    return path


def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state_dict, path)
    return path
