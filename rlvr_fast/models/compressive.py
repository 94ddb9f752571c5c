"""iVideoGPT's compressive (context-conditioned) FSQ tokenizer in plain torch, with its exact state-dict keys.

RLVR-World's multi-step video world model (``vid_wm``, ``run_ctx_msp_vgpt.sh``, tokenizer ``ctx_cnn``)
tokenizes a clip with ``CompressiveVQModelFSQ`` (``vid_wm/verl/ivideogpt/ctx_tokenizer/
compressive_vq_model.py``, ``conditional_vae.py``, ``vae.py``; config ``vid_wm/ivideogpt/configs/ctx_vae256/
config.json``; github.com/thuml/RLVR-World commit e1b8b6f):

- the **context** frame is encoded in full: 256x320 -> a 32x40 grid of FSQ codes (1,280 tokens; levels
  [7, 5, 5, 5, 5], 4,375 codes): ``encoder -> quant_conv (1x1) -> quantize``;
- each **future** frame is encoded *conditioned on the context* into 8x10 = 80 codes: ``cond_encoder``
  cross-attends (after each down block at <= ``max_att_resolution``) to the context encoder's raw
  down-block features, its 64 x 32x40 output is cut into 4x4 patches (1,024 values each), projected by
  ``quant_linear`` (Linear 1024 -> 5) and quantised by ``dynamics_quantize``;
- **decoding** a future frame: ``post_quant_linear`` (Linear 5 -> 1024) back to patches, un-patchified,
  then ``cond_decoder``, which cross-attends after its mid block (and after any up block at <=
  ``max_att_resolution``) to the features of the plain ``decoder`` run on the quantised context. Each
  future frame decodes independently from (its 80 codes, the context codes).

Here decoding starts from :func:`~rlvr_fast.ops.codes_to_latents` (one gather from a folded per-code table:
FSQ levels -> ``post_quant_linear``, [K, 1024]; and [K, 64] for the context through ``post_quant_conv``) and
the context is decoded **once per clip**: the queries of every frame predicted from one context (a
group's n rollouts x F frames) attend to that context's keys in one attention call, instead of repeating
the context features for every frame as iVideoGPT does (exact: attention is independent per query).

:func:`ivideogpt_compressive_config` is RLVR-World's RT-1 tokenizer; :func:`tiny_compressive_config` the
same architecture at sprite-world size (64x64 frames, 16x16 context codes, 8x8 = 64 codes per future
frame), trainable on a CPU. The cross-attention position embeddings have one row per feature-map cell
(theirs: ``res * res // 4 * 5``, the same for 4:5 frames), so square frames work too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlvr_fast._checks import FLOAT_DTYPES, INT_DTYPES, check_in_range, check_tensor
from rlvr_fast.models.cnn_fsq import (
    RESNET_EPS,
    CNNEncoder,
    _MidBlock2D,
    _UpDecoderBlock2D,
    rename_deprecated_attention_keys,
)
from rlvr_fast.models.compressive_config import (
    CROSS_HEADS,
    CROSS_NORM_EPS,
    CROSS_NORM_GROUPS,
    CompressiveFSQConfig,
    ivideogpt_compressive_config,
    key_schema,
    tiny_compressive_config,
)
from rlvr_fast.models.frame_tokenizer import PretrainedFiles
from rlvr_fast.models.fsq import FSQ
from rlvr_fast.ops.video import Quantizer, codes_to_latents

# ----------------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------------


class CrossAttentionBlock(nn.Module):
    """iVideoGPT ``CrossAttentionBlock(kv_frames=1)``: ``z = silu(z + MHA(q_norm(z) + q_pos, kv_norm(c) + kv_pos))``.

    ``forward(z, context)``: z [G * r, C, h, w] (r consecutive rows per context), context [G, C, h', w']:
    the r rows' queries attend to their context together (one call over r * h * w queries; exact, since
    attention is independent per query). Attention dropout 0.1 and output dropout 0.1 act in training only.
    """

    def __init__(self, c: int, cells: int):
        super().__init__()
        self.kv_pos_emb = nn.Parameter(torch.zeros(cells, c))
        self.q_pos_emb = nn.Parameter(torch.zeros(cells, c))
        self.att = nn.MultiheadAttention(c, CROSS_HEADS, dropout=0.1, batch_first=True)
        self.kv_norm = nn.GroupNorm(CROSS_NORM_GROUPS, c, eps=CROSS_NORM_EPS)
        self.q_norm = nn.GroupNorm(CROSS_NORM_GROUPS, c, eps=CROSS_NORM_EPS)
        self.resid_dropout = nn.Dropout(0.1)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = z.shape
        g = context.shape[0]
        kv = self.kv_norm(context).flatten(2).transpose(1, 2) + self.kv_pos_emb  # [G, h'w', C]
        q = self.q_norm(z).flatten(2).transpose(1, 2) + self.q_pos_emb  # [N, hw, C]
        o = self.att(q.reshape(g, -1, c), kv, kv, need_weights=False)[0]
        o = self.resid_dropout(o).reshape(n, h * w, c).transpose(1, 2).reshape(n, c, h, w)
        return F.silu(z + o)


class _Encoder(CNNEncoder):
    """diffusers-style ``Encoder`` returning its down-block features; with ``cross`` (cond_encoder), each
    listed down block's output attends to the context encoder's feature of the same block."""

    def __init__(self, cfg: CompressiveFSQConfig, conditioned: bool):
        super().__init__(cfg._cnn(conditioned or cfg.mid_block_add_attention))
        att = cfg.encoder_attention() if conditioned else []
        self._att_at = {i: k for k, (i, _, _) in enumerate(att)}
        if conditioned:
            self.cross_att_blocks = nn.ModuleList(CrossAttentionBlock(c, cells) for _, c, cells in att)

    def forward(self, x: torch.Tensor, context: list[torch.Tensor] | None = None):
        """x [N, 3, H, W] -> (latent [N, latent_channels, h, w], down-block outputs); ``context``: the context
        encoder's down-block outputs [G, ...] (N = G * r)."""
        x = self.conv_in(x)
        feats = []
        for i, block in enumerate(self.down_blocks):
            x = block(x)
            if context is not None and i in self._att_at:
                x = self.cross_att_blocks[self._att_at[i]](x, context[i])
            feats.append(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x))), feats


