"""Configuration and state-dict key schema of iVideoGPT's compressive tokenizer (:mod:`rlvr_fast.models.compressive`).

:class:`CompressiveFSQConfig` reads and writes ``CompressiveVQModelFSQ``'s ``config.json``;
:func:`key_schema` writes out its state-dict keys and shapes from the config arithmetic alone (506
tensors, 129,448,016 parameters for RLVR-World's RT-1 tokenizer, ``ctx_vae256/config.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from rlvr_fast.models.cnn_fsq import CNNFSQConfig, SchemaBuilder
from rlvr_fast.models.fsq import _check_sizes, _int_tuple, fsq_levels

CROSS_HEADS = 4  # CrossAttentionBlock(num_head=4): not a config argument in iVideoGPT
CROSS_NORM_GROUPS = 32  # CrossAttentionBlock(norm_group=32): fixed, whatever norm_num_groups is
CROSS_NORM_EPS = 1e-5  # its GroupNorms use torch's default eps, unlike the diffusers blocks (1e-6)
# config.json keys iVideoGPT writes but that do not shape the modules
_IGNORED_KEYS = {"lookup_from_codebook", "force_upcast", "sample_size", "scaling_factor", "norm_type", "act_fn"}


@dataclass(frozen=True)
class CompressiveFSQConfig:
    """Architecture of a :class:`CompressiveFSQTokenizer`; defaults: RLVR-World's RT-1 tokenizer
    (``ctx_vae256/config.json``: 256x320 frames, 32x40 context codes, 8x10 future codes, 4,375 codes each).

    Attributes:
        in_channels, out_channels: image channels (3).
        block_out_channels: down-block widths (the decoders mirror them); ``len - 1`` stride-2 downsamples.
        layers_per_block: resnets per down block (up blocks have one more, as diffusers' ``Decoder``).
        latent_channels: encoder output / decoder input width (64).
        norm_num_groups: groups of every GroupNorm (32).
        vq_fsq_levels / dyn_fsq_levels: FSQ levels of the context / future-frame codes (an int is looked
            up like iVideoGPT's ``get_fsq_levels``: 12 -> [7, 5, 5, 5, 5]).
        context_length: context frames (1: RLVR-World; other values are not supported).
        frame_size: (H, W) of the frames; iVideoGPT's ``resolution`` is H (with W = H * 5 / 4).
        max_att_resolution: cross-attention after every block whose output height is at most this.
        patch_size: future-frame latents are cut into ``patch_size`` x ``patch_size`` patches, one code each.
        mid_block_add_attention: mid-block attention in the plain ``encoder`` / ``decoder`` (the
            conditioned ones always have it).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 2
    latent_channels: int = 64
    norm_num_groups: int = 32
    vq_fsq_levels: tuple[int, ...] = (7, 5, 5, 5, 5)
    dyn_fsq_levels: tuple[int, ...] = (7, 5, 5, 5, 5)
    context_length: int = 1
    frame_size: tuple[int, int] = (256, 320)
    max_att_resolution: int = 32
    patch_size: int = 4
    mid_block_add_attention: bool = False

    def __post_init__(self):
        for name in ("vq_fsq_levels", "dyn_fsq_levels"):
            object.__setattr__(self, name, fsq_levels(f"CompressiveFSQConfig.{name}", getattr(self, name)))
        for name in ("block_out_channels", "frame_size"):
            object.__setattr__(self, name, _int_tuple(f"CompressiveFSQConfig.{name}", getattr(self, name)))
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
            _int_tuple(f"CompressiveFSQConfig.{name}", (getattr(self, name),))
        for name in ("max_att_resolution", "patch_size"):
            _int_tuple(f"CompressiveFSQConfig.{name}", (getattr(self, name),))
        widths = ("in_channels", "out_channels", "latent_channels", "norm_num_groups", "block_out_channels")
        for levels in (self.vq_fsq_levels, self.dyn_fsq_levels):  # _check_sizes bounds one "fsq_levels" at a time
            values = {**asdict(self), "fsq_levels": levels}
            _check_sizes(
                "CompressiveFSQConfig",
                widths=widths,
                stages="block_out_channels",
                blocks="layers_per_block",
                values=values,
            )
        if self.context_length != 1:
            raise ValueError(
                f"CompressiveFSQConfig.context_length: only 1 context frame is supported (RLVR-World's RT-1 "
                f"tokenizer), got {self.context_length}"
            )
        if len(self.frame_size) != 2:
            raise ValueError(f"CompressiveFSQConfig.frame_size: expected (H, W), got {self.frame_size}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups or c % CROSS_NORM_GROUPS]
        if bad:
            raise ValueError(
                f"CompressiveFSQConfig: every block width must be a multiple of norm_num_groups="
                f"{self.norm_num_groups} and of {CROSS_NORM_GROUPS} (the cross-attention GroupNorms), "
                f"got block_out_channels={self.block_out_channels}"
            )
        f, p = self.downsample_factor, self.patch_size
        if any(s % (f * p) for s in self.frame_size):
            raise ValueError(
                f"CompressiveFSQConfig.frame_size: H and W must be multiples of downsample x patch_size = {f * p}, "
                f"got {self.frame_size}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def context_grid(self) -> tuple[int, int]:
        """(h, w) of a context frame's codes: frame size / downsample factor (32x40 for RT-1)."""
        return self.frame_size[0] // self.downsample_factor, self.frame_size[1] // self.downsample_factor

    @property
    def dynamics_grid(self) -> tuple[int, int]:
        """(h, w) of a future frame's codes: the context grid / patch_size (8x10 for RT-1)."""
        h, w = self.context_grid
        return h // self.patch_size, w // self.patch_size

    @property
    def num_codes(self) -> int:
        """Future-frame (dynamics) codebook size, prod(dyn_fsq_levels): the ids a policy generates."""
        return math.prod(self.dyn_fsq_levels)

    @property
    def num_context_codes(self) -> int:
        return math.prod(self.vq_fsq_levels)

    def encoder_attention(self) -> list[tuple[int, int, int]]:
        """(down block index, width, cells) of each ``cond_encoder`` cross-attention block."""
        h, w = self.frame_size
        out, n = [], len(self.block_out_channels)
        for i, c in enumerate(self.block_out_channels):
            if i < n - 1:
                h, w = h // 2, w // 2
            if h <= self.max_att_resolution:
                out.append((i, c, h * w))
        return out

    def decoder_attention(self) -> list[tuple[int, int, int]]:
        """(up block index, -1 = after the mid block; width; cells) of each ``cond_decoder`` cross-attention block."""
        h, w = self.context_grid
        rev = list(reversed(self.block_out_channels))
        out, n = [(-1, rev[0], h * w)], len(rev)
        for i, c in enumerate(rev):
            if i < n - 1:
                h, w = h * 2, w * 2
            if h <= self.max_att_resolution:
                out.append((i, c, h * w))
        return out

    def _cnn(self, mid_attention: bool) -> CNNFSQConfig:
        return CNNFSQConfig(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            mid_block_add_attention=mid_attention,
        )

    @classmethod
    def from_dict(cls, d: Mapping) -> CompressiveFSQConfig:
        """From ``CompressiveVQModelFSQ``'s ``config.json`` (``_class_name`` ``CompressiveVQModelFSQ``, or
        ``VQModel`` as in their ``ctx_vae256`` file). ``resolution`` R gives ``frame_size`` (R, R * 5 / 4)
        unless ``frame_size`` is given; block types must be all ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``;
        unknown keys raise ValueError naming them."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config: expected a mapping (config.json contents), got {type(d).__name__}")
        name = d.get("_class_name")
        if name is not None and name not in ("CompressiveVQModelFSQ", "VQModel"):
            raise ValueError(
                f"config: _class_name {name!r} is not CompressiveVQModelFSQ (iVideoGPT's compressive tokenizer)"
            )
        fields = set(cls.__dataclass_fields__)
        known = fields | _IGNORED_KEYS | {"down_block_types", "up_block_types", "resolution"}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"config: unknown CompressiveVQModelFSQ arguments {unknown}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields}
        if "frame_size" not in kwargs and "resolution" in d:
            r = d["resolution"]
            if isinstance(r, bool) or not isinstance(r, int) or r <= 0 or r % 4:
                raise ValueError(f"config: resolution must be a positive multiple of 4, got {r!r}")
            kwargs["frame_size"] = (r, r * 5 // 4)
        cfg = cls(**kwargs)
        n = len(cfg.block_out_channels)
        for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if key in d and list(d[key]) != [want] * n:
                raise ValueError(f"config: {key} must be {n} x {want!r} (one per width), got {list(d[key])}")
        if d.get("act_fn", "silu") not in ("silu", "swish") or d.get("norm_type", "group") != "group":
            raise ValueError("config: only act_fn 'silu' and norm_type 'group' are supported")
        return cfg

    def to_dict(self) -> dict:
        n = len(self.block_out_channels)
        d = {"_class_name": "CompressiveVQModelFSQ", **asdict(self)}
        for k in ("block_out_channels", "vq_fsq_levels", "dyn_fsq_levels", "frame_size"):
            d[k] = list(d[k])
        d.update(down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n)
        d.update(resolution=self.frame_size[0], act_fn="silu", norm_type="group")
        return d


def ivideogpt_compressive_config() -> CompressiveFSQConfig:
    """RLVR-World's RT-1 multi-step tokenizer (``ctx_vae256``): 256x320 -> 32x40 context / 8x10 future codes."""
    return CompressiveFSQConfig()


def tiny_compressive_config() -> CompressiveFSQConfig:
    """The same architecture for the 64x64 sprite world: 16x16 context codes, 8x8 = 64 codes per future
    frame, FSQ [8, 5, 5, 5] (1,000 codes); ~1M parameters, trainable on 2 CPU cores in minutes."""
    return CompressiveFSQConfig(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        vq_fsq_levels=(8, 5, 5, 5),
        dyn_fsq_levels=(8, 5, 5, 5),
        frame_size=(64, 64),
        max_att_resolution=16,
        patch_size=2,
    )


def key_schema(config: CompressiveFSQConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Expected ``{key: shape}`` of a ``CompressiveVQModelFSQ`` state dict, written out from the config
    arithmetic independently of the modules below (506 tensors for the RT-1 config). FSQ holds no
    persistent tensors, so there are no ``quantize.*`` / ``dynamics_quantize.*`` keys."""
    cfg = config if config is not None else CompressiveFSQConfig()
    s = SchemaBuilder()
    ch, n, layers, lat = cfg.block_out_channels, len(cfg.block_out_channels), cfg.layers_per_block, cfg.latent_channels

    def cross(p: str, c: int, cells: int) -> None:
        s[f"{p}.kv_pos_emb"] = (cells, c)
        s[f"{p}.q_pos_emb"] = (cells, c)
        s[f"{p}.att.in_proj_weight"] = (3 * c, c)
        s[f"{p}.att.in_proj_bias"] = (3 * c,)
        s.linear(f"{p}.att.out_proj", c, c)
        s.norm(f"{p}.kv_norm", c)
        s.norm(f"{p}.q_norm", c)

    for x, attention in (("cond_encoder", True), ("encoder", cfg.mid_block_add_attention)):
        s.conv(f"{x}.conv_in", cfg.in_channels, ch[0], 3)
        for i, out in enumerate(ch):
            for j in range(layers):
                s.resnet(f"{x}.down_blocks.{i}.resnets.{j}", ch[max(i - 1, 0)] if j == 0 else out, out)
            if i < n - 1:
                s.conv(f"{x}.down_blocks.{i}.downsamplers.0.conv", out, out, 3)
        s.mid(f"{x}.mid_block", ch[-1], attention)
        s.norm(f"{x}.conv_norm_out", ch[-1])
        s.conv(f"{x}.conv_out", ch[-1], lat, 3)
        if x == "cond_encoder":
            for k, (_, c, cells) in enumerate(cfg.encoder_attention()):
                cross(f"{x}.cross_att_blocks.{k}", c, cells)
    dc, dd, p2 = len(cfg.vq_fsq_levels), len(cfg.dyn_fsq_levels), cfg.patch_size**2
    s.conv("quant_conv", lat, dc, 1)
    s.conv("post_quant_conv", dc, lat, 1)
    s.linear("quant_linear", lat * p2, dd)
    s.linear("post_quant_linear", dd, lat * p2)
    rev = list(reversed(ch))
    for x, attention in (("cond_decoder", True), ("decoder", cfg.mid_block_add_attention)):
        s.conv(f"{x}.conv_in", lat, rev[0], 3)
        s.mid(f"{x}.mid_block", rev[0], attention)
        for i in range(n):
            cin, cout = rev[max(i - 1, 0)], rev[i]
            for j in range(layers + 1):
                s.resnet(f"{x}.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
            if i < n - 1:
                s.conv(f"{x}.up_blocks.{i}.upsamplers.0.conv", cout, cout, 3)
        s.norm(f"{x}.conv_norm_out", rev[-1])
        s.conv(f"{x}.conv_out", rev[-1], cfg.out_channels, 3)
        if x == "cond_decoder":
            for k, (_, c, cells) in enumerate(cfg.decoder_attention()):
                cross(f"{x}.cross_att_blocks.{k}", c, cells)
    return dict(s)


__all__ = [
    "CROSS_HEADS",
    "CROSS_NORM_EPS",
    "CROSS_NORM_GROUPS",
    "CompressiveFSQConfig",
    "ivideogpt_compressive_config",
    "key_schema",
    "tiny_compressive_config",
]
