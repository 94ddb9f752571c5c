"""Single-node data parallelism under ``torchrun``: process-group setup, the model wrapper (DDP for
small models, FSDP2 ``fully_shard`` per decoder layer for large ones), gradient-sync control for
accumulation, full state dicts for checkpoints, and small all-reduce helpers.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op and the model is not wrapped.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

FSDP_THRESHOLD = 1_000_000_000  # parameters; below it DDP's replicated optimizer state fits easily


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device_request: str) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_request == "auto":
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(device_request)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank() if world > 1 else 0, world, local)
    return info, device


def wrap(model: torch.nn.Module, info: DistInfo, mode: str, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 around ``model`` when world > 1 (``mode``: auto | ddp | fsdp); else ``model``."""
    if info.world == 1:
        return model
    n_params = sum(p.numel() for p in model.parameters())
    if mode == "fsdp" or (mode == "auto" and n_params >= FSDP_THRESHOLD):
        from torch.distributed.fsdp import fully_shard

        for layer in getattr(getattr(model, "model", model), "layers", []):
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and hasattr(model, "no_sync") else model


def grad_sync(model: torch.nn.Module, enabled: bool):
    """Context in which backward all-reduces gradients only when ``enabled`` (the last micro-batch)."""
    if hasattr(model, "no_sync") and not enabled:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def is_fsdp(model: torch.nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state dict on CPU (collective under FSDP: every rank must call it)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
    if info.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj, info: DistInfo) -> list:
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
