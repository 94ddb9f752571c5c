"""A small FSQ conv tokenizer for the built-in 64x64 video world, with the API of iVideoGPT's tokenizer.

:class:`TinyFSQTokenizer`: 64x64 frames -> an 8x8 code grid, FSQ levels [8, 5, 5, 5] (1000 codes);
trainable on a CPU in minutes with :func:`rlvr_fast.trainer.train_tokenizer.train_tokenizer`. It is
*not* a miniature of the iVideoGPT architecture (:mod:`rlvr_fast.models.cnn_fsq`): a plain conv stack
without normalisation, Kaiming init and zero-initialised residual/output convolutions; why is in
``docs/frame_tokenizers.md``. FSQ and the ``quant_linear`` / ``post_quant_linear`` 1x1 convs are
iVideoGPT's (:class:`~rlvr_fast.models.frame_tokenizer.FSQTokenizer`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rlvr_fast.models.frame_tokenizer import FSQTokenizer
from rlvr_fast.models.fsq import _check_sizes, _int_tuple


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
        object.__setattr__(self, "fsq_levels", _int_tuple("TinyFSQConfig.fsq_levels", self.fsq_levels, minimum=2))
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
        self.down = nn.ModuleList(nn.Conv2d(ch[max(i - 1, 0)], c, 4, stride=2, padding=1) for i, c in enumerate(ch))
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


class TinyFSQTokenizer(FSQTokenizer):
    """A small FSQ conv tokenizer for the built-in 64x64 video world (same API as
    :class:`~rlvr_fast.models.cnn_fsq.CNNFSQTokenizer`).

    Default :class:`TinyFSQConfig`: 64x64 frames -> 8x8 codes, FSQ [8, 5, 5, 5] (1000 codes), ~1.0M
    parameters; no normalisation layers (so batch composition never changes a frame's codes), SiLU,
    Kaiming-normal (fan-in) convolutions with zero biases, drawn from torch's global generator, except
    that each residual block's ``conv2`` and the decoder's ``conv_out`` start at zero (identity blocks,
    zero output).
    FSQ and the ``quant_linear`` / ``post_quant_linear`` 1x1 convs are as in iVideoGPT, so
    :meth:`quantizer` folds ``post_quant_linear`` into the code table the same way.

    Train with :func:`~rlvr_fast.trainer.train_tokenizer.train_tokenizer`; save / load with
    :meth:`save_pretrained` / :meth:`from_pretrained` (``config.json`` + ``model.safetensors``). bf16
    autocast and ``channels_last`` work (plain convolutions; FSQ rounds in float32).
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


__all__ = ["TinyDecoder", "TinyEncoder", "TinyFSQConfig", "TinyFSQTokenizer", "tiny_key_schema"]
