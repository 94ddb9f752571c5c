"""Helpers shared by the launchers: run on the tensors' device, loadable mask views, and row splits."""

from __future__ import annotations

import functools

import torch


def on_tensor_device(launcher):
    """Decorator: launch on the device of the first tensor argument.

    Triton launches on ``torch.cuda.current_device()`` and its stream; tensors on another GPU would
    otherwise be read from the wrong device (an illegal address, or a race with peer access).
    """

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is not None and t.is_cuda:
            with torch.cuda.device(t.device):
                return launcher(*args, **kwargs)
        return launcher(*args, **kwargs)

    return wrapper


# Pin FMA contraction on (Triton's default up to 3.9, which flips in 3.10) so kernel numerics do not
# change with a Triton upgrade. Passed to every launch.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


def loadable_mask(mask: torch.Tensor) -> torch.Tensor:
    """A view of ``mask`` that kernels can load: bool becomes uint8 (same bytes, no copy)."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def tile_splits(rows: int, tiles: int, programs: int, max_splits: int | None = None) -> tuple[int, int]:
    """(splits, tiles per split): cut each of ``rows`` rows of ``tiles`` whole tiles into splits so that
    about ``programs`` programs run (one split when the rows alone reach it), at most ``max_splits``,
    none empty. A function of its arguments only: the summation order, hence the bits, never depends
    on the device (issue 20: few rows cannot fill a GPU with one program per row)."""
    tiles = max(1, tiles)
    want = min(tiles, max(1, -(-programs // max(rows, 1))), max_splits or tiles)
    per = -(-tiles // want)
    return -(-tiles // per), per
