"""Argument checks shared by every public entry point (docs/DESIGN.md section 5).

Each check raises ValueError / IndexError / TypeError whose message names the argument, what was
expected and what came. Shape/dtype/device checks are free. Value checks (token ids in range, finite
scores) read the data; they run inside the custom ops' eager implementations (so they also run under
``torch.compile``). ``RLVR_FAST_CHECK_VALUES`` picks how (:func:`value_check_mode`):

- ``1`` (default): on CPU the full check (count and first bad value in the message); on CUDA a
  device-side assert (``torch._assert_async``) that never stalls the launch queue: a bad value
  stops the program at the next sync with the check's message (the CUDA context is then lost);
- ``sync``: the full, host-synchronising check on every device (debugging a GPU run);
- ``async``: device-side asserts on every device (on CPU they raise at once: what the tests use);
- ``0``: no value checks, for production loops that have already validated their inputs.

They are skipped during CUDA-graph capture.
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


CHECK_MODES = ("1", "sync", "async", "0")


def value_check_mode(t: torch.Tensor | None = None) -> str:
    """How data-dependent checks of ``t`` run: ``"sync"`` (read on the host, full message), ``"async"``
    (a device-side assert, no host sync) or ``"off"``, from ``RLVR_FAST_CHECK_VALUES`` (module
    docstring). Always ``"off"`` while ``t``'s CUDA stream is being captured into a graph."""
    value = os.environ.get("RLVR_FAST_CHECK_VALUES", "1")
    if value not in CHECK_MODES:
        raise ValueError(f"RLVR_FAST_CHECK_VALUES={value!r}: expected one of {', '.join(CHECK_MODES)}")
    cuda = t is not None and t.is_cuda
    if value == "0" or (cuda and torch.cuda.is_current_stream_capturing()):
        return "off"
    if value == "1":
        return "async" if cuda else "sync"
    return value


def value_checks_enabled(t: torch.Tensor | None = None) -> bool:
    """True unless value checks are off (:func:`value_check_mode`); for checks that always read on the host."""
    return value_check_mode(t) != "off"


def _device_assert(ok: torch.Tensor, message: str) -> None:
    """Assert ``ok`` (a bool scalar tensor) without a host sync; the message says how to get details."""
    torch._assert_async(ok, f"{message} (RLVR_FAST_CHECK_VALUES=sync: the count and the first bad value)")


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
    ``ignore_index`` (one host sync; on CUDA by default a device-side assert, :func:`value_check_mode`)."""
    mode = value_check_mode(ids) if ids.numel() else "off"
    if mode == "off":
        return
    bad = ((ids < 0) | (ids >= vocab)) & (ids != ignore_index)
    if mode == "async":
        _device_assert(~bad.any(), f"{name}: token ids must be in [0, {vocab}) or equal ignore_index={ignore_index}")
    elif bool(bad.any()):
        first = ids[bad].flatten()[0].item()
        count = int(bad.sum())
        raise OutOfRangeError(
            f"{name}: token ids must be in [0, {vocab}) or equal ignore_index={ignore_index}; "
            f"got {count} out-of-range id(s), e.g. {first}"
        )


def check_in_range(name: str, t: torch.Tensor, high: int, what: str = "values") -> None:
    """Raise OutOfRangeError (an IndexError and a ValueError) if any integer in ``t`` is outside
    ``[0, high)`` (one host sync; on CUDA by default a device-side assert)."""
    mode = value_check_mode(t) if t.numel() else "off"
    if mode == "off":
        return
    bad = (t < 0) | (t >= high)
    if mode == "async":
        _device_assert(~bad.any(), f"{name}: expected {what} in [0, {high})")
    elif bool(bad.any()):
        raise OutOfRangeError(
            f"{name}: expected {what} in [0, {high}), got {int(bad.sum())} outside, e.g. {t[bad][0].item()}"
        )


def check_finite(name: str, t: torch.Tensor, hint: str = "") -> None:
    """Raise ValueError if ``t`` holds NaN or Inf (one host sync; on CUDA by default a device-side assert)."""
    mode = value_check_mode(t) if t.numel() else "off"
    if mode == "off":
        return
    if mode == "async":
        _device_assert(torch.isfinite(t).all(), f"{name}: expected finite values{hint}")
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
    message. One host sync for all tensors together (on CUDA by default a device-side assert per tensor).
    """
    items = [(k, v) for k, v in tensors.items() if v is not None and v.numel() > 0]
    mode = value_check_mode(where) if items and where.numel() else "off"
    if mode == "off":
        return
    masks = [where if v.dim() == where.dim() else where.any(-1) for _, v in items]
    bad = [~torch.isfinite(v) & w for (_, v), w in zip(items, masks)]
    if mode == "async":
        for (name, _), b in zip(items, bad):
            _device_assert(~b.any(), f"{name}: expected finite values {what}{hint}")
        return
    flags = torch.stack([b.any() for b in bad]).tolist()  # the one sync
    for (name, v), b, flag in zip(items, bad, flags):
        if flag:
            first = tuple(int(i) for i in b.nonzero()[0])
            count = int(b.sum())
            raise ValueError(
                f"{name}: expected finite values {what}, got {count} non-finite value(s), first at index "
                f"{first} ({v[first].item()}){hint}"
            )
