"""The API shared by the FSQ frame tokenizers: encode frames to codes, decode codes (or latents) to frames,
the folded code table, and checkpoint files.

A tokenizer is ``encoder -> quant_linear -> dynamics_quantize (FSQ) -> post_quant_linear -> decoder``
(iVideoGPT's ``CNNFSQModel256`` in ``ivideogpt/tokenizer/vq_model.py``); :class:`FSQTokenizer` holds
everything but the encoder and decoder, which :class:`~rlvr_fast.models.cnn_fsq.CNNFSQTokenizer` and
:class:`~rlvr_fast.models.tiny_fsq.TinyFSQTokenizer` build.

Value ranges: frames go in as float [N, 3, H, W] in [0, 1] (iVideoGPT's loaders divide by 255 and the
tokenizer is trained with an L1/MSE loss against those pixels; its LPIPS term maps ``x * 2 - 1``
itself). The decoder has no output activation, so its raw output is [0, 1]-valued only
approximately; RLVR-World clamps it (``pred = detokenize(...).clamp(0.0, 1.0)`` in
``verl/trainer/ppo/ray_trainer.py``) before every pixel metric. ``decode_codes`` / ``decode_latents``
clamp to [0, 1] by default (``clamp=False`` gives the raw output).

Decoding from generated tokens: ``decode_latents(codes_to_latents(codes, tok.quantizer()))`` equals
``decode_codes(codes)`` (one gather from the folded table [K, latent_channels] replaces FSQ's digit
arithmetic and the ``post_quant_linear`` 1x1 conv; see :mod:`rlvr_fast.ops.video`).

Precision: build in float32 and run under ``torch.autocast(dtype=torch.bfloat16)`` on GPU, as
RLVR-World does; modules accept ``channels_last`` inputs (``model.to(memory_format=torch.channels_last)``
and ``codes_to_latents(..., memory_format=torch.channels_last)``). FSQ rounds in float32 (:mod:`.fsq`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlvr_fast._checks import FLOAT_DTYPES, INT_DTYPES, check_tensor, value_checks_enabled
from rlvr_fast.models._files import check_against_schema, read_state_dict
from rlvr_fast.models.fsq import FSQ
from rlvr_fast.ops.video import Quantizer


# Weight files CNNFSQModel256.save_pretrained may have written, in the order diffusers looks for them,
# then the names a plain torch.save / safetensors export is likely to have.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


class PretrainedFiles:
    """Checkpoint files of a tokenizer module: :meth:`from_pretrained` (strict, schema-checked, local only)
    and :meth:`save_pretrained`, in diffusers' directory format (``config.json`` + weights).

    A subclass (an ``nn.Module``) sets ``config`` and ``_config_class`` (its config dataclass, with
    ``from_dict`` / ``to_dict``), ``_weights_name`` (the weight file :meth:`save_pretrained` writes),
    ``_file_help`` (what a checkpoint is, for error messages) and ``_schema(config)`` (the expected
    ``{key: shape}`` of its state dict).
    """

    config: Any  # an instance of the subclass's _config_class
    _config_class: type
    _weights_name: str
    _file_help: str

    @classmethod
    def _schema(cls, config) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    @staticmethod
    def _rename_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Old state-dict key names -> the current ones before the schema check (none by default)."""
        return state_dict

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

        :class:`~rlvr_fast.models.cnn_fsq.CNNFSQTokenizer` renames old diffusers attention names
        (``query``/``key``/``value``/``proj_attn``) as diffusers does. Raises FileNotFoundError naming
        the path and the files looked for, and ValueError listing every missing key, unexpected key and
        wrong shape (or a config.json of another model, or one that is not UTF-8 JSON, or sizes past
        :data:`~rlvr_fast.models.fsq.MAX_CHANNELS` and the other bounds, naming the file and the key; or
        a weight file that cannot be read, naming it) before anything is built; then loads with
        ``strict=True``. Does not touch torch's global random generator.
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
        sd = cls._rename_keys(read_state_dict(weights, cls._file_help))
        check_against_schema(sd, cls._schema(cfg), weights, cls._file_help)
        with torch.device("meta"):  # no random init to throw away, no draw from the global generator
            model = cls(cfg)
        model = model.to_empty(device=device if device is not None else "cpu")
        if dtype is not None:
            model = model.to(dtype=dtype)
        model.load_state_dict(sd, strict=True)
        for m in model.modules():  # FSQ's level / basis buffers are not in the state dict
            if isinstance(m, FSQ):
                m.reset_constants()
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


class FSQTokenizer(PretrainedFiles, nn.Module):
    """Shared API of the FSQ tokenizers: ``encoder -> quant_linear -> dynamics_quantize (FSQ) ->
    post_quant_linear -> decoder``; subclasses build the five submodules and set ``config`` and the
    :class:`PretrainedFiles` attributes (``_config_class`` also needs the properties ``num_codes`` /
    ``downsample_factor``).
    """

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
        """Frame size / code-grid size (16 for iVideoGPT, 8 for the default
        :class:`~rlvr_fast.models.tiny_fsq.TinyFSQTokenizer`)."""
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
            raise ValueError(f"frames: expected [N, {self.config.in_channels}, H, W], got shape {tuple(frames.shape)}")
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
        """frames [N, 3, H, W] in [0, 1] -> (zhat [N, D, h, w] with straight-through gradients,
        codes int64 [N, h, w])."""
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

    def decode_codes(self, codes: torch.Tensor, *, clamp: bool = True, chunk_size: int | None = None) -> torch.Tensor:
        """codes int [N, h, w] in [0, K) -> frames [N, 3, h*f, w*f] (iVideoGPT ``CNNFSQModel256.decode``:
        FSQ ``indices_to_codes``, ``post_quant_linear``, decoder), clamped to [0, 1] unless ``clamp=False``.

        Raises IndexError for codes outside [0, K) (one host sync; ``RLVR_FAST_CHECK_VALUES=0`` skips it).
        """
        self._check_codes(codes)
        outs = [self.decode_latents(self.code_latents(c), clamp=clamp) for c in _chunks(codes, chunk_size)]
        return torch.cat(outs)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (
            f"levels={list(self.fsq_levels)}, codes={self.num_codes}, downsample={self.downsample_factor}, "
            f"params={n / 1e6:.2f}M"
        )


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


__all__ = ["WEIGHT_FILES", "FSQTokenizer", "PretrainedFiles"]
