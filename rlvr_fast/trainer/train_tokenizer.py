"""Training an FSQ frame tokenizer on frames: reconstruction loss through FSQ's straight-through rounding.

The loop the built-in video world uses to train its :class:`~rlvr_fast.models.tiny_fsq.TinyFSQTokenizer`
(and that can continue training a :class:`~rlvr_fast.models.cnn_fsq.CNNFSQTokenizer`), and, on clips
instead of frames, the compressive tokenizer (:class:`~rlvr_fast.models.compressive.CompressiveFSQTokenizer`:
the loss covers the context frame's and the future frames' reconstructions, as iVideoGPT's
``train_ctx_tokenizer.py``); the quantizer and the absence of a commitment loss are iVideoGPT's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._checks import FLOAT_DTYPES, check_tensor
from .._threads import CpuThreads
from ..models.cnn_fsq import CNNFSQConfig, CNNFSQTokenizer
from ..models.compressive import CompressiveFSQConfig, CompressiveFSQTokenizer
from ..models.frame_tokenizer import FSQTokenizer
from ..models.tiny_fsq import TinyFSQConfig, TinyFSQTokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train_tokenizer` returns: the trained tokenizer (eval mode) and per-step losses (float)."""

    tokenizer: TinyFSQTokenizer | CNNFSQTokenizer | CompressiveFSQTokenizer
    losses: list[float] = field(default_factory=list)


