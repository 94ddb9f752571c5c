"""iVideoGPT's per-frame CNN FSQ tokenizer (``CNNFSQModel256``) in plain torch, with its exact state-dict keys.

RLVR-World's video world model turns every 256x320 frame into a 16x20 grid of codes with this tokenizer
(FSQ levels [7, 5, 5, 5, 5], 4375 codes). :class:`CNNFSQTokenizer` rebuilds it without ``diffusers``:
the module tree, parameter names and shapes are those of

- ``CNNFSQModel256`` (iVideoGPT ``ivideogpt/tokenizer/vq_model.py``; the same file in RLVR-World's
  ``vid_wm/verl/ivideogpt/tokenizer/vq_model.py``), default constructor arguments;
- ``CNNEncoder`` / ``CNNDecoder`` (``ivideogpt/tokenizer/vae.py``), which build on diffusers'
  ``DownEncoderBlock2D``, ``UpDecoderBlock2D``, ``UNetMidBlock2D`` (``models/unets/unet_2d_blocks.py``),
  ``ResnetBlock2D`` (``models/resnet.py``), ``Downsample2D`` / ``Upsample2D``
  (``models/downsampling.py``, ``models/upsampling.py``) and ``Attention`` with ``AttnProcessor2_0``
  (``models/attention_processor.py``);
- ``FSQ`` (:mod:`rlvr_fast.models.fsq`),

so a checkpoint saved by ``CNNFSQModel256.save_pretrained`` (``config.json`` +
``diffusion_pytorch_model.safetensors`` or ``.bin``) loads with a strict state-dict load
(:meth:`CNNFSQTokenizer.from_pretrained`). Nothing is downloaded. :func:`key_schema` writes the key
names and shapes out from the config arithmetic; the module tree they describe, the forward pass, and
the assumptions about diffusers' internals these blocks rest on are in ``docs/frame_tokenizers.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rlvr_fast.models.frame_tokenizer import FSQTokenizer
from rlvr_fast.models.fsq import _check_sizes, _int_tuple, fsq_levels

RESNET_EPS = 1e-6  # resnet_eps / conv_norm_out eps everywhere in CNNEncoder / CNNDecoder
# diffusers' deprecated AttentionBlock names -> current ones (ModelMixin._fix_state_dict_keys_on_load)
_DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


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
        object.__setattr__(self, "fsq_levels", fsq_levels("CNNFSQConfig.fsq_levels", self.fsq_levels))
        object.__setattr__(
            self, "block_out_channels", _int_tuple("CNNFSQConfig.block_out_channels", self.block_out_channels)
        )
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
            _int_tuple(f"CNNFSQConfig.{name}", (getattr(self, name),))
        _check_sizes(
            "CNNFSQConfig",
            widths=("in_channels", "out_channels", "latent_channels", "norm_num_groups", "block_out_channels"),
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


def key_schema(config: CNNFSQConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Expected ``{key: shape}`` of a ``CNNFSQModel256`` state dict (default: iVideoGPT's config).

    Written out from diffusers' naming rules (``docs/frame_tokenizers.md``), independently of the
    modules in this file: ``encoder.*``, ``quant_linear.*`` [D, 64, 1, 1], ``post_quant_linear.*``
    [64, D, 1, 1] (D = len(fsq_levels)), ``decoder.*``. FSQ holds no parameters (its level / basis
    buffers are non-persistent), so there are no ``dynamics_quantize.*`` keys.
    """
    cfg = config if config is not None else CNNFSQConfig()
    s = SchemaBuilder()
    conv, norm, resnet = s.conv, s.norm, s.resnet

    def mid(p: str, c: int) -> None:
        s.mid(p, c, cfg.mid_block_add_attention)

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
    return dict(s)


class SchemaBuilder(dict):
    """``{key: shape}`` written out by diffusers' naming rules, block by block (used by the key schemas)."""

    def conv(self, p: str, cin: int, cout: int, k: int) -> None:
        self[f"{p}.weight"] = (cout, cin, k, k)
        self[f"{p}.bias"] = (cout,)

    def norm(self, p: str, c: int) -> None:
        self[f"{p}.weight"] = (c,)
        self[f"{p}.bias"] = (c,)

    def linear(self, p: str, cin: int, cout: int) -> None:
        self[f"{p}.weight"] = (cout, cin)
        self[f"{p}.bias"] = (cout,)

    def resnet(self, p: str, cin: int, cout: int) -> None:
        """diffusers ``ResnetBlock2D(temb_channels=None)``."""
        self.norm(f"{p}.norm1", cin)
        self.conv(f"{p}.conv1", cin, cout, 3)
        self.norm(f"{p}.norm2", cout)
        self.conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            self.conv(f"{p}.conv_shortcut", cin, cout, 1)

    def mid(self, p: str, c: int, attention: bool) -> None:
        """diffusers ``UNetMidBlock2D(num_layers=1)``: resnets.0, attentions.0 (one head of width c), resnets.1."""
        self.resnet(f"{p}.resnets.0", c, c)
        if attention:
            self.norm(f"{p}.attentions.0.group_norm", c)
            for name in ("to_q", "to_k", "to_v", "to_out.0"):
                self.linear(f"{p}.attentions.0.{name}", c, c)
        self.resnet(f"{p}.resnets.1", c, c)


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
        self.resnets = nn.ModuleList(_ResnetBlock2D(cin if j == 0 else cout, cout, groups) for j in range(layers))
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
        self.resnets = nn.ModuleList(_ResnetBlock2D(cin if j == 0 else cout, cout, groups) for j in range(layers))
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


class CNNFSQTokenizer(FSQTokenizer):
    """iVideoGPT's per-frame CNN FSQ tokenizer (``CNNFSQModel256``), same state-dict keys, plain torch.

    ``CNNFSQTokenizer()`` is the RLVR-World tokenizer with random weights (PyTorch default inits,
    drawn from torch's global generator): 256x320 frames -> 16x20 codes in [0, 4375).
    :meth:`from_pretrained` loads a real checkpoint. API (shared with
    :class:`~rlvr_fast.models.tiny_fsq.TinyFSQTokenizer`):
    :meth:`encode`, :meth:`decode_codes`, :meth:`decode_latents`, :meth:`quantizer`,
    :meth:`code_latents`, ``forward`` (training pass).

    Submodules: ``encoder`` (:class:`CNNEncoder`), ``quant_linear`` (1x1 conv latent -> D),
    ``dynamics_quantize`` (:class:`~rlvr_fast.models.fsq.FSQ`), ``post_quant_linear`` (1x1 conv
    D -> latent), ``decoder`` (:class:`CNNDecoder`); see :func:`key_schema` and
    ``docs/frame_tokenizers.md`` for the tree.
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
    _file_help = (
        "a CNNFSQModel256 state dict (iVideoGPT's per-frame FSQ tokenizer: a directory with config.json and "
        "diffusion_pytorch_model.safetensors/.bin, or the weight file itself)"
    )
    _rename_keys = staticmethod(rename_deprecated_attention_keys)

    @classmethod
    def _schema(cls, config: CNNFSQConfig) -> dict[str, tuple[int, ...]]:
        return key_schema(config)


__all__ = [
    "CNNDecoder",
    "CNNEncoder",
    "CNNFSQConfig",
    "CNNFSQTokenizer",
    "ivideogpt_config",
    "key_schema",
    "rename_deprecated_attention_keys",
]
