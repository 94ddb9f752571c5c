"""Argument checks shared by every public entry point (docs/DESIGN.md section 5).

Each check raises ValueError / IndexError / TypeError whose message names the argument, what was
expected and what came. Shape/dtype/device checks are free. Value checks (token ids in range, finite
scores) read the data and therefore synchronise with a GPU; they run inside the custom ops' eager
implementations (so they also run under ``torch.compile``) and can be switched off with
``RLVR_FAST_CHECK_VALUES=0`` for production loops that have already validated their inputs; they are
skipped automatically during CUDA-graph capture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class OutOfRangeError(IndexError, ValueError):
    """Ids or codes outside their range: an IndexError (as before) that is also a ValueError, so callers
    can catch every bad-argument error of the library with ``except ValueError``."""


def value_checks_enabled(t: torch.Tensor | None = None) -> bool:
    """True unless ``RLVR_FAST_CHECK_VALUES=0``: data-dependent checks cost a host sync on GPU.

    Always False while ``t``'s CUDA stream is being captured into a graph, where a sync is illegal.
    """
    if os.environ.get("RLVR_FAST_CHECK_VALUES", "1") == "0":
        return False
    return not (t is not None and t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_tensor(name: str, t, *, dtypes: Sequence[torch.dtype] | None = None, ndim=None) -> None:
    """Raise TypeError unless ``t`` is a tensor of one of ``dtypes``; ValueError on a wrong ``ndim``.

    ``ndim`` is an int or a tuple of accepted ranks.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ValueError(f"{name}: expected a {want}-d tensor, got shape {tuple(t.shape)}")


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int], what: str = "") -> None:
    """Raise ValueError unless ``t.shape == shape``; ``what`` explains where ``shape`` comes from."""
    if tuple(t.shape) != tuple(shape):
        why = f" ({what})" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(shape)}{why}, got {tuple(t.shape)}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError unless all given (non-None) tensors live on one device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name}: expected device {first.device} (like {first_name}), got {t.device}")


def check_choice(name: str, value, choices: Sequence) -> None:
    """Raise ValueError unless ``value`` is one of ``choices`` (listed in the message)."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ValueError unless ``value`` > 0 (or >= 0 with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value}")


def check_ids_in_range(name: str, ids: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Raise OutOfRangeError (an IndexError and a ValueError) if any id outside ``[0, vocab)`` is not
    ``ignore_index`` (one host sync)."""
    if ids.numel() == 0 or not value_checks_enabled(ids):
        return
    bad = ((ids < 0) | (ids >= vocab)) & (ids != ignore_index)
    if bool(bad.any()):
        first = ids[bad].flatten()[0].item()
        count = int(bad.sum())
        raise OutOfRangeError(
            f"{name}: token ids must be in [0, {vocab}) or equal ignore_index={ignore_index}; "
            f"got {count} out-of-range id(s), e.g. {first}"
        )


def check_in_range(name: str, t: torch.Tensor, high: int, what: str = "values") -> None:
    """Raise OutOfRangeError (an IndexError and a ValueError) if any integer in ``t`` is outside
    ``[0, high)`` (one host sync)."""
    if t.numel() == 0 or not value_checks_enabled(t):
        return
    bad = (t < 0) | (t >= high)
    if bool(bad.any()):
        raise OutOfRangeError(
            f"{name}: expected {what} in [0, {high}), got {int(bad.sum())} outside, e.g. {t[bad][0].item()}"
        )


def check_finite(name: str, t: torch.Tensor, hint: str = "") -> None:
    """Raise ValueError if ``t`` holds NaN or Inf (one host sync)."""
    if t.numel() == 0 or not value_checks_enabled(t):
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        idx = bad.flatten().nonzero()[0].item()
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} non-finite value(s), first at flat index "
            f"{idx} ({t.flatten()[idx].item()}){hint}"
        )


def check_finite_where(where: torch.Tensor, what: str, hint: str = "", **tensors: torch.Tensor | None) -> None:
    """Raise ValueError naming the first of ``tensors`` with NaN/Inf where ``where`` is True.

    ``where`` is a bool [B, T]; a [B] tensor is checked on the rows with any True in ``where``. Values at
    other positions are not looked at (they never reach the result). ``what`` describes ``where`` in the
    message. One host sync for all tensors together.
    """
    items = [(k, v) for k, v in tensors.items() if v is not None and v.numel() > 0]
    if not items or where.numel() == 0 or not value_checks_enabled(where):
        return
    masks = [where if v.dim() == where.dim() else where.any(-1) for _, v in items]
    bad = [~torch.isfinite(v) & w for (_, v), w in zip(items, masks)]
    flags = torch.stack([b.any() for b in bad]).tolist()  # the one sync
    for (name, v), b, flag in zip(items, bad, flags):
        if flag:
            first = tuple(int(i) for i in b.nonzero()[0])
            count = int(b.sum())
            raise ValueError(
                f"{name}: expected finite values {what}, got {count} non-finite value(s), first at index "
                f"{first} ({v[first].item()}){hint}"
            )
