"""Pixel metrics for video world-model rewards, computed where the frames are.

RLVR-World scores a predicted frame against the real next frame with weighted MSE, MAE, PSNR, SSIM and
LPIPS (the formula: :func:`rlvr_fast.rewards.video.pixel_reward`). Their path repeats the real frames n
times per group (``repeat_interleave``), copies frames to the host and scores with piqa, whose input
checks synchronise the GPU. Here:

- :func:`pixel_metrics` computes MSE, MAE, PSNR and SSIM in one pass over the predictions, reading
  target ``b // group_size`` in place (never repeated in memory); per-sample float32 outputs;
- :func:`aggregate_frames` reduces per-frame values of multi-step predictions (``mean | last |
  discount``);
- :func:`scatter_sequence_reward` places each sequence reward on its last response token (verl's
  token-level reward layout), without a Python loop.

Conventions (piqa, docs/DESIGN.md section 4): Gaussian window 11, sigma 1.5, valid padding (no border),
C1 = (0.01 L)^2, C2 = (0.03 L)^2, mean over channels; PSNR = 10 log10(L^2 / (MSE + 1e-8)), so
identical images give 80 dB; inputs are clamped to [0, L] (RLVR-World clamps the decoded prediction;
piqa asserts the range instead, a host sync).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import _checks as C
from .._dispatch import extension, select_backend

_BACKENDS = ("torch", "cpp", "cuda")
METRIC_NAMES = ("mse", "mae", "psnr", "ssim")
AGGREGATES = ("mean", "last", "discount")
_PIXEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=16)
def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian window, float32 [size] on the CPU (piqa's ``gaussian_kernel``)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return (w / w.sum()).float()


def check_finite_positive(name: str, value) -> None:
    """ValueError unless ``value`` is a finite int or float > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name}: expected a finite positive number, got {value!r}")


def check_frame_pair(pred: torch.Tensor, target: torch.Tensor, group_size: int) -> int:
    """Validate pred [B, (T,) C, H, W] against target [G, (T,) C, H, W]; returns T (1 for 4-d inputs)."""
    C.check_tensor("pred", pred, dtypes=_PIXEL_DTYPES, ndim=(4, 5))
    C.check_tensor("target", target, dtypes=_PIXEL_DTYPES, ndim=pred.dim())
    C.check_same_device(pred=pred, target=target)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
    if pred.dim() == 5 and pred.shape[1] == 0:
        raise ValueError(f"pred: expected at least one frame, got shape {tuple(pred.shape)}")
    if min(pred.shape[-3:]) == 0:
        raise ValueError(f"pred: expected non-empty frames [C, H, W], got shape {tuple(pred.shape)}")
    if target.shape[1:] != pred.shape[1:]:
        raise ValueError(
            f"target: expected frames of shape {tuple(pred.shape[1:])} like pred, got {tuple(target.shape[1:])}"
        )
    if target.shape[0] * group_size != pred.shape[0]:
        raise ValueError(
            f"pred: expected batch = target batch x group_size = {target.shape[0]} x {group_size} = "
            f"{target.shape[0] * group_size}, got {pred.shape[0]}"
        )
    return 1 if pred.dim() == 4 else pred.shape[1]