class _Decoder(nn.Module):
    """diffusers ``Decoder`` (up blocks of ``layers_per_block + 1`` resnets, upsampling in all but the last)
    returning its mid-block and up-block features; with ``conditioned``, iVideoGPT's ``ConditionalDecoder``."""

    def __init__(self, cfg: CompressiveFSQConfig, conditioned: bool):
        super().__init__()
        rev, g, n = list(reversed(cfg.block_out_channels)), cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = _MidBlock2D(rev[0], g, conditioned or cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            _UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, g, upsample=i < n - 1)
            for i in range(n)
        )
        self.conv_norm_out = nn.GroupNorm(g, rev[-1], eps=RESNET_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)
        att = cfg.decoder_attention() if conditioned else []
        self._att_at = {i: k for k, (i, _, _) in enumerate(att)}
        if conditioned:
            self.cross_att_blocks = nn.ModuleList(CrossAttentionBlock(c, cells) for _, c, cells in att)

    def forward(self, z: torch.Tensor, context: list[torch.Tensor] | None = None):
        """z [N, latent_channels, h, w] -> (frames [N, 3, H, W] raw, [mid output, up-block outputs...])."""
        x = self.mid_block(self.conv_in(z))
        if context is not None:
            x = self.cross_att_blocks[self._att_at[-1]](x, context[0])
        feats = [x]
        for i, block in enumerate(self.up_blocks):
            x = block(x)
            if context is not None and i in self._att_at:
                x = self.cross_att_blocks[self._att_at[i]](x, context[i + 1])
            feats.append(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x))), feats


