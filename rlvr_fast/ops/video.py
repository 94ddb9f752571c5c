"""Generated video tokens -> frame codes -> decoder latents, batched on the device.

In RLVR-World's video world model (iVideoGPT layout) the policy generates discrete frame tokens; the
tokenizer's decoder turns them back into frames for the pixel reward. Their path slices the response,
*clamps* every id into the visual range (so a malformed generation is silently scored as some other
frame), and decodes in micro-batches. Here:

- :class:`VideoTokenLayout` says where each frame's visual tokens sit in a response (single-step:
  320 visual tokens then EOS; multi-step: frames interleaved with action tokens; ``ctx_msp``:
  iVideoGPT's compressive-tokenizer layout, :meth:`VideoTokenLayout.ctx_msp`);
- :func:`unpack_video_tokens` picks those slots for the whole batch in one kernel, subtracts the
  visual offset, and marks a sample invalid when any slot is outside the visual range or masked out
  (early EOS). By default invalid samples are not clamped: their slots hold code 0 so the batch still
  decodes, and the reward replaces them with the configured penalty (``clamp=True``: RLVR-World's clamp);
- :func:`codes_to_latents` turns codes into the decoder's input latents with one gather from a
  per-code table [K, C]: FSQ's mixed-radix digits -> centred levels, or a VQ codebook, optionally
  folded with the tokenizer's post-quantisation linear / 1x1-conv projections (exact: they act on
  each position independently).

Backends (``rlvr_fast._dispatch``): ``cpp`` (the extension's C++ kernels, CPU tensors), ``cuda``
(its CUDA kernels), ``torch`` (the references below, also the fallback without the extension).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import _checks as C
from .._dispatch import extension, select_backend
from .video_layout import VideoTokenLayout, _slot_tensor

_BACKENDS = ("torch", "cpp", "cuda")


# ----------------------------------------------------------------------------------------------
# unpack_video_tokens
# ----------------------------------------------------------------------------------------------


def unpack_video_tokens(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    layout: VideoTokenLayout = VideoTokenLayout(),
    *,
    clamp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame codes of every generated response, and which responses are well-formed.

    Args:
        responses: int [B, T] generated token ids (any integer dtype; T may be shorter than
            ``layout.response_length``: the missing slots count as invalid).
        response_mask: bool or 0/1 integers [B, T]; 0 marks padding after an early EOS.
        layout: the token layout.
        clamp: RLVR-World's mapping for every slot: ``clamp(id - visual_offset, 0, visual_vocab - 1)`` of
            the id standing there, masked or not; a slot past T reads ``layout.pad_id`` (verl pads its
            responses with it). False: invalid slots hold code 0.

    Returns:
        codes: int32 [B, F, h, w], ``id - visual_offset`` for each visual slot, 0 (or the clamped id) where
            the slot is invalid.
        valid: bool [B], True when all F*h*w slots hold an unmasked visual id (whatever ``clamp`` is).
        n_invalid: int32 [B], the number of invalid slots (out-of-range or negative ids, masked slots).

    Formula: RLVR-World's ``responses[:, -tokens_per_frame - 1:-1]`` (single step) and the per-frame
    slice of ``msp_reward_fn`` (multi-step), with their ``clamp(0, visual_vocab - 1)`` only when ``clamp``
    (``vid_wm/verl/verl/trainer/ppo/ray_trainer.py``, e1b8b6f). No host synchronisation.
    """
    C.check_tensor("responses", responses, dtypes=C.INT_DTYPES, ndim=2)
    C.check_tensor("response_mask", response_mask, dtypes=(torch.bool, *C.INT_DTYPES))
    C.check_shape("response_mask", response_mask, responses.shape, "like responses")
    C.check_same_device(responses=responses, response_mask=response_mask)
    if not isinstance(layout, VideoTokenLayout):
        raise TypeError(f"layout: expected a VideoTokenLayout, got {type(layout).__name__}")
    ids, mask = responses.long(), response_mask.bool()
    need = layout.response_length - int(layout.eos_after)
    if ids.shape[1] < need:  # truncated generations: pad with masked slots (counted as invalid)
        pad = need - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad), value=layout.pad_id)
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    slots = _slot_tensor(layout, ids.device)
    lo, k = layout.visual_offset, layout.visual_vocab
    codes, valid, n_invalid = torch.ops.rlvr_fast.unpack_video_tokens(ids.contiguous(), mask.contiguous(), slots, lo, k)
    if clamp:  # the same kernel on clamped ids, every slot unmasked: codes are the clamped ids
        clamped = ids.clamp(lo, lo + k - 1).contiguous()
        codes = torch.ops.rlvr_fast.unpack_video_tokens(clamped, torch.ones_like(mask), slots, lo, k)[0]
    return codes.view(ids.shape[0], layout.frames, *layout.frame_shape), valid, n_invalid