def pixel_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    group_size: int = 1,
    metrics: Sequence[str] = METRIC_NAMES,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    aggregate: str | None = None,
    gamma: float = 0.9,
) -> dict[str, torch.Tensor]:
    """Per-sample MSE, MAE, PSNR and SSIM of predictions against their group's real frame.

    Args:
        pred: [B, C, H, W] or per-frame [B, T, C, H, W], float32 / bfloat16 / float16. The kernels
            read NCHW: a ``channels_last`` tensor is copied once first.
        target: [G, C, H, W] or [G, T, C, H, W] with B = G * group_size; prediction b is compared with
            target ``b // group_size``, read in place.
        group_size: predictions per target (GRPO's n).
        metrics: any of ``("mse", "mae", "psnr", "ssim")``; SSIM costs the filtering, the rest is free.
        data_range: L, the value range [0, L] (inputs are clamped to it).
        window_size, sigma, k1, k2: SSIM's Gaussian window and constants (piqa's defaults).
        aggregate: for 5-d inputs, None keeps per-frame values [B, T]; ``mean``, ``last`` or
            ``discount`` (``sum_t gamma^t v_t / sum_t gamma^t``, RLVR-World's ``msp_reward_aggregate``)
            reduce them to [B].
        gamma: the discount of ``aggregate="discount"``.

    Returns:
        {metric: float32 [B] (or [B, T])}, in the order asked; no autograd history (a reward).

    Formulas: piqa's ``psnr`` and ``ssim`` (Wang et al. 2004) with the conventions in the module
    docstring; MSE/MAE are means over C, H, W as in RLVR-World's ``_compute_loss``.
    """
    frames = check_frame_pair(pred, target, group_size)
    if isinstance(metrics, str):
        raise TypeError(f"metrics: expected a sequence of names, got the string {metrics!r} (use ({metrics!r},))")
    metrics = tuple(metrics)
    for m in metrics:
        C.check_choice("metrics", m, METRIC_NAMES)
    if not metrics:
        raise ValueError("metrics: expected at least one of " + ", ".join(METRIC_NAMES))
    check_finite_positive("data_range", data_range)
    check_finite_positive("sigma", sigma)
    check_finite_positive("k1", k1)
    check_finite_positive("k2", k2)
    if not isinstance(window_size, int) or window_size % 2 == 0 or not 1 <= window_size <= 31:
        raise ValueError(f"window_size: expected an odd int in [1, 31], got {window_size!r}")
    if aggregate is not None:
        if pred.dim() != 5:
            raise ValueError("aggregate: only per-frame inputs [B, T, C, H, W] have frames to aggregate")
        C.check_choice("aggregate", aggregate, AGGREGATES)
    want_ssim = "ssim" in metrics
    height, width = pred.shape[-2:]
    if want_ssim and (height < window_size or width < window_size):
        raise ValueError(
            f"pred: frames of {height}x{width} are smaller than the SSIM window ({window_size}x{window_size}); "
            "use larger frames or a smaller window_size"
        )
    # metrics are rewards, not losses: no gradient flows back into the decoder
    flat_pred = pred.detach().reshape(-1, *pred.shape[-3:]).contiguous()
    flat_target = target.detach().reshape(-1, *target.shape[-3:]).contiguous()
    table = torch.ops.rlvr_fast.pixel_metrics(
        flat_pred,
        flat_target,
        frames,
        group_size,
        float(data_range),
        float(k1),
        float(k2),
        want_ssim,
        window_size,
        float(sigma),
    )
    out = {}
    for m in metrics:
        value = table[METRIC_NAMES.index(m)]
        if pred.dim() == 5:
            value = value.view(pred.shape[0], frames)
            if aggregate is not None:
                value = aggregate_frames(value, aggregate, gamma)
        out[m] = value
    return out


def aggregate_frames(values: torch.Tensor, how: str, gamma: float = 0.9) -> torch.Tensor:
    """Reduce per-frame values [B, T] to [B]: ``mean``, ``last``, or ``discount`` = sum_t g^t v_t / sum_t g^t.

    Source: RLVR-World ``msp_reward_fn`` (``trainer.msp_reward_aggregate``; their discount is 0.9).
    """
    C.check_tensor("values", values, ndim=2)
    C.check_choice("aggregate", how, AGGREGATES)
    if how == "mean":
        return values.mean(1)
    if how == "last":
        return values[:, -1]
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma: expected 0 < gamma <= 1, got {gamma}")
    weight = gamma ** torch.arange(values.shape[1], device=values.device, dtype=values.dtype)
    return (values * weight).sum(1) / weight.sum()