# ----------------------------------------------------------------------------------------------
# the tokenizer
# ----------------------------------------------------------------------------------------------


class CompressiveFSQTokenizer(PretrainedFiles, nn.Module):
    """iVideoGPT's compressive FSQ tokenizer (``CompressiveVQModelFSQ``), same state-dict keys, plain torch.

    ``CompressiveFSQTokenizer()`` is RLVR-World's RT-1 tokenizer with random weights; :meth:`from_pretrained`
    loads a real checkpoint strictly (every missing, unexpected or mis-shaped key listed). API:
    :meth:`encode` (a clip -> context codes + future codes), :meth:`decode` (context codes + future codes
    -> future frames), :meth:`decode_latents` (the same from :func:`codes_to_latents` of the future codes),
    :meth:`quantizer` / :meth:`context_quantizer` (the folded code tables), ``forward`` (training pass).
    Frames are float in [0, 1]; decoded frames are clamped to [0, 1] unless ``clamp=False`` (RLVR-World
    clamps before every metric).
    """

    _config_class = CompressiveFSQConfig
    _weights_name = "diffusion_pytorch_model.safetensors"
    _file_help = (
        "a CompressiveVQModelFSQ state dict (iVideoGPT's compressive tokenizer: a directory with config.json and "
        "diffusion_pytorch_model.safetensors/.bin, or the weight file itself)"
    )
    _rename_keys = staticmethod(rename_deprecated_attention_keys)

    def __init__(self, config: CompressiveFSQConfig | None = None):
        super().__init__()
        cfg = config if config is not None else CompressiveFSQConfig()
        if not isinstance(cfg, CompressiveFSQConfig):
            raise TypeError(f"config: expected a CompressiveFSQConfig, got {type(cfg).__name__}")
        self.config = cfg
        lat, p2 = cfg.latent_channels, cfg.patch_size**2
        self.cond_encoder = _Encoder(cfg, conditioned=True)
        self.encoder = _Encoder(cfg, conditioned=False)
        self.quant_conv = nn.Conv2d(lat, len(cfg.vq_fsq_levels), 1)
        self.quantize = FSQ(cfg.vq_fsq_levels)
        self.post_quant_conv = nn.Conv2d(len(cfg.vq_fsq_levels), lat, 1)
        self.quant_linear = nn.Linear(lat * p2, len(cfg.dyn_fsq_levels))
        self.dynamics_quantize = FSQ(cfg.dyn_fsq_levels)
        self.post_quant_linear = nn.Linear(len(cfg.dyn_fsq_levels), lat * p2)
        self.cond_decoder = _Decoder(cfg, conditioned=True)
        self.decoder = _Decoder(cfg, conditioned=False)
        self._quantizers: dict[str, Quantizer] = {}

    @classmethod
    def _schema(cls, config: CompressiveFSQConfig) -> dict[str, tuple[int, ...]]:
        return key_schema(config)

    @property
    def num_codes(self) -> int:
        """Future-frame codebook size (the generated ids' range): 4,375 for RT-1."""
        return self.config.num_codes

    @property
    def num_context_codes(self) -> int:
        return self.config.num_context_codes

    # -- code tables ------------------------------------------------------------------------------

    def quantizer(self) -> Quantizer:
        """Future-frame code -> patch latent table [K, patch_size**2 * latent_channels] (FSQ levels folded
        with ``post_quant_linear``; feature index ``(dy * p + dx) * latent_channels + c``)."""
        if "dyn" not in self._quantizers:
            self._quantizers["dyn"] = Quantizer.fsq(self.config.dyn_fsq_levels, [self.post_quant_linear])
        return self._quantizers["dyn"]

    def context_quantizer(self) -> Quantizer:
        """Context code -> latent table [K, latent_channels] (FSQ levels folded with ``post_quant_conv``)."""
        if "ctx" not in self._quantizers:
            self._quantizers["ctx"] = Quantizer.fsq(self.config.vq_fsq_levels, [self.post_quant_conv])
        return self._quantizers["ctx"]

    def _patchify(self, d: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, h * w, p * p * C] (iVideoGPT: token ``py * w + px``, feature ``(dy * p + dx) * C + c``)."""
        n, c, hh, ww = d.shape
        p = self.config.patch_size
        x = d.permute(0, 2, 3, 1).reshape(n, hh // p, p, ww // p, p, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, (hh // p) * (ww // p), p * p * c)

    def _unpatchify(self, lat: torch.Tensor) -> torch.Tensor:
        """[N, p * p * C, h, w] (codes_to_latents of future codes) -> [N, C, h * p, w * p]."""
        n, _, h, w = lat.shape
        p, c = self.config.patch_size, self.config.latent_channels
        return lat.reshape(n, p, p, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, h * p, w * p)

    # -- encode -----------------------------------------------------------------------------------

    def _check_clip(self, frames: torch.Tensor) -> None:
        check_tensor("frames", frames, dtypes=FLOAT_DTYPES, ndim=5)
        want = (self.config.in_channels, *self.config.frame_size)
        if frames.shape[1] < 2 or tuple(frames.shape[2:]) != want:
            raise ValueError(
                f"frames: expected [B, 1 + F, {', '.join(map(str, want))}] (one context frame, F >= 1 future "
                f"frames), got {tuple(frames.shape)}"
            )

    def _quantize_clip(self, frames: torch.Tensor):
        """(context latents, zhat of the future patches [B*F, hw, D], context codes, future codes, encoder feats)."""
        b, t = frames.shape[:2]
        ctx = frames[:, 0]
        h, feats = self.encoder(ctx)
        zc, ctx_codes = self.quantize(self.quant_conv(h))
        d, _ = self.cond_encoder(frames[:, 1:].flatten(0, 1), context=feats)
        zd, dyn_codes = self.dynamics_quantize.quantize(self.quant_linear(self._patchify(d)))
        return zc, zd.to(d.dtype), ctx_codes, dyn_codes.view(b, t - 1, *self.config.dynamics_grid)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip's codes (iVideoGPT ``tokenize(pixel_values, context_length=1)``).

        Args:
            frames: float [B, 1 + F, 3, H, W] in [0, 1]: the context frame, then F future frames.

        Returns:
            (context codes int64 [B, hc, wc] in [0, num_context_codes), future codes int64 [B, F, hd, wd]
            in [0, num_codes)); row-major grids (iVideoGPT returns them flattened, int32).
        """
        self._check_clip(frames)
        _, _, ctx_codes, dyn_codes = self._quantize_clip(frames)
        return ctx_codes, dyn_codes

    # -- decode -----------------------------------------------------------------------------------

    def context_features(self, context_codes: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Context codes int [G, hc, wc] -> (the context frame's reconstruction [G, 3, H, W] raw, the plain
        decoder's features the conditioned decoder attends to). Computed once per clip."""
        check_tensor("context_codes", context_codes, dtypes=INT_DTYPES, ndim=3)
        if tuple(context_codes.shape[1:]) != self.config.context_grid:
            raise ValueError(
                f"context_codes: expected [G, {self.config.context_grid}], got {tuple(context_codes.shape)}"
            )
        return self.decoder(_latents(context_codes, self.context_quantizer(), self.post_quant_conv.weight.dtype))

    def decode_latents(self, latents: torch.Tensor, context: list[torch.Tensor], *, clamp: bool = True) -> torch.Tensor:
        """Future frames from ``codes_to_latents(codes, tok.quantizer())`` [G * r, p*p*C, hd, wd] (r frames per
        context, rows grouped by context) and :meth:`context_features`' features -> [G * r, 3, H, W]."""
        check_tensor("latents", latents, dtypes=FLOAT_DTYPES, ndim=4)
        g = context[0].shape[0]
        if latents.shape[0] % max(g, 1) or latents.shape[1] != self.post_quant_linear.out_features:
            raise ValueError(
                f"latents: expected [G * r, {self.post_quant_linear.out_features}, h, w] with G = {g} contexts, "
                f"got {tuple(latents.shape)}"
            )
        out, _ = self.cond_decoder(self._unpatchify(latents), context=context)
        return out.clamp(0.0, 1.0) if clamp else out

    def decode(self, context_codes: torch.Tensor, codes: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Future frames of (context codes int [G, hc, wc], future codes int [G, r, hd, wd]) -> float
        [G, r, 3, H, W] (iVideoGPT ``detokenize(indices_c, indices_d)[:, 1:]``; ids are taken modulo nothing:
        context codes must be un-offset, in [0, num_context_codes))."""
        check_tensor("codes", codes, dtypes=INT_DTYPES, ndim=4)
        check_in_range("codes", codes, self.num_codes, "future-frame codes")
        check_in_range("context_codes", context_codes, self.num_context_codes, "context codes")
        if tuple(codes.shape[2:]) != self.config.dynamics_grid or codes.shape[0] != context_codes.shape[0]:
            raise ValueError(
                f"codes: expected [{context_codes.shape[0]}, r, {self.config.dynamics_grid}] (one row per "
                f"context), got {tuple(codes.shape)}"
            )
        _, feats = self.context_features(context_codes)
        lat = _latents(codes.flatten(0, 1), self.quantizer(), self.post_quant_linear.weight.dtype)
        out = self.decode_latents(lat, feats, clamp=clamp)
        return out.view(*codes.shape[:2], *out.shape[1:])

    def forward(self, frames: torch.Tensor):
        """Training pass (iVideoGPT ``forward``): frames float [B, 1 + F, 3, H, W] in [0, 1] -> (raw
        reconstruction [B, 1 + F, 3, H, W] (context first), context codes [B, hc, wc], future codes
        [B, F, hd, wd]), differentiable through FSQ's straight-through rounding."""
        self._check_clip(frames)
        b, t = frames.shape[:2]
        zc, zd, ctx_codes, dyn_codes = self._quantize_clip(frames)
        ctx_rec, feats = self.decoder(self.post_quant_conv(zc))
        hd, wd = self.config.dynamics_grid
        lat = self.post_quant_linear(zd).transpose(1, 2).reshape(b * (t - 1), -1, hd, wd)
        fut, _ = self.cond_decoder(self._unpatchify(lat), context=feats)
        rec = torch.cat([ctx_rec[:, None], fut.view(b, t - 1, *fut.shape[1:])], 1)
        return rec, ctx_codes, dyn_codes

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        cfg = self.config
        return (
            f"frames={cfg.frame_size}, context codes {cfg.context_grid} of {cfg.num_context_codes}, "
            f"future codes {cfg.dynamics_grid} of {cfg.num_codes}, params={n / 1e6:.2f}M"
        )


def _latents(codes: torch.Tensor, quantizer: Quantizer, dtype: torch.dtype) -> torch.Tensor:
    """:func:`codes_to_latents`; float64 modules (parity tests) gather from a float64 table instead."""
    if dtype != torch.float64:
        return codes_to_latents(codes, quantizer, dtype=dtype)
    check_in_range("codes", codes, quantizer.num_codes)
    return quantizer.table(codes.device, dtype)[codes.long()].permute(0, 3, 1, 2)


__all__ = [
    "CompressiveFSQConfig",
    "CompressiveFSQTokenizer",
    "CrossAttentionBlock",
    "ivideogpt_compressive_config",
    "key_schema",
    "tiny_compressive_config",
]
