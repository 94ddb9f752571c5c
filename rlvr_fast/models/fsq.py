"""Finite Scalar Quantization (FSQ) as iVideoGPT's frame tokenizer uses it, and the bounds on tokenizer sizes.

Source: ``FSQ`` in iVideoGPT's ``ivideogpt/utils/finite_scalar_quantize.py`` (after lucidrains'
vector-quantize-pytorch; Mentzer et al. 2023, https://arxiv.org/abs/2309.15505), with ``dim ==
len(levels)``, so no ``project_in`` / ``project_out``. FSQ rounding always runs in float32 with autocast
off, as in iVideoGPT (``force_quantization_f32``). See ``docs/frame_tokenizers.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

# iVideoGPT's get_fsq_levels: an int fsq_levels argument (the config.json of CNNFSQModel256 stores the
# int the training script passed, 12 by default) names one of these level lists.
FSQ_LEVELS_BY_BITS: dict[int, tuple[int, ...]] = {
    8: (8, 6, 5),
    10: (8, 5, 5, 5),
    12: (7, 5, 5, 5, 5),
    14: (8, 8, 8, 6, 5),
    16: (8, 8, 8, 5, 5, 5),
}
# Upper bounds on a tokenizer config's sizes, checked before anything is built: a config.json asking for
# 100000 residual blocks once spent > 40 s building the model before any other check ran. Each is far
# above any real tokenizer (iVideoGPT's widest layer is 768, its deepest stack 5 levels of 2 resnets).
MAX_CHANNELS = 8192  # any width: in/out/latent channels, block_out_channels / channels, norm_num_groups
MAX_STAGES = 8  # len(block_out_channels) / len(channels): up to 2**8 downsampling
MAX_BLOCKS = 64  # layers_per_block / res_blocks
MAX_FSQ_DIMS = 16  # len(fsq_levels)
MAX_CODES = 2**20  # prod(fsq_levels): the code table is [codes, latent_channels]
FSQ_BOUND_EPS = 1e-3  # FSQ.bound's eps


def _int_tuple(name: str, values, minimum: int = 1) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of ints, got {values!r}") from None
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in out):
        raise ValueError(f"{name}: expected ints >= {minimum}, got {values!r}")
    return out


def fsq_levels(name: str, levels) -> tuple[int, ...]:
    """A config's FSQ levels: a sequence of ints >= 2, or an int looked up in :data:`FSQ_LEVELS_BY_BITS`
    like iVideoGPT's ``get_fsq_levels`` (12 -> [7, 5, 5, 5, 5]); errors name ``name``."""
    if isinstance(levels, int) and not isinstance(levels, bool):
        if levels not in FSQ_LEVELS_BY_BITS:
            raise ValueError(
                f"{name}: an int must be one of {sorted(FSQ_LEVELS_BY_BITS)} (iVideoGPT's get_fsq_levels), got {levels}"
            )
        levels = FSQ_LEVELS_BY_BITS[levels]
    return _int_tuple(name, levels, minimum=2)


def _check_sizes(owner: str, *, widths: tuple[str, ...], stages: str, blocks: str, values: Mapping) -> None:
    """ValueError naming the field unless every size is within :data:`MAX_CHANNELS` and the other bounds."""
    limits = [(k, MAX_CHANNELS, "a width") for k in widths]
    limits += [(blocks, MAX_BLOCKS, "a block count")]
    for key, limit, what in limits:
        value = values[key]
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if v > limit:
                raise ValueError(f"{owner}.{key}: {what} must be <= {limit}, got {v}")
    for key, limit in ((stages, MAX_STAGES), ("fsq_levels", MAX_FSQ_DIMS)):
        if len(values[key]) > limit:
            raise ValueError(f"{owner}.{key}: at most {limit} entries, got {len(values[key])}")
    codes = math.prod(values["fsq_levels"])
    if codes > MAX_CODES:
        raise ValueError(f"{owner}.fsq_levels: at most {MAX_CODES} codes (their product), got {codes}")


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round with straight-through gradients (iVideoGPT ``round_ste``): forward ``round(z)``, backward identity."""
    return z + (z.round() - z).detach()


class FSQ(nn.Module):
    """Finite Scalar Quantization without projections (iVideoGPT's ``FSQ(levels)`` with ``dim = len(levels)``).

    Per channel i with L_i levels: ``bound(z) = tanh(z + shift) * half_l - offset`` with
    ``half_l = (L - 1)(1 + 1e-3) / 2``, ``offset = 0.5`` for even L (else 0), ``shift = atanh(offset /
    half_l)``; ``zhat = round_ste(bound(z)) / (L // 2)`` in [-1, 1]; the code index is the mixed-radix
    number of the digits ``round(bound(z)) + L // 2`` with ``basis = cumprod([1] + L[:-1])``.

    iVideoGPT computes the index as ``((zhat * half + half) * basis).sum().to(int32)`` in floating
    point; here the digits are taken from the rounded integers directly (exact; the same values for
    every code, checked in the tests). Quantization runs in float32 with autocast off.

    Levels / basis are non-persistent buffers (no state-dict keys, as in iVideoGPT).
    """

    def __init__(self, levels: Sequence[int]):
        super().__init__()
        self.levels = _int_tuple("levels", levels, minimum=2)
        self.register_buffer("_levels", torch.empty(len(self.levels), dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.empty(len(self.levels), dtype=torch.int64), persistent=False)
        self.reset_constants()

    def reset_constants(self) -> None:
        """Refill the level / basis buffers (after ``to_empty`` from the meta device)."""
        basis = [1]
        for v in self.levels[:-1]:
            basis.append(basis[-1] * v)
        with torch.no_grad():
            self._levels.copy_(torch.tensor(self.levels, dtype=torch.int64))
            self._basis.copy_(torch.tensor(basis, dtype=torch.int64))

    @property
    def dim(self) -> int:
        """Channels quantized (``len(levels)``)."""
        return len(self.levels)

    @property
    def num_codes(self) -> int:
        """Codebook size ``prod(levels)``."""
        return math.prod(self.levels)

    def bound(self, z: torch.Tensor, eps: float = FSQ_BOUND_EPS) -> torch.Tensor:
        """``z`` [..., D] float32 -> values in (-L/2, L/2) per channel (see the class docstring)."""
        levels = self._levels.to(torch.float32)
        half_l = (levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` [..., D] -> (zhat float32 [..., D] in [-1, 1] with straight-through gradients, codes int64 [...])."""
        q = round_ste(self.bound(z.float()))
        half = (self._levels // 2).to(torch.float32)
        digits = q.detach().to(torch.int64) + self._levels // 2
        codes = (digits * self._basis).sum(-1)
        return q / half, codes

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices int [...] -> centred level values float32 [..., D]: ``(digit - L//2) / (L//2)``."""
        digits = (indices.long().unsqueeze(-1) // self._basis) % self._levels
        half = self._levels // 2
        return (digits - half).to(torch.float32) / half.to(torch.float32)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` [N, D, h, w] -> (zhat [N, D, h, w] in z's dtype, codes int64 [N, h, w])."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            zhat, codes = self.quantize(z.permute(0, 2, 3, 1))
        return zhat.permute(0, 3, 1, 2).to(z.dtype), codes

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, num_codes={self.num_codes}"


__all__ = [
    "FSQ",
    "FSQ_LEVELS_BY_BITS",
    "MAX_BLOCKS",
    "MAX_CHANNELS",
    "MAX_CODES",
    "MAX_FSQ_DIMS",
    "MAX_STAGES",
    "round_ste",
]