def pixel_metrics_ref(
    pred: torch.Tensor,
    target: torch.Tensor,
    frames: int,
    group_size: int,
    data_range: float,
    k1: float,
    k2: float,
    want_ssim: bool,
    window_size: int,
    sigma: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pure-PyTorch reference: pred [N, C, H, W], target [M, C, H, W] -> float32 [4, N] (mse, mae, psnr, ssim).

    Computes in ``dtype`` (float64 in tests). Builds the repeated targets and the five filtered maps
    explicitly, as piqa does; the kernels avoid both.
    """
    n = pred.shape[0]
    i = torch.arange(n, device=pred.device)
    j = ((i // frames) // group_size) * frames + i % frames
    x = pred.to(dtype).clamp(0, data_range)
    y = target.to(dtype).index_select(0, j).clamp(0, data_range)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    mae = (x - y).abs().flatten(1).mean(1)
    psnr = 10 * torch.log10(data_range**2 / (mse + 1e-8))
    if want_ssim:
        ch = x.shape[1]
        w = gaussian_window(window_size, sigma).to(device=x.device, dtype=dtype)
        wh = w.view(1, 1, 1, -1).expand(ch, 1, 1, -1)
        wv = w.view(1, 1, -1, 1).expand(ch, 1, -1, 1)

        def blur(t):
            return F.conv2d(F.conv2d(t, wh, groups=ch), wv, groups=ch)

        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
        ssim = (lum * cs).flatten(2).mean(2).mean(1)
    else:
        ssim = torch.full_like(mse, math.nan)
    return torch.stack([mse, mae, psnr, ssim]).float()


@torch.library.custom_op("rlvr_fast::pixel_metrics", mutates_args=())
def _pixel_metrics_op(
    pred: torch.Tensor,
    target: torch.Tensor,
    frames: int,
    group_size: int,
    data_range: float,
    k1: float,
    k2: float,
    want_ssim: bool,
    window_size: int,
    sigma: float,
) -> torch.Tensor:
    args = (pred, target, frames, group_size, data_range, k1, k2, want_ssim, window_size, sigma)
    if select_backend("pixel_metrics", pred.device, _BACKENDS) == "torch" or pred.numel() == 0:
        return pixel_metrics_ref(*args)
    window = gaussian_window(window_size, sigma)
    return extension().pixel_metrics(pred, target, frames, group_size, data_range, k1, k2, want_ssim, window)


@_pixel_metrics_op.register_fake
def _(pred, target, frames, group_size, data_range, k1, k2, want_ssim, window_size, sigma):
    return pred.new_empty((4, pred.shape[0]), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# scatter_sequence_reward
# ----------------------------------------------------------------------------------------------


def scatter_sequence_reward(reward: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Token-level rewards with each sequence reward on its last valid response token.

    Args:
        reward: float [B] sequence rewards (any float dtype; computed in float32).
        response_mask: bool or 0/1 integers [B, T].

    Checks that the rewards are finite (a host read on CPU, a device-side assert on CUDA;
    ``RLVR_FAST_CHECK_VALUES=0`` skips it).

    Returns:
        float32 [B, T]: ``reward[b]`` at the last t with ``response_mask[b, t]``, 0 elsewhere. A row
        without any valid token is all zeros (verl's loop would write it at index -1, the last padding
        position, where the masked loss ignores it anyway).

    Source: verl's reward managers (``reward_tensor[i, valid_response_length - 1] = score``), with the
    last *valid* position rather than the count of valid ones, which also handles masks with holes.
    """
    C.check_tensor("reward", reward, dtypes=C.FLOAT_DTYPES, ndim=1)
    C.check_tensor("response_mask", response_mask, dtypes=(torch.bool, *C.INT_DTYPES), ndim=2)
    C.check_same_device(reward=reward, response_mask=response_mask)
    if response_mask.shape[0] != reward.shape[0]:
        raise ValueError(f"response_mask: expected {reward.shape[0]} rows like reward, got {response_mask.shape[0]}")
    return torch.ops.rlvr_fast.scatter_sequence_reward(
        reward.detach().float().contiguous(), response_mask.bool().contiguous()
    )


def scatter_sequence_reward_ref(reward: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Reference: float32 [B] and bool [B, T] -> float32 [B, T] (no loop, no sync)."""
    t = torch.arange(response_mask.shape[1], device=response_mask.device)
    last = torch.where(response_mask, t, -1).amax(1, keepdim=True) if response_mask.shape[1] else None
    if last is None:
        return torch.zeros(response_mask.shape, dtype=torch.float32, device=reward.device)
    return torch.where(t == last, reward.float()[:, None], 0.0)


@torch.library.custom_op("rlvr_fast::scatter_sequence_reward", mutates_args=())
def _scatter_op(reward: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    C.check_finite("reward", reward)
    if select_backend("scatter_sequence_reward", reward.device, _BACKENDS) == "torch" or response_mask.numel() == 0:
        return scatter_sequence_reward_ref(reward, response_mask)
    return extension().scatter_sequence_reward(reward, response_mask)


@_scatter_op.register_fake
def _(reward, response_mask):
    return reward.new_empty(response_mask.shape, dtype=torch.float32)
