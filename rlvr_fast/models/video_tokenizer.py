"""Per-frame FSQ video tokenizers: iVideoGPT's ``CNNFSQModel256`` in plain torch, and a tiny one for 64x64.

RLVR-World's video world model (iVideoGPT layout) turns every 256x320 frame into a 16x20 grid of
discrete codes with a CNN autoencoder and Finite Scalar Quantization (levels [7, 5, 5, 5, 5], 4375
codes); the policy generates codes and the tokenizer's decoder turns them back into frames for the
pixel reward. :class:`CNNFSQTokenizer` rebuilds that tokenizer without ``diffusers``: the module tree,
parameter names and shapes are those of

- ``CNNFSQModel256`` (iVideoGPT ``ivideogpt/tokenizer/vq_model.py``; the same file in RLVR-World's
  ``vid_wm/verl/ivideogpt/tokenizer/vq_model.py``), default constructor arguments;
- ``CNNEncoder`` / ``CNNDecoder`` (``ivideogpt/tokenizer/vae.py``), which build on diffusers'
  ``DownEncoderBlock2D``, ``UpDecoderBlock2D``, ``UNetMidBlock2D`` (``models/unets/unet_2d_blocks.py``),
  ``ResnetBlock2D`` (``models/resnet.py``), ``Downsample2D`` / ``Upsample2D``
  (``models/downsampling.py``, ``models/upsampling.py``) and ``Attention`` with ``AttnProcessor2_0``
  (``models/attention_processor.py``);
- ``FSQ`` (``ivideogpt/utils/finite_scalar_quantize.py``, after lucidrains' vector-quantize-pytorch;
  Mentzer et al. 2023, https://arxiv.org/abs/2309.15505),

so a checkpoint saved by ``CNNFSQModel256.save_pretrained`` (``config.json`` +
``diffusion_pytorch_model.safetensors`` or ``.bin``) loads with a strict state-dict load
(:meth:`CNNFSQTokenizer.from_pretrained`). Nothing is downloaded.

Module tree (default config; ``{i}`` down/up block, ``{j}`` resnet in the block)::

    encoder.conv_in                                 Conv2d(3, 128, 3, padding=1)
    encoder.down_blocks.{i}.resnets.{j}.norm1       GroupNorm(32, C_in, eps=1e-6)
                                     .conv1         Conv2d(C_in, C_out, 3, padding=1)
                                     .norm2         GroupNorm(32, C_out, eps=1e-6)
                                     .conv2         Conv2d(C_out, C_out, 3, padding=1)
                                     .conv_shortcut Conv2d(C_in, C_out, 1)           only when C_in != C_out
    encoder.down_blocks.{i}.downsamplers.0.conv     Conv2d(C, C, 3, stride=2, padding=0) after pad (0, 1, 0, 1);
                                                    every block but the last (16x: 256x320 -> 16x20)
    encoder.mid_block.resnets.0 / .attentions.0 / .resnets.1
        attentions.0.group_norm                     GroupNorm(32, 768, eps=1e-6)
        attentions.0.to_q / to_k / to_v / to_out.0  Linear(768, 768) with bias; one head of width 768
    encoder.conv_norm_out                           GroupNorm(32, 768, eps=1e-6)
    encoder.conv_out                                Conv2d(768, 64, 3, padding=1)
    quant_linear                                    Conv2d(64, 5, 1)
    dynamics_quantize                               FSQ([7, 5, 5, 5, 5]): no parameters (dim == len(levels),
                                                    so no project_in / project_out), non-persistent buffers
    post_quant_linear                               Conv2d(5, 64, 1)
    decoder.conv_in                                 Conv2d(64, 768, 3, padding=1)
    decoder.mid_block                               as in the encoder
    decoder.up_blocks.{i}.resnets.{j}               channels 768->512, 512->256, 256->256, 256->128, 128->128
    decoder.up_blocks.{i}.upsamplers.0.conv         Conv2d(C, C, 3, padding=1) after nearest 2x; blocks 1..4
    decoder.conv_norm_out                           GroupNorm(32, 128, eps=1e-6)
    decoder.conv_out                                Conv2d(128, 3, 3, padding=1)

:func:`key_schema` writes the same names out from the config arithmetic. Forward (all activations
SiLU): encoder ``conv_in -> down blocks -> mid -> GroupNorm -> SiLU -> conv_out``; resnet
``x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`` (``conv_shortcut(x)`` on the skip when the width
changes); attention ``x + to_out(softmax(q k^T / sqrt(C)) v)`` on ``group_norm(x)`` flattened to
[N, h*w, C]; decoder ``conv_in -> mid -> up blocks -> GroupNorm -> SiLU -> conv_out``.

Assumptions about diffusers internals (read from diffusers' main-branch source; iVideoGPT imports
``diffusers.models.unets.unet_2d_blocks``, a path that exists from diffusers 0.25 on, and these blocks
kept their parameter names since):
- Attention keys are the current ``to_q``/``to_k``/``to_v``/``to_out.0`` (+ ``group_norm``).
  Checkpoints from diffusers' deprecated ``AttentionBlock`` era used ``query``/``key``/``value``/
  ``proj_attn``; :meth:`CNNFSQTokenizer.from_pretrained` renames those as diffusers'
  ``ModelMixin._fix_state_dict_keys_on_load`` does. ``to_out.1`` is a parameter-free Dropout(0).
- The mid blocks hold attention (``mid_block_add_attention=True`` in ``CNNFSQModel256``) with
  ``attention_head_dim = C`` (one head), ``norm_num_groups = 32`` (``attn_groups`` defaults to the
  resnet groups for ``resnet_time_scale_shift="default"``), ``eps = 1e-6``, bias on every linear,
  residual connection, ``rescale_output_factor = 1``; SDPA's default scale ``1/sqrt(C)`` equals
  diffusers' ``dim_head ** -0.5``.
- Every GroupNorm has 32 groups and eps 1e-6 (``resnet_eps=1e-6`` throughout, ``conv_norm_out`` too).
- ``Downsample2D(padding=0, name="op")`` registers its conv as ``conv`` and pads (0, 1, 0, 1) with
  zeros before the stride-2 conv; ``Upsample2D`` interpolates ``mode="nearest"`` by 2 then convs.
- The decoder's up blocks get ``num_layers = layers_per_block`` (2) resnets (diffusers' own VAE
  decoder uses ``layers_per_block + 1``; iVideoGPT's ``CNNDecoder`` passes ``layers_per_block``).
- ``norm_type="group"`` makes the up-block resnets plain GroupNorm resnets without ``time_emb_proj``
  (``temb_channels=None``); ``norm_type="spatial"`` (SpatialNorm) is not supported.

Value ranges: frames go in as float [N, 3, H, W] in [0, 1] (iVideoGPT's loaders divide by 255 and the
tokenizer is trained with an L1/MSE loss against those pixels; its LPIPS term maps ``x * 2 - 1``
itself). The decoder has no output activation, so its raw output is [0, 1]-valued only
approximately; RLVR-World clamps it (``pred = detokenize(...).clamp(0.0, 1.0)`` in
``verl/trainer/ppo/ray_trainer.py``) before every pixel metric. ``decode_codes`` / ``decode_latents``
clamp to [0, 1] by default (``clamp=False`` gives the raw output).

Decoding from generated tokens: ``decode_latents(codes_to_latents(codes, tok.quantizer()))`` equals
``decode_codes(codes)`` (one gather from the folded table [K, 64] replaces FSQ's digit arithmetic and
the ``post_quant_linear`` 1x1 conv; see :mod:`rlvr_fast.ops.video`).

Precision: build in float32 and run under ``torch.autocast(dtype=torch.bfloat16)`` on GPU, as
RLVR-World does; modules accept ``channels_last`` inputs (``model.to(memory_format=torch.channels_last)``
and ``codes_to_latents(..., memory_format=torch.channels_last)``). FSQ rounding always runs in float32
with autocast off, as in iVideoGPT (``force_quantization_f32``).

:class:`TinyFSQTokenizer` is a small FSQ conv tokenizer for the built-in 64x64 video world (8x8 code
grid, FSQ levels [8, 5, 5, 5], 1000 codes) with the same API, trainable on CPU in minutes with
:func:`train_tokenizer`. It is *not* a miniature of the iVideoGPT architecture: a narrow copy of that one
(GroupNorm everywhere, PyTorch default inits) did not get below the per-frame-mean-colour baseline
in 100-400 CPU steps on coloured squares, while a plain conv stack without normalisation, Kaiming
init and zero-initialised residual/output convolutions does within 80 steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlvr_fast._checks import FLOAT_DTYPES, INT_DTYPES, check_tensor, value_checks_enabled
from rlvr_fast._threads import CpuThreads
from rlvr_fast.models._files import check_against_schema, read_state_dict
from rlvr_fast.ops.video import Quantizer

log = logging.getLogger(__name__)

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
RESNET_EPS = 1e-6  # resnet_eps / conv_norm_out eps everywhere in CNNEncoder / CNNDecoder

# Weight files CNNFSQModel256.save_pretrained may have written, in the order diffusers looks for them,
# then the names a plain torch.save / safetensors export is likely to have.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
_FILE_HELP = (
    "a CNNFSQModel256 state dict (iVideoGPT's per-frame FSQ tokenizer: a directory with config.json and "
    "diffusion_pytorch_model.safetensors/.bin, or the weight file itself)"
)
# diffusers' deprecated AttentionBlock names -> current ones (ModelMixin._fix_state_dict_keys_on_load)
_DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CNNFSQConfig:
    """Architecture of a :class:`CNNFSQTokenizer`; the defaults are iVideoGPT's ``CNNFSQModel256()``.

    Attributes:
        in_channels, out_channels: image channels in and out (3).
        block_out_channels: widths of the encoder's down blocks (the decoder mirrors them); there are
            ``len - 1`` stride-2 downsamples, so the code grid is the frame size / ``2 ** (len - 1)``.
        layers_per_block: resnets per down block and per up block.
        latent_channels: width of the encoder output / decoder input (64).
        norm_num_groups: groups of every GroupNorm (32); must divide every width.
        fsq_levels: FSQ levels (iVideoGPT default ``get_fsq_levels(12)`` = [7, 5, 5, 5, 5]); an int is
            looked up in :data:`FSQ_LEVELS_BY_BITS` like iVideoGPT's ``get_fsq_levels``.
        mid_block_add_attention: whether the mid blocks hold the single-head attention (True in
            ``CNNFSQModel256``, which does not expose it).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512, 768)
    layers_per_block: int = 2
    latent_channels: int = 64
    norm_num_groups: int = 32
    fsq_levels: tuple[int, ...] = (7, 5, 5, 5, 5)
    mid_block_add_attention: bool = True

    def __post_init__(self):
        levels = self.fsq_levels
        if isinstance(levels, int) and not isinstance(levels, bool):
            if levels not in FSQ_LEVELS_BY_BITS:
                raise ValueError(
                    f"CNNFSQConfig.fsq_levels: an int must be one of {sorted(FSQ_LEVELS_BY_BITS)} "
                    f"(iVideoGPT's get_fsq_levels), got {levels}"
                )
            levels = FSQ_LEVELS_BY_BITS[levels]
        object.__setattr__(self, "fsq_levels", _int_tuple("CNNFSQConfig.fsq_levels", levels, minimum=2))
        object.__setattr__(
            self, "block_out_channels", _int_tuple("CNNFSQConfig.block_out_channels", self.block_out_channels)
        )
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
            _int_tuple(f"CNNFSQConfig.{name}", (getattr(self, name),))
        _check_sizes(
            "CNNFSQConfig",
            widths=(
                "in_channels", "out_channels", "latent_channels", "norm_num_groups", "block_out_channels"
            ),
            stages="block_out_channels",
            blocks="layers_per_block",
            values=asdict(self),
        )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"CNNFSQConfig: norm_num_groups={self.norm_num_groups} must divide every block width, "
                f"got block_out_channels={self.block_out_channels}"
            )

    @property
    def downsample_factor(self) -> int:
        """Frame size / code-grid size: ``2 ** (len(block_out_channels) - 1)``."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def num_codes(self) -> int:
        """Codebook size ``prod(fsq_levels)`` (4375 for [7, 5, 5, 5, 5])."""
        return math.prod(self.fsq_levels)

    @classmethod
    def from_dict(cls, d: Mapping) -> CNNFSQConfig:
        """From a ``CNNFSQModel256`` ``config.json`` (diffusers ``register_to_config`` format).

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) are metadata;
        ``_class_name``, when present, must be ``CNNFSQModel256``. ``resolution`` only set iVideoGPT's
        unused ``init_res`` and is ignored. ``down_block_types`` / ``up_block_types`` must be all
        ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` (one per width), ``act_fn`` ``silu``/``swish`` and
        ``norm_type`` ``group``: other values raise ValueError, as do unknown keys.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"config: expected a mapping (config.json contents), got {type(d).__name__}")
        name = d.get("_class_name")
        if name is not None and name != "CNNFSQModel256":
            raise ValueError(
                f"config: _class_name {name!r} is not CNNFSQModel256 (iVideoGPT's per-frame FSQ tokenizer); "
                "the compressive (context) tokenizer is a different model"
            )
        fields = {f for f in cls.__dataclass_fields__}
        known = fields | {"down_block_types", "up_block_types", "act_fn", "norm_type", "resolution"}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"config: unknown CNNFSQModel256 arguments {unknown}")
        kwargs = {k: d[k] for k in fields if k in d}
        for k in ("block_out_channels", "fsq_levels"):
            if isinstance(kwargs.get(k), list):
                kwargs[k] = tuple(kwargs[k])
        cfg = cls(**kwargs)
        n = len(cfg.block_out_channels)
        for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if key in d and list(d[key]) != [want] * n:
                raise ValueError(f"config: {key} must be {n} x {want!r} (one per width), got {list(d[key])}")
        if d.get("act_fn", "silu") not in ("silu", "swish"):
            raise ValueError(f"config: act_fn must be 'silu', got {d['act_fn']!r}")
        if d.get("norm_type", "group") != "group":
            raise ValueError(
                f"config: norm_type must be 'group' (SpatialNorm is not supported), got {d['norm_type']!r}"
            )
        return cfg

    def to_dict(self) -> dict:
        """``config.json`` contents in ``CNNFSQModel256``'s argument names (loadable by iVideoGPT too,
        except that it ignores ``mid_block_add_attention`` and always adds attention)."""
        n = len(self.block_out_channels)
        d = {"_class_name": "CNNFSQModel256"}
        d.update(asdict(self))
        d["block_out_channels"] = list(self.block_out_channels)
        d["fsq_levels"] = list(self.fsq_levels)
        d.update(down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n)
        d.update(act_fn="silu", norm_type="group")
        return d


def ivideogpt_config() -> CNNFSQConfig:
    """iVideoGPT's ``CNNFSQModel256()`` as RLVR-World uses it: 256x320 frames -> 16x20 codes, 4375 codes."""
    return CNNFSQConfig()


def _int_tuple(name: str, values, minimum: int = 1) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of ints, got {values!r}") from None
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in out):
        raise ValueError(f"{name}: expected ints >= {minimum}, got {values!r}")
    return out


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


def key_schema(config: CNNFSQConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Expected ``{key: shape}`` of a ``CNNFSQModel256`` state dict (default: iVideoGPT's config).

    Written out from diffusers' naming rules (see the module docstring), independently of the
    modules in this file: ``encoder.*``, ``quant_linear.*`` [D, 64, 1, 1], ``post_quant_linear.*``
    [64, D, 1, 1] (D = len(fsq_levels)), ``decoder.*``. FSQ holds no parameters (its level / basis
    buffers are non-persistent), so there are no ``dynamics_quantize.*`` keys.
    """
    cfg = config if config is not None else CNNFSQConfig()
    s: dict[str, tuple[int, ...]] = {}

    def conv(p: str, cin: int, cout: int, k: int) -> None:
        s[f"{p}.weight"] = (cout, cin, k, k)
        s[f"{p}.bias"] = (cout,)

    def norm(p: str, c: int) -> None:
        s[f"{p}.weight"] = (c,)
        s[f"{p}.bias"] = (c,)

    def linear(p: str, cin: int, cout: int) -> None:
        s[f"{p}.weight"] = (cout, cin)
        s[f"{p}.bias"] = (cout,)

    def resnet(p: str, cin: int, cout: int) -> None:
        norm(f"{p}.norm1", cin)
        conv(f"{p}.conv1", cin, cout, 3)
        norm(f"{p}.norm2", cout)
        conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.conv_shortcut", cin, cout, 1)

    def mid(p: str, c: int) -> None:
        resnet(f"{p}.resnets.0", c, c)
        if cfg.mid_block_add_attention:
            norm(f"{p}.attentions.0.group_norm", c)
            for name in ("to_q", "to_k", "to_v", "to_out.0"):
                linear(f"{p}.attentions.0.{name}", c, c)
        resnet(f"{p}.resnets.1", c, c)

    ch, n, layers = cfg.block_out_channels, len(cfg.block_out_channels), cfg.layers_per_block
    conv("encoder.conv_in", cfg.in_channels, ch[0], 3)
    prev = ch[0]
    for i, out in enumerate(ch):
        for j in range(layers):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", prev if j == 0 else out, out)
        if i < n - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out, 3)
        prev = out
    mid("encoder.mid_block", ch[-1])
    norm("encoder.conv_norm_out", ch[-1])
    conv("encoder.conv_out", ch[-1], cfg.latent_channels, 3)
    d = len(cfg.fsq_levels)
    conv("quant_linear", cfg.latent_channels, d, 1)
    conv("post_quant_linear", d, cfg.latent_channels, 1)
    conv("decoder.conv_in", cfg.latent_channels, ch[-1], 3)
    mid("decoder.mid_block", ch[-1])
    rev = list(reversed(ch)) + [ch[0]]
    for i in range(n):
        cin, cout = rev[i], rev[i + 1]
        for j in range(layers):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i > 0:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
    norm("decoder.conv_norm_out", ch[0])
    conv("decoder.conv_out", ch[0], cfg.out_channels, 3)
    return s


# ----------------------------------------------------------------------------------------------
# FSQ
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# diffusers blocks (names and shapes as in diffusers; forward as in its default processors)
# ----------------------------------------------------------------------------------------------


class _ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D(temb_channels=None)``: norm1, conv1, norm2, conv2, conv_shortcut if widths differ."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=RESNET_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=RESNET_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class _Downsample2D(nn.Module):
    """diffusers ``Downsample2D(use_conv=True, padding=0)``: zero pad (0, 1, 0, 1), 3x3 conv stride 2."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Upsample2D(nn.Module):
    """diffusers ``Upsample2D(use_conv=True)``: nearest 2x, 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Attention(nn.Module):
    """diffusers ``Attention`` as UNetMidBlock2D builds it (one head of width C, GroupNorm, residual)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=RESNET_EPS)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        hs = self.group_norm(x).flatten(2).transpose(1, 2)  # [N, hw, C]
        q, k, v = (proj(hs).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # [N, 1, hw, C]
        o = F.scaled_dot_product_attention(q, k, v).squeeze(1).to(q.dtype)
        o = self.to_out[1](self.to_out[0](o))
        return o.transpose(1, 2).reshape(n, c, h, w) + x


class _MidBlock2D(nn.Module):
    """diffusers ``UNetMidBlock2D(num_layers=1)``: resnets.0, attentions.0 (optional), resnets.1."""

    def __init__(self, c: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([_Attention(c, groups)] if attention else [])
        self.resnets = nn.ModuleList([_ResnetBlock2D(c, c, groups), _ResnetBlock2D(c, c, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class _DownEncoderBlock2D(nn.Module):
    """diffusers ``DownEncoderBlock2D``: ``resnets``, then ``downsamplers.0`` (None in the last block)."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            _ResnetBlock2D(cin if j == 0 else cout, cout, groups) for j in range(layers)
        )
        self.downsamplers = nn.ModuleList([_Downsample2D(cout)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class _UpDecoderBlock2D(nn.Module):
    """diffusers ``UpDecoderBlock2D``: ``resnets``, then ``upsamplers.0`` (None in the first block)."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            _ResnetBlock2D(cin if j == 0 else cout, cout, groups) for j in range(layers)
        )
        self.upsamplers = nn.ModuleList([_Upsample2D(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class CNNEncoder(nn.Module):
    """iVideoGPT ``CNNEncoder(double_z=False)``: frames [N, 3, H, W] -> [N, latent_channels, H/f, W/f]."""

    def __init__(self, cfg: CNNFSQConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            _DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, downsample=i < n - 1)
            for i in range(n)
        )
        self.mid_block = _MidBlock2D(ch[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class CNNDecoder(nn.Module):
    """iVideoGPT ``CNNDecoder(norm_type="group")``: latents [N, latent_channels, h, w] -> [N, 3, h*f, w*f]."""

    def __init__(self, cfg: CNNFSQConfig):
        super().__init__()
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        rev = list(reversed(ch)) + [ch[0]]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.mid_block = _MidBlock2D(ch[-1], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            _UpDecoderBlock2D(rev[i], rev[i + 1], cfg.layers_per_block, g, upsample=i > 0) for i in range(n)
        )
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


# ----------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------


class _FSQTokenizer(nn.Module):
    """Shared API of the FSQ tokenizers: ``encoder -> quant_linear -> dynamics_quantize (FSQ) ->
    post_quant_linear -> decoder``; subclasses build the five submodules and set ``config``."""

    config: CNNFSQConfig | TinyFSQConfig

    def _build_quantizer(self, cfg) -> None:
        d = len(cfg.fsq_levels)
        self.quant_linear = nn.Conv2d(cfg.latent_channels, d, 1)
        self.dynamics_quantize = FSQ(cfg.fsq_levels)
        self.post_quant_linear = nn.Conv2d(d, cfg.latent_channels, 1)
        self._quantizer: Quantizer | None = None

    # -- properties ------------------------------------------------------------------------------

    @property
    def fsq_levels(self) -> tuple[int, ...]:
        """FSQ levels, e.g. (7, 5, 5, 5, 5)."""
        return self.config.fsq_levels

    @property
    def num_codes(self) -> int:
        """Codebook size K = prod(levels); codes are in [0, K)."""
        return self.config.num_codes

    @property
    def downsample_factor(self) -> int:
        """Frame size / code-grid size (16 for iVideoGPT, 8 for :class:`TinyFSQTokenizer`)."""
        return self.config.downsample_factor

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """Code grid (h, w) of [.., height, width] frames (both must be multiples of the downsample factor)."""
        f = self.downsample_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(f"frames: expected H, W positive multiples of {f}, got {height}x{width}")
        return height // f, width // f

    # -- code <-> latent ------------------------------------------------------------------------

    def quantizer(self) -> Quantizer:
        """``Quantizer.fsq(levels, [post_quant_linear])``: the code -> decoder-input table [K, latent_channels].

        ``codes_to_latents(codes, tok.quantizer())`` equals :meth:`code_latents` (float rounding
        aside), so ``decode_latents(codes_to_latents(codes, tok.quantizer()))`` == ``decode_codes(codes)``.
        There is no FSQ ``project_out`` (iVideoGPT's FSQ has ``dim == len(levels)``). The Quantizer
        is built once and keeps following the conv's parameters (its table cache notices in-place
        updates and ``.to()`` moves).
        """
        if self._quantizer is None:
            self._quantizer = Quantizer.fsq(self.config.fsq_levels, [self.post_quant_linear])
        return self._quantizer

    def code_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """iVideoGPT's path: codes int [N, h, w] -> ``post_quant_linear(indices_to_codes(codes))``
        [N, latent_channels, h, w] in the module's dtype."""
        zhat = self.dynamics_quantize.indices_to_codes(codes).permute(0, 3, 1, 2)
        return self.post_quant_linear(zhat.to(self.post_quant_linear.weight.dtype))

    # -- encode / decode ------------------------------------------------------------------------

    def _check_frames(self, frames) -> None:
        check_tensor("frames", frames, dtypes=FLOAT_DTYPES, ndim=4)
        if frames.shape[1] != self.config.in_channels:
            raise ValueError(
                f"frames: expected [N, {self.config.in_channels}, H, W], got shape {tuple(frames.shape)}"
            )
        self.latent_shape(frames.shape[2], frames.shape[3])

    def _check_codes(self, codes) -> None:
        check_tensor("codes", codes, dtypes=INT_DTYPES, ndim=3)
        if codes.numel() and value_checks_enabled(codes):
            bad = (codes < 0) | (codes >= self.num_codes)
            if bool(bad.any()):
                raise IndexError(
                    f"codes: expected values in [0, {self.num_codes}), got {int(bad.sum())} outside, "
                    f"e.g. {codes[bad][0].item()}"
                )

    def quantize_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [N, 3, H, W] in [0, 1] -> (zhat [N, D, h, w] with straight-through gradients, codes int64 [N, h, w])."""
        self._check_frames(frames)
        return self.dynamics_quantize(self.quant_linear(self.encoder(frames)))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass (iVideoGPT ``CNNFSQModel256.forward``): frames float [N, 3, H, W] in [0, 1] ->
        (raw reconstruction [N, 3, H, W], unclamped, differentiable through ``round_ste``; codes int64 [N, h, w])."""
        zhat, codes = self.quantize_frames(frames)
        return self.decoder(self.post_quant_linear(zhat)), codes

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
        """frames float [N, 3, H, W] in [0, 1] (any float dtype; H, W multiples of the downsample factor)
        -> codes int64 [N, H/f, W/f] in [0, K). iVideoGPT ``CNNFSQModel256.encode`` (which returns int32).

        chunk_size: at most this many frames through the encoder at once (None: all).
        """
        self._check_frames(frames)
        return torch.cat([self.quantize_frames(x)[1] for x in _chunks(frames, chunk_size)])

    def decode_latents(
        self, latents: torch.Tensor, *, clamp: bool = True, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Decoder input latents [N, latent_channels, h, w] (what ``post_quant_linear`` outputs; e.g.
        ``codes_to_latents(codes, tok.quantizer())``, NCHW or channels_last) -> frames [N, 3, h*f, w*f].

        clamp: clamp to [0, 1] as RLVR-World does before its pixel rewards (False: the raw decoder
        output, which is trained towards [0, 1] pixels but not bounded). chunk_size: at most this many
        frames through the decoder at once (None: all). Gradients flow unless called under no_grad.
        """
        check_tensor("latents", latents, dtypes=FLOAT_DTYPES, ndim=4)
        if latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents: expected [N, {self.config.latent_channels}, h, w] (post_quant_linear's output), "
                f"got shape {tuple(latents.shape)}"
            )
        out = torch.cat([self.decoder(x) for x in _chunks(latents, chunk_size)])
        return out.clamp(0.0, 1.0) if clamp else out

    def decode_codes(
        self, codes: torch.Tensor, *, clamp: bool = True, chunk_size: int | None = None
    ) -> torch.Tensor:
        """codes int [N, h, w] in [0, K) -> frames [N, 3, h*f, w*f] (iVideoGPT ``CNNFSQModel256.decode``:
        FSQ ``indices_to_codes``, ``post_quant_linear``, decoder), clamped to [0, 1] unless ``clamp=False``.

        Raises IndexError for codes outside [0, K) (one host sync; ``RLVR_FAST_CHECK_VALUES=0`` skips it).
        """
        self._check_codes(codes)
        outs = [self.decode_latents(self.code_latents(c), clamp=clamp) for c in _chunks(codes, chunk_size)]
        return torch.cat(outs)

    # -- files ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        config=None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        """Load a checkpoint from a local path (nothing is downloaded).

        path: a directory as ``save_pretrained`` writes it (for :class:`CNNFSQTokenizer` also
        iVideoGPT's ``CNNFSQModel256.save_pretrained``): ``config.json`` (optional; defaults to the
        class's default config) and the first of :data:`WEIGHT_FILES` present; or a weight file
        itself (``.safetensors``, or ``.bin``/``.pt``/``.pth`` read with ``torch.load(weights_only=True)``).
        config: overrides ``config.json``. device / dtype: where the module lives (default CPU, float32).

        Old diffusers attention names (``query``/``key``/``value``/``proj_attn``) are renamed as
        diffusers does. Raises FileNotFoundError naming the path and the files looked for, and
        ValueError listing every missing key, unexpected key and wrong shape (or a config.json of
        another model, or one that is not UTF-8 JSON, or sizes past :data:`MAX_CHANNELS` and the other
        bounds, naming the file and the key; or a weight file that cannot be read, naming it) before
        anything is built; then loads with ``strict=True``. Does not touch torch's global random generator.
        """
        p = Path(path)
        if p.is_dir():
            cfg_file = p / "config.json"
            if config is None and cfg_file.is_file():
                config = cls._read_config(cfg_file)
            weights = next((p / name for name in WEIGHT_FILES if (p / name).is_file()), None)
            if weights is None:
                raise FileNotFoundError(
                    f"no weight file in {str(p)!r}: looked for {list(WEIGHT_FILES)} ({cls._file_help})"
                )
        elif p.is_file():
            weights = p
        else:
            raise FileNotFoundError(f"no file or directory at {str(p)!r}: expected {cls._file_help}")
        cfg = config if config is not None else cls._config_class()
        if not isinstance(cfg, cls._config_class):
            raise TypeError(f"config: expected a {cls._config_class.__name__}, got {type(cfg).__name__}")
        sd = rename_deprecated_attention_keys(read_state_dict(weights, cls._file_help))
        check_against_schema(sd, cls._schema(cfg), weights, cls._file_help)
        with torch.device("meta"):  # no random init to throw away, no draw from the global generator
            model = cls(cfg)
        model = model.to_empty(device=device if device is not None else "cpu")
        if dtype is not None:
            model = model.to(dtype=dtype)
        model.load_state_dict(sd, strict=True)
        model.dynamics_quantize.reset_constants()
        return model.eval()

    @classmethod
    def _read_config(cls, path: Path):
        """The config in ``path`` (a ``config.json``); every error names the file."""
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            where = f"{str(path)!r}: not UTF-8 ({e.reason} at byte {e.start})"
            raise ValueError(f"{where}: expected JSON") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r}: invalid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{str(path)!r}: invalid JSON (nested too deep to parse)") from None
        try:
            return cls._config_class.from_dict(d)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{str(path)!r}: {e}") from None

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and the weights (``diffusion_pytorch_model.safetensors`` for
        :class:`CNNFSQTokenizer`, as diffusers names them; ``model.safetensors`` for
        :class:`TinyFSQTokenizer`) into ``directory`` (created if needed), each to a temporary file
        renamed into place. Returns the directory; :meth:`from_pretrained` reads it back (and so does
        iVideoGPT's ``CNNFSQModel256.from_pretrained`` for a :class:`CNNFSQTokenizer` with mid-block
        attention)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with _atomic_path(d / self._weights_name) as tmp:
            save_file(sd, str(tmp), metadata={"format": "pt"})
        with _atomic_path(d / "config.json") as tmp:
            tmp.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return d

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (
            f"levels={list(self.fsq_levels)}, codes={self.num_codes}, downsample={self.downsample_factor}, "
            f"params={n / 1e6:.2f}M"
        )


class CNNFSQTokenizer(_FSQTokenizer):
    """iVideoGPT's per-frame CNN FSQ tokenizer (``CNNFSQModel256``), same state-dict keys, plain torch.

    ``CNNFSQTokenizer()`` is the RLVR-World tokenizer with random weights (PyTorch default inits,
    drawn from torch's global generator): 256x320 frames -> 16x20 codes in [0, 4375).
    :meth:`from_pretrained` loads a real checkpoint. API (shared with :class:`TinyFSQTokenizer`):
    :meth:`encode`, :meth:`decode_codes`, :meth:`decode_latents`, :meth:`quantizer`,
    :meth:`code_latents`, ``forward`` (training pass).

    Submodules: ``encoder`` (:class:`CNNEncoder`), ``quant_linear`` (1x1 conv latent -> D),
    ``dynamics_quantize`` (:class:`FSQ`), ``post_quant_linear`` (1x1 conv D -> latent), ``decoder``
    (:class:`CNNDecoder`); see the module docstring for the tree and :func:`key_schema`.
    """

    def __init__(self, config: CNNFSQConfig | None = None):
        super().__init__()
        cfg = config if config is not None else CNNFSQConfig()
        if not isinstance(cfg, CNNFSQConfig):
            raise TypeError(f"config: expected a CNNFSQConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.encoder = CNNEncoder(cfg)
        self._build_quantizer(cfg)
        self.decoder = CNNDecoder(cfg)

    _config_class = CNNFSQConfig
    _weights_name = "diffusion_pytorch_model.safetensors"
    _file_help = _FILE_HELP

    @classmethod
    def _schema(cls, config: CNNFSQConfig) -> dict[str, tuple[int, ...]]:
        return key_schema(config)


# ----------------------------------------------------------------------------------------------
# A small tokenizer for the built-in 64x64 world
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyFSQConfig:
    """Architecture of a :class:`TinyFSQTokenizer` (defaults: 64x64 frames -> 8x8 codes, 1000 codes).

    Attributes:
        in_channels, out_channels: image channels (3).
        channels: width after each stride-2 convolution; ``len(channels)`` halvings, so the code grid
            is the frame size / ``2 ** len(channels)`` (64 -> 8 for three).
        res_blocks: residual blocks at the code-grid resolution, in the encoder and in the decoder.
        latent_channels: width of the encoder output / decoder input.
        fsq_levels: FSQ levels ([8, 5, 5, 5]: 1000 codes).
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128)
    res_blocks: int = 2
    latent_channels: int = 32
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)

    def __post_init__(self):
        object.__setattr__(self, "channels", _int_tuple("TinyFSQConfig.channels", self.channels))
        object.__setattr__(
            self, "fsq_levels", _int_tuple("TinyFSQConfig.fsq_levels", self.fsq_levels, minimum=2)
        )
        for name in ("in_channels", "out_channels", "latent_channels"):
            _int_tuple(f"TinyFSQConfig.{name}", (getattr(self, name),))
        _int_tuple("TinyFSQConfig.res_blocks", (self.res_blocks,), minimum=0)
        _check_sizes(
            "TinyFSQConfig",
            widths=("in_channels", "out_channels", "latent_channels", "channels"),
            stages="channels",
            blocks="res_blocks",
            values=asdict(self),
        )

    @property
    def downsample_factor(self) -> int:
        """Frame size / code-grid size: ``2 ** len(channels)``."""
        return 2 ** len(self.channels)

    @property
    def num_codes(self) -> int:
        """Codebook size ``prod(fsq_levels)``."""
        return math.prod(self.fsq_levels)

    @classmethod
    def from_dict(cls, d: Mapping) -> TinyFSQConfig:
        """From the ``config.json`` :meth:`TinyFSQTokenizer.save_pretrained` writes (``_class_name``
        ``TinyFSQTokenizer``); unknown keys raise ValueError."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config: expected a mapping (config.json contents), got {type(d).__name__}")
        if d.get("_class_name", "TinyFSQTokenizer") != "TinyFSQTokenizer":
            raise ValueError(f"config: _class_name {d['_class_name']!r} is not TinyFSQTokenizer")
        unknown = sorted(k for k in d if not k.startswith("_") and k not in cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"config: unknown TinyFSQConfig fields {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if not k.startswith("_")}
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """``config.json`` contents."""
        d = {"_class_name": "TinyFSQTokenizer"}
        d.update({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()})
        return d


class _PlainResBlock(nn.Module):
    """``x + conv2(SiLU(conv1(SiLU(x))))``, conv1 3x3, conv2 1x1, no normalisation."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class TinyEncoder(nn.Module):
    """frames [N, 3, H, W] -> [N, latent_channels, H/f, W/f]: ``conv_in`` 3x3, then per width SiLU and a
    4x4 stride-2 conv (``down.<i>``), ``res.<j>`` blocks, SiLU, ``conv_out`` 3x3."""

    def __init__(self, cfg: TinyFSQConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(ch[max(i - 1, 0)], c, 4, stride=2, padding=1) for i, c in enumerate(ch)
        )
        self.res = nn.ModuleList(_PlainResBlock(ch[-1]) for _ in range(cfg.res_blocks))
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for conv in self.down:
            x = conv(F.silu(x))
        for block in self.res:
            x = block(x)
        return self.conv_out(F.silu(x))


class TinyDecoder(nn.Module):
    """latents [N, latent_channels, h, w] -> frames [N, 3, h*f, w*f]: ``conv_in`` 3x3, ``res.<j>``, then
    per width SiLU, nearest 2x and a 3x3 conv (``up.<i>``, widths mirrored), SiLU, ``conv_out`` 3x3."""

    def __init__(self, cfg: TinyFSQConfig):
        super().__init__()
        ch = cfg.channels
        outs = list(reversed((ch[0],) + ch[:-1]))  # (32, 64, 128) -> 64, 32, 32
        ins = [ch[-1]] + outs[:-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.res = nn.ModuleList(_PlainResBlock(ch[-1]) for _ in range(cfg.res_blocks))
        self.up = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(ins, outs))
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.res:
            x = block(x)
        for conv in self.up:
            x = conv(F.interpolate(F.silu(x), scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(x))


class TinyFSQTokenizer(_FSQTokenizer):
    """A small FSQ conv tokenizer for the built-in 64x64 video world (same API as :class:`CNNFSQTokenizer`).

    Default :class:`TinyFSQConfig`: 64x64 frames -> 8x8 codes, FSQ [8, 5, 5, 5] (1000 codes), ~1.0M
    parameters; no normalisation layers (so batch composition never changes a frame's codes), SiLU,
    Kaiming-normal (fan-in) convolutions with zero biases, drawn from torch's global generator, except
    that each residual block's ``conv2`` and the decoder's ``conv_out`` start at zero (identity blocks,
    zero output).
    FSQ and the ``quant_linear`` / ``post_quant_linear`` 1x1 convs are as in iVideoGPT, so
    :meth:`quantizer` folds ``post_quant_linear`` into the code table the same way.

    Train with :func:`train_tokenizer`; save / load with :meth:`save_pretrained` /
    :meth:`from_pretrained` (``config.json`` + ``model.safetensors``). bf16 autocast and
    ``channels_last`` work (plain convolutions; FSQ rounds in float32).
    """

    _config_class = TinyFSQConfig
    _weights_name = "model.safetensors"
    _file_help = "a TinyFSQTokenizer checkpoint (a directory with config.json and model.safetensors)"

    def __init__(self, config: TinyFSQConfig | None = None):
        super().__init__()
        cfg = config if config is not None else TinyFSQConfig()
        if not isinstance(cfg, TinyFSQConfig):
            raise TypeError(f"config: expected a TinyFSQConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.encoder = TinyEncoder(cfg)
        self._build_quantizer(cfg)
        self.decoder = TinyDecoder(cfg)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # start from identity residual blocks and a zero output: without this the first steps' loss
        # reached ~1e3 with the default widths and training was slower
        for m in self.modules():
            if isinstance(m, _PlainResBlock):
                nn.init.zeros_(m.conv2.weight)
        nn.init.zeros_(self.decoder.conv_out.weight)

    @classmethod
    def _schema(cls, config: TinyFSQConfig) -> dict[str, tuple[int, ...]]:
        return tiny_key_schema(config)


def tiny_key_schema(config: TinyFSQConfig | None = None) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a :class:`TinyFSQTokenizer` state dict (built on the meta device)."""
    with torch.device("meta"):
        model = TinyFSQTokenizer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def rename_deprecated_attention_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old diffusers attention keys ``<attn>.query/key/value/proj_attn.*`` to
    ``to_q/to_k/to_v/to_out.0`` for every ``*.mid_block.attentions.<i>`` (diffusers
    ``ModelMixin._fix_state_dict_keys_on_load``); other keys pass through unchanged."""
    out = {}
    for k, v in state_dict.items():
        head, _, tail = k.rpartition(".")  # tail: weight / bias
        path, _, name = head.rpartition(".")
        if ".attentions." in path and name in _DEPRECATED_ATTENTION_NAMES:
            k = f"{path}.{_DEPRECATED_ATTENTION_NAMES[name]}.{tail}"
        out[k] = v
    return out


def _chunks(x: torch.Tensor, chunk_size: int | None) -> list[torch.Tensor]:
    if chunk_size is None:
        return [x]
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    return list(x.split(chunk_size)) if x.shape[0] else [x]


@contextlib.contextmanager
def _atomic_path(final: Path):
    """Yield a temporary path next to ``final``; rename it into place when the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------------------------
# Training the small tokenizer
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train_tokenizer` returns: the trained tokenizer (eval mode) and per-step losses (float)."""

    tokenizer: TinyFSQTokenizer | CNNFSQTokenizer
    losses: list[float] = field(default_factory=list)


def _as_unit_frames(name: str, x) -> torch.Tensor:
    check_tensor(name, x, dtypes=(torch.uint8, *FLOAT_DTYPES), ndim=4)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def train_tokenizer(
    frames: torch.Tensor | Iterable[torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    *,
    tokenizer: TinyFSQTokenizer | CNNFSQTokenizer | None = None,
    config: TinyFSQConfig | CNNFSQConfig | None = None,
    batch_size: int = 16,
    l1_weight: float = 0.0,
    grad_clip: float | None = 1.0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> TrainResult:
    """Train an FSQ tokenizer on frames with ``MSE(recon, x) + l1_weight * L1(recon, x)``.

    The quantizer is iVideoGPT's: ``bound`` then ``round_ste`` (straight-through rounding), no
    commitment loss; Adam (betas 0.9, 0.99), constant ``lr``, gradient-norm clipping at ``grad_clip``.

    Args:
        frames: a tensor [N, 3, H, W] (float in [0, 1] or uint8 in [0, 255]); each step draws
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

    Returns:
        :class:`TrainResult` with the tokenizer (eval mode) and the loss of every step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive float, got {lr!r}")
    if tokenizer is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if config is None or isinstance(config, TinyFSQConfig):
                tokenizer = TinyFSQTokenizer(config)
            elif isinstance(config, CNNFSQConfig):
                tokenizer = CNNFSQTokenizer(config)
            else:
                raise TypeError(
                    f"config: expected a TinyFSQConfig or CNNFSQConfig, got {type(config).__name__}"
                )
    elif not isinstance(tokenizer, _FSQTokenizer):
        raise TypeError(
            f"tokenizer: expected a TinyFSQTokenizer or CNNFSQTokenizer, got {type(tokenizer).__name__}"
        )
    if device is None:
        device = next(tokenizer.parameters()).device
    device = torch.device(device)
    tokenizer.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        tokenizer.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)

    if isinstance(frames, torch.Tensor):
        check_tensor("frames", frames, dtypes=(torch.uint8, *FLOAT_DTYPES), ndim=4)
        n = frames.shape[0]
        if n == 0:
            raise ValueError(f"frames: expected at least one frame, got shape {tuple(frames.shape)}")

        def next_batch(step: int) -> torch.Tensor:  # uint8 converted per batch, not the whole set
            if n <= batch_size:
                return _as_unit_frames("frames", frames)
            return _as_unit_frames("frames", frames[torch.randint(0, n, (batch_size,), generator=gen)])
    else:
        if not isinstance(frames, Iterable):
            raise TypeError(
                f"frames: expected a tensor or an iterable of tensors, got {type(frames).__name__}"
            )
        state = {"it": iter(frames)}

        def next_batch(step: int) -> torch.Tensor:
            try:
                return _as_unit_frames(f"frames (batch {step})", next(state["it"]))
            except StopIteration:
                state["it"] = iter(frames)
                if state["it"] is frames or step == 0:
                    raise ValueError(
                        f"frames: the iterator ran out after {step} batches ({steps} steps asked)"
                    ) from None
                return _as_unit_frames(f"frames (batch {step})", next(state["it"]))

    opt = torch.optim.Adam(tokenizer.parameters(), lr=lr, betas=(0.9, 0.99))
    tokenizer.train()
    losses: list[float] = []
    bar = None
    if progress and steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="tokenizer", unit="step", dynamic_ncols=True, mininterval=0.5)
    every = max(1, steps // 10)
    # on CPU: no more torch threads than idle cores (a busy neighbour stalls every parallel op)
    threads = CpuThreads("auto") if device.type == "cpu" else None
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
                recon, _ = tokenizer(x)
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


__all__ = [
    "FSQ",
    "FSQ_LEVELS_BY_BITS",
    "WEIGHT_FILES",
    "CNNDecoder",
    "CNNEncoder",
    "CNNFSQConfig",
    "CNNFSQTokenizer",
    "TinyDecoder",
    "TinyEncoder",
    "TinyFSQConfig",
    "TinyFSQTokenizer",
    "TrainResult",
    "ivideogpt_config",
    "MAX_BLOCKS",
    "MAX_CHANNELS",
    "MAX_CODES",
    "MAX_FSQ_DIMS",
    "MAX_STAGES",
    "key_schema",
    "rename_deprecated_attention_keys",
    "round_ste",
    "tiny_key_schema",
    "train_tokenizer",
]