def unpack_video_tokens_ref(
    responses: torch.Tensor, response_mask: torch.Tensor, slot_pos: torch.Tensor, visual_offset: int, visual_vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference on flat slots: returns codes int32 [B, S], valid bool [B], n_invalid int32 [B]."""
    pos = slot_pos.long()
    inside = (pos >= 0) & (pos < responses.shape[1])  # a slot past the response is invalid
    pos = torch.where(inside, pos, 0)
    tok = responses.long()[:, pos] - visual_offset
    ok = inside & response_mask.bool()[:, pos] & (tok >= 0) & (tok < visual_vocab)
    codes = torch.where(ok, tok, 0).to(torch.int32)
    n_invalid = (~ok).sum(1, dtype=torch.int32)
    return codes, n_invalid == 0, n_invalid


@torch.library.custom_op("rlvr_fast::unpack_video_tokens", mutates_args=())
def _unpack_op(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    slot_pos: torch.Tensor,
    visual_offset: int,
    visual_vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if select_backend("unpack_video_tokens", responses.device, _BACKENDS) == "torch" or responses.numel() == 0:
        return unpack_video_tokens_ref(responses, response_mask, slot_pos, visual_offset, visual_vocab)
    codes, valid, n_invalid = extension().unpack_video_tokens(
        responses, response_mask, slot_pos, visual_offset, visual_vocab
    )
    return codes, valid, n_invalid


@_unpack_op.register_fake
def _(responses, response_mask, slot_pos, visual_offset, visual_vocab):
    b, s = responses.shape[0], slot_pos.shape[0]
    return (
        responses.new_empty((b, s), dtype=torch.int32),
        responses.new_empty((b,), dtype=torch.bool),
        responses.new_empty((b,), dtype=torch.int32),
    )


# ----------------------------------------------------------------------------------------------
# Quantizer tables and codes_to_latents
# ----------------------------------------------------------------------------------------------


# FSQ's codebook is materialised; 2**24 codes x 8 float64 levels is already 1 GiB.
MAX_FSQ_CODES = 1 << 24


def fsq_codebook(levels: Sequence[int]) -> torch.Tensor:
    """FSQ's implicit codebook, float64 [prod(levels), len(levels)].

    Code k has mixed-radix digits ``d_i = (k // basis_i) % L_i`` with ``basis = cumprod([1] + L[:-1])``
    and latent ``(d_i - L_i // 2) / (L_i // 2)`` (Mentzer et al. 2023, "Finite Scalar Quantization",
    as implemented in iVideoGPT's ``FSQ.indices_to_codes``). At most ``MAX_FSQ_CODES`` (2**24) codes.
    """
    levels = [int(v) for v in levels]
    if not levels or min(levels) < 2:
        raise ValueError(f"levels: expected a non-empty list of integers >= 2, got {levels}")
    if math.prod(levels) > MAX_FSQ_CODES:
        raise ValueError(
            f"levels: the codebook would have prod(levels) = {math.prod(levels)} codes, more than "
            f"{MAX_FSQ_CODES} (2**24): its table of prod(levels) x len(levels) float64 values would not fit "
            f"in memory (real FSQ codebooks have 2**10..2**16 codes); got {levels}"
        )
    lv = torch.tensor(levels, dtype=torch.int64)
    basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), 0)
    k = torch.arange(int(lv.prod()), dtype=torch.int64)[:, None]
    digits = (k // basis) % lv
    half = (lv // 2).double()
    return (digits.double() - half) / half


def _as_affine(proj) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias [out] or None) of an nn.Linear, a 1x1 nn.Conv2d or a (weight, bias) pair."""
    if isinstance(proj, torch.nn.Linear):
        return proj.weight, proj.bias
    if isinstance(proj, torch.nn.Conv2d):
        if proj.kernel_size != (1, 1) or proj.groups != 1:
            raise ValueError(f"projections: only 1x1 convolutions with groups=1 fold into the table, got {proj}")
        return proj.weight[:, :, 0, 0], proj.bias
    if isinstance(proj, (tuple, list)) and len(proj) == 2:
        weight, bias = proj
        if weight.dim() == 4:
            weight = weight[:, :, 0, 0]
        return weight, bias
    raise TypeError(f"projections: expected nn.Linear, 1x1 nn.Conv2d or (weight, bias), got {type(proj).__name__}")


class Quantizer:
    """A tokenizer's code -> latent map as one gather table [K, C].

    ``table = codebook``, then each projection in order: ``table = table @ W.T + b``. Projections are
    nn.Linear (iVideoGPT's FSQ ``project_out``), 1x1 nn.Conv2d (a VQ tokenizer's ``post_quant_conv``)
    or (weight, bias) pairs. Folding them is exact because they act on every position independently;
    the table is computed in float64 and cached per (device, dtype) until a projection's parameters
    change in place (an optimizer step).

    Build with :meth:`fsq` or :meth:`vq`.
    """

    def __init__(self, codebook: torch.Tensor, projections: Sequence = ()):
        C.check_tensor("codebook", codebook, dtypes=C.FLOAT_DTYPES, ndim=2)
        self.codebook = codebook
        self.projections = list(projections)
        dim = codebook.shape[1]
        for i, proj in enumerate(self.projections):
            weight, bias = _as_affine(proj)
            if weight.dim() != 2 or weight.shape[1] != dim:
                raise ValueError(f"projections[{i}]: expected weight [out, {dim}], got {tuple(weight.shape)}")
            if bias is not None and tuple(bias.shape) != (weight.shape[0],):
                raise ValueError(f"projections[{i}]: expected bias [{weight.shape[0]}], got {tuple(bias.shape)}")
            dim = weight.shape[0]
        self.channels = dim
        self._cache: dict = {}

    @classmethod
    def fsq(cls, levels: Sequence[int], projections: Sequence = ()) -> Quantizer:
        """FSQ with ``levels`` (iVideoGPT: [7, 5, 5, 5, 5]); see :func:`fsq_codebook`."""
        return cls(fsq_codebook(levels), projections)

    @classmethod
    def vq(cls, codebook: torch.Tensor, projections: Sequence = ()) -> Quantizer:
        """A learned VQ codebook [K, D] (the embedding weight of the tokenizer's quantizer)."""
        return cls(codebook, projections)

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def _params(self):
        for proj in self.projections:
            weight, bias = _as_affine(proj)
            yield weight
            if bias is not None:
                yield bias

    def clear_cache(self) -> None:
        """Forget cached tables. Needed only after parameter updates that bypass autograd's version
        counter (``p.data.copy_(...)``, EMA through ``.data``); in-place updates on ``p`` are detected."""
        self._cache.clear()

    def table(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The folded table [K, C] on ``device`` in ``dtype`` (contiguous, no autograd history).

        Cached per (device, dtype) and rebuilt when a parameter changes in place; under
        ``torch.compile`` it is built inside the graph instead (a few [K, D] matmuls).
        """
        device = torch.device(device) if device is not None else self.codebook.device
        if torch.compiler.is_compiling():
            return self._build(device, dtype)
        params = [self.codebook, *self._params()]
        key = (device, dtype, tuple((p.data_ptr(), p._version) for p in params))
        cached = self._cache.get((device, dtype))
        if cached is not None and cached[0] == key:
            return cached[1]
        table = self._build(device, dtype)
        self._cache[(device, dtype)] = (key, table)
        return table

    def _build(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        with torch.no_grad():
            table = self.codebook.detach().to(device, torch.float64)
            for proj in self.projections:
                weight, bias = _as_affine(proj)
                table = table @ weight.detach().to(device, torch.float64).T
                if bias is not None:
                    table = table + bias.detach().to(device, torch.float64)
            return table.to(dtype).contiguous()


def codes_to_latents(
    codes: torch.Tensor,
    quantizer: Quantizer | torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Decoder input latents of a batch of frame codes.

    Args:
        codes: int [B, F, h, w] (from :func:`unpack_video_tokens`) or [N, h, w]; values in [0, K).
        quantizer: a :class:`Quantizer`, or a ready table [K, C] (its dtype then wins over ``dtype``).
        dtype: the decoder's dtype (float32, bfloat16 or float16).
        memory_format: ``torch.contiguous_format`` (NCHW) or ``torch.channels_last`` (the decoder's
            layout under bf16 autocast on GPU); the kernel writes that layout directly.

    Checks that every code is in [0, K) (a host read on CPU, a device-side assert on CUDA;
    ``RLVR_FAST_CHECK_VALUES=0`` skips it).

    Returns:
        [N, C, h, w] in ``dtype`` and ``memory_format``, N = B * F:
        ``out[n, :, y, x] = table[codes[n, y, x]]`` (FSQ: centred levels, then the folded projections).
    """
    C.check_tensor("codes", codes, dtypes=C.INT_DTYPES, ndim=(3, 4))
    if isinstance(quantizer, Quantizer):
        C.check_choice("dtype", dtype, (torch.float32, torch.bfloat16, torch.float16))
        table = quantizer.table(codes.device, dtype)
    elif isinstance(quantizer, torch.Tensor):
        C.check_tensor("quantizer", quantizer, dtypes=(torch.float32, torch.bfloat16, torch.float16), ndim=2)
        C.check_same_device(codes=codes, quantizer=quantizer)
        table = quantizer.detach().contiguous()
    else:
        raise TypeError(f"quantizer: expected a Quantizer or a table [K, C], got {type(quantizer).__name__}")
    C.check_choice("memory_format", memory_format, (torch.contiguous_format, torch.channels_last))
    h, w = codes.shape[-2:]
    if h * w == 0:
        raise ValueError(f"codes: expected a non-empty frame grid, got shape {tuple(codes.shape)}")
    # saturate, not wrap: an int64 code >= 2^31 must still fail the range check
    flat = codes.reshape(-1, h * w).clamp(-1, torch.iinfo(torch.int32).max).to(torch.int32).contiguous()
    channels_last = memory_format == torch.channels_last
    out = torch.ops.rlvr_fast.codes_to_latents(flat, table, channels_last)
    n, c = flat.shape[0], table.shape[1]
    if channels_last:
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    return out.view(n, c, h, w)


def codes_to_latents_ref(codes: torch.Tensor, table: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Reference: codes int32 [N, HW], table [K, C] -> [N, C, HW] (or [N, HW, C] when ``channels_last``)."""
    out = table[codes.long()]  # [N, HW, C]
    return out.contiguous() if channels_last else out.transpose(1, 2).contiguous()


@torch.library.custom_op("rlvr_fast::codes_to_latents", mutates_args=())
def _codes_to_latents_op(codes: torch.Tensor, table: torch.Tensor, channels_last: bool) -> torch.Tensor:
    C.check_in_range("codes", codes, table.shape[0])  # here, not in the wrapper: no graph break
    if select_backend("codes_to_latents", codes.device, _BACKENDS) == "torch" or codes.numel() == 0:
        return codes_to_latents_ref(codes, table, channels_last)
    return extension().codes_to_latents(codes, table, channels_last)


@_codes_to_latents_op.register_fake
def _(codes, table, channels_last):
    n, hw, c = codes.shape[0], codes.shape[1], table.shape[1]
    return table.new_empty((n, hw, c) if channels_last else (n, c, hw))
