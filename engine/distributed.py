"""Process-group helpers: torchrun environment, rank-0 guards, feature gathering.

Nothing here runs at import time; without torchrun (no WORLD_SIZE > 1 in the environment)
everything degrades to a single process of world size 1.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from modules.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launch_rank() -> int:
    """This process's rank as torchrun set it (RANK), also before the process group exists or
    when it could not be joined: who reports an error that every rank meets."""
    return get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(device: str) -> torch.device:
    """`--device` -> torch.device; 'auto' picks CUDA when available. Under torchrun a bare
    'cuda' becomes this process's GPU (LOCAL_RANK)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} was requested but CUDA is not available; use --device cpu")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return torch.device(device)


def init_distributed(device: str) -> torch.device:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU) and return
    this process's device. Without torchrun: no process group, single process."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if launched_by_torchrun() and not is_distributed():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return resolved


def cleanup() -> None:
    """Leave the process group (no barrier: this also runs when one rank fails)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Return rank 0's `obj` on every rank (run name, resume path: rank 0 decides)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (e.g. RNG states for the checkpoint)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_number(value: float | int, op: str = "sum") -> float:
    """Sum ("sum") or maximum ("max") of a Python number over ranks: counters such as bad
    videos, and flags every rank must agree on (skip a non-finite step, stop the run)."""
    if not is_distributed():
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor.item()


def all_gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` [N_rank, ...] from all ranks along dim 0 when N differs per rank.

    Each shard is padded to the largest N for the collective and trimmed afterwards.
    No gradient (evaluation features). Returns [sum of N_rank, ...] in rank order.
    """
    if not is_distributed():
        return tensor
    sizes = [int(s) for s in all_gather_object(tensor.shape[0])]
    padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0)