def _sub_clips(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """clips [B, 1 + F, 3, H, W] -> [B, 1 + k, ...]: the context frame and k of the F future frames, drawn
    without replacement per clip, in their order."""
    b, f = x.shape[0], x.shape[1] - 1
    pick = torch.rand(b, f, generator=gen).argsort(1)[:, :k].sort(1).values + 1
    idx = torch.cat([torch.zeros(b, 1, dtype=torch.long), pick], 1)
    return x[torch.arange(b)[:, None], idx]


def train_tokenizer(
    frames: torch.Tensor | Iterable[torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    *,
    tokenizer: TinyFSQTokenizer | CNNFSQTokenizer | CompressiveFSQTokenizer | None = None,
    config: TinyFSQConfig | CNNFSQConfig | CompressiveFSQConfig | None = None,
    batch_size: int = 16,
    l1_weight: float = 0.0,
    grad_clip: float | None = 1.0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cpu_threads: int = 0,
    future_frames: int = 0,
) -> TrainResult:
    """Train an FSQ tokenizer on frames with ``MSE(recon, x) + l1_weight * L1(recon, x)``.

    The quantizer is iVideoGPT's: ``bound`` then ``round_ste`` (straight-through rounding), no
    commitment loss; Adam (betas 0.9, 0.99), constant ``lr``, gradient-norm clipping at ``grad_clip``.

    Args:
        frames: a tensor [N, 3, H, W] (float in [0, 1] or uint8 in [0, 255]; clips [N, 1 + F, 3, H, W]
            for a compressive tokenizer, context frame first); each step draws
            ``batch_size`` frames with a generator seeded by ``seed`` (all N when N <= batch_size). Or an
            iterable of such batches, one per step (re-iterated when it runs out, if it can be).
        steps: optimizer steps.
        lr: Adam learning rate.
        seed: seeds the initialisation (when ``tokenizer`` is None) and the batch draws; torch's global
            generator is left as it was. Same seed, data and machine -> the same losses and weights.
        progress: show a tqdm bar with the loss (and log it every 10% at INFO).
        tokenizer: continue training this one (in place; a :class:`TinyFSQTokenizer` or a
            :class:`CNNFSQTokenizer`); default a fresh tokenizer built from ``config``.
        config: architecture of the fresh tokenizer: a :class:`TinyFSQConfig` (default
            ``TinyFSQConfig()``: 64x64 -> 8x8) or a :class:`CNNFSQConfig`.
        batch_size, l1_weight, grad_clip (None: no clipping): as above.
        device: where to train (default: the tokenizer's device, else CPU).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast (FSQ rounding and the
            loss stay float32); None trains in float32.
        channels_last: convert the model and batches to ``torch.channels_last`` (faster convolutions on
            GPU under bf16).
        cpu_threads: torch threads on CPU; 0 uses as many as other processes leave idle, re-checked
            as it trains (the thread count changes float reductions, so fix it for bitwise-repeatable runs).
        future_frames: clips only: each step keeps every clip's context frame and this many of its future
            frames, drawn at random per clip (0: all). The compressive tokenizer encodes and decodes each
            future frame from the context alone, so a sub-clip is an unbiased, cheaper draw of the same loss.

    Returns:
        :class:`TrainResult` with the tokenizer (eval mode) and the loss of every step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if isinstance(future_frames, bool) or not isinstance(future_frames, int) or future_frames < 0:
        raise ValueError(f"future_frames: expected a non-negative int, got {future_frames!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive float, got {lr!r}")
    if tokenizer is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if config is None or isinstance(config, TinyFSQConfig):
                tokenizer = TinyFSQTokenizer(config)
            elif isinstance(config, CNNFSQConfig):
                tokenizer = CNNFSQTokenizer(config)
            elif isinstance(config, CompressiveFSQConfig):
                tokenizer = CompressiveFSQTokenizer(config)
            else:
                raise TypeError(
                    f"config: expected a TinyFSQConfig, CNNFSQConfig or CompressiveFSQConfig, got {type(config).__name__}"
                )
    elif not isinstance(tokenizer, (FSQTokenizer, CompressiveFSQTokenizer)):
        raise TypeError(
            "tokenizer: expected a TinyFSQTokenizer, CNNFSQTokenizer or CompressiveFSQTokenizer, "
            f"got {type(tokenizer).__name__}"
        )
    clips = isinstance(tokenizer, CompressiveFSQTokenizer)
    ndim = 5 if clips else 4
    if clips and channels_last:
        raise ValueError("channels_last: not supported for the compressive tokenizer's 5-d clips")
    if device is None:
        device = next(tokenizer.parameters()).device
    device = torch.device(device)
    tokenizer.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        tokenizer.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)

    def unit(name: str, x: torch.Tensor) -> torch.Tensor:
        """A checked batch in [0, 1]; clips cut to sub-clips first, so only the kept frames are converted."""
        check_tensor(name, x, dtypes=(torch.uint8, *FLOAT_DTYPES), ndim=ndim)
        if clips and 0 < future_frames < x.shape[1] - 1:
            x = _sub_clips(x, future_frames, gen)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    if isinstance(frames, torch.Tensor):
        check_tensor("frames", frames, dtypes=(torch.uint8, *FLOAT_DTYPES), ndim=ndim)
        n = frames.shape[0]
        if n == 0:
            raise ValueError(f"frames: expected at least one frame, got shape {tuple(frames.shape)}")

        def next_batch(step: int) -> torch.Tensor:  # uint8 converted per batch, not the whole set
            if n <= batch_size:
                return unit("frames", frames)
            return unit("frames", frames[torch.randint(0, n, (batch_size,), generator=gen)])
    else:
        if not isinstance(frames, Iterable):
            raise TypeError(f"frames: expected a tensor or an iterable of tensors, got {type(frames).__name__}")
        state = {"it": iter(frames)}

        def next_batch(step: int) -> torch.Tensor:
            try:
                return unit(f"frames (batch {step})", next(state["it"]))
            except StopIteration:
                state["it"] = iter(frames)
                if state["it"] is frames or step == 0:
                    raise ValueError(
                        f"frames: the iterator ran out after {step} batches ({steps} steps asked)"
                    ) from None
                return unit(f"frames (batch {step})", next(state["it"]))

    opt = torch.optim.Adam(tokenizer.parameters(), lr=lr, betas=(0.9, 0.99))
    tokenizer.train()
    losses: list[float] = []
    bar = None
    if progress and steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="tokenizer", unit="step", dynamic_ncols=True, mininterval=0.5)
    every = max(1, steps // 10)
    # on CPU: no more torch threads than idle cores (a busy neighbour stalls every parallel op)
    threads = CpuThreads(cpu_threads or "auto") if device.type == "cpu" else None
    try:
        for step in range(steps):
            if threads is not None:
                threads.step()
            x = next_batch(step).to(device, non_blocking=True).contiguous(memory_format=fmt)
            with torch.autocast(
                device_type=device.type,
                dtype=autocast_dtype or torch.bfloat16,
                enabled=autocast_dtype is not None,
            ):
                recon = tokenizer(x)[0]
            recon = recon.float()
            loss = F.mse_loss(recon, x)
            if l1_weight:
                loss = loss + l1_weight * F.l1_loss(recon, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
                bar.update(1)
            if progress and (step + 1) % every == 0:
                log.info("tokenizer step %d/%d loss %.5f", step + 1, steps, losses[-1])
    finally:
        if bar is not None:
            bar.close()
    tokenizer.eval()
    return TrainResult(tokenizer, losses)


__all__ = ["TrainResult", "train_tokenizer"]
