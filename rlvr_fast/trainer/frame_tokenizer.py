"""Where a run's frame tokenizer comes from (video worlds): a given checkpoint, the one saved with the model,
the run's cache, or one trained on the training frames.

:func:`frame_tokenizer_source` gives the callable a :class:`~rlvr_fast.worlds.video_task.VideoTask` calls with
its training frames and a fingerprint of the world: ``video.tokenizer_path``, else the ``frame_tokenizer/``
saved in the model checkpoint being loaded (``model.path``), else the cache ``<out_dir>/tokenizer`` when its
fingerprint matches (a later run with the same settings, ``--resume`` and ``eval`` reuse it; other settings
retrain it), else a :class:`TinyFSQTokenizer` (``video.tokenizer=tiny_ctx``: a compressive tokenizer of
:func:`~rlvr_fast.models.compressive.tiny_compressive_config`, trained on clips) trained on rank 0 and cached there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from ..models.cnn_fsq import CNNFSQTokenizer
from ..models.compressive import CompressiveFSQTokenizer
from ..models.tiny_fsq import TinyFSQTokenizer
from ..worlds.video_task import ASSET_DIR, CONTEXT_TOKENIZERS

log = logging.getLogger(__name__)

# video.tokenizer: architecture name -> class (the checkpoint format its from_pretrained reads)
ARCHITECTURES: dict[str, type] = {
    "tiny": TinyFSQTokenizer,
    "ivideogpt": CNNFSQTokenizer,
    "tiny_ctx": CompressiveFSQTokenizer,  # the ctx_msp layout (worlds.video_task.CONTEXT_TOKENIZERS)
    "ivideogpt_ctx": CompressiveFSQTokenizer,
}
_BY_CLASS_NAME = {
    "TinyFSQTokenizer": TinyFSQTokenizer,
    "CompressiveVQModelFSQ": CompressiveFSQTokenizer,
}
# settings of the trained tokenizer, part of the cache fingerprint
TRAINING_KEYS = (
    "tokenizer",
    "tokenizer_steps",
    "tokenizer_lr",
    "tokenizer_batch_size",
    "tokenizer_future_frames",
    "tokenizer_channels",
    "tokenizer_res_blocks",
)


def load_saved(path: Path, device):
    """The frame tokenizer a model checkpoint saved (``<checkpoint>/frame_tokenizer``), of the class its
    ``config.json`` names."""
    kind = json.loads((path / "config.json").read_text()).get("_class_name", "")
    return _BY_CLASS_NAME.get(kind, CNNFSQTokenizer).from_pretrained(path, device=device)


def frame_tokenizer_source(
    video_cfg,
    *,
    device,
    seed: int,
    cache_dir: str | Path | None = None,
    main: bool = True,
    sync: Callable[[], Any] = lambda: None,
    checkpoint: str | None = None,
    cpu_threads: int = 0,
    progress: bool = True,
):
    """``(train clips uint8 [N, T, 3, H, W], fingerprint: str) -> tokenizer`` for a video world (module
    docstring); a per-frame tokenizer trains on the clips' frames, a compressive one on the clips.

    video_cfg: the ``video`` config section. device: where the tokenizer runs. seed: the training seed.
    cache_dir: where a trained tokenizer is cached (None: not cached). main / sync: rank 0 trains it,
    ``sync()`` is a barrier. checkpoint: a model directory whose ``frame_tokenizer/`` is used when
    ``video.tokenizer_path`` is empty. cpu_threads: torch threads for training it on CPU (0: as many as
    are idle; ``trainer.cpu_threads``). progress: a progress bar while it trains (``trainer.progress``).
    """
    cache = Path(cache_dir) if cache_dir is not None else None

    def provide(frames: torch.Tensor, fingerprint: str):
        cls = ARCHITECTURES[video_cfg.tokenizer]
        saved = Path(checkpoint) / ASSET_DIR if checkpoint else None
        if video_cfg.tokenizer_path:
            return cls.from_pretrained(video_cfg.tokenizer_path, device=device)
        if saved is not None and saved.is_dir():
            log.info("frame tokenizer: the one saved with the model, %s", saved)
            return load_saved(saved, device)
        if video_cfg.tokenizer.startswith("ivideogpt"):
            what = "CompressiveVQModelFSQ" if cls is CompressiveFSQTokenizer else "CNNFSQModel256"
            raise ValueError(
                f"video.tokenizer={video_cfg.tokenizer} needs video.tokenizer_path (a local {what} checkpoint)"
            )
        training = {k: getattr(video_cfg, k) for k in TRAINING_KEYS}
        return _trained(
            video_cfg,
            frames if video_cfg.tokenizer in CONTEXT_TOKENIZERS else frames.flatten(0, 1),
            cache,
            json.dumps({**json.loads(fingerprint), **training}, sort_keys=True),
            device,
            main,
            sync,
            seed,
            cpu_threads=cpu_threads,
            progress=progress,
        )

    return provide


def _trained(
    video_cfg,
    frames: torch.Tensor,
    cache: Path | None,
    fingerprint: str,
    device,
    main: bool,
    sync,
    seed: int,
    *,
    cpu_threads: int = 0,
    progress: bool = True,
):
    """The cached tiny tokenizer whose fingerprint matches, else one trained (rank 0) and cached."""
    import dataclasses

    from ..models.compressive import tiny_compressive_config
    from ..models.tiny_fsq import TinyFSQConfig
    from .train_tokenizer import train_tokenizer  # looked up per call: tests replace it

    clips = frames.dim() == 5

    stamp = cache / "fingerprint.txt" if cache is not None else None
    if (main or cache is None) and not (stamp is not None and stamp.is_file() and stamp.read_text() == fingerprint):
        if clips:  # the compressive architecture at the clips' frame size (tokenizer_channels are TinyFSQ's)
            cfg = dataclasses.replace(tiny_compressive_config(), frame_size=tuple(frames.shape[-2:]))
        else:
            cfg = TinyFSQConfig(channels=tuple(video_cfg.tokenizer_channels), res_blocks=video_cfg.tokenizer_res_blocks)
        cuda = torch.device(device).type == "cuda"
        what = "clips" if clips else "frames"
        log.info("training the frame tokenizer: %d steps on %d %s", video_cfg.tokenizer_steps, frames.shape[0], what)
        try:
            res = train_tokenizer(
                frames,
                video_cfg.tokenizer_steps,
                lr=video_cfg.tokenizer_lr,
                seed=seed,
                config=cfg,
                batch_size=video_cfg.tokenizer_batch_size,
                device=device,
                autocast_dtype=torch.bfloat16 if cuda else None,
                channels_last=cuda and not clips,
                cpu_threads=cpu_threads,
                progress=progress,
                future_frames=video_cfg.tokenizer_future_frames,
            )
        except KeyboardInterrupt:  # the tokenizer is cached only once trained: say so, then end the run
            message = (
                f"interrupted while training the frame tokenizer ({video_cfg.tokenizer_steps} steps): "
                "nothing was saved; the next run trains it again from step 0"
            )
            log.warning(message)
            raise
        log.info("tokenizer trained: final reconstruction MSE %.5f", res.losses[-1] if res.losses else float("nan"))
        if cache is None:
            return res.tokenizer.to(memory_format=torch.contiguous_format)
        res.tokenizer.to(memory_format=torch.contiguous_format).save_pretrained(cache)
        stamp.write_text(fingerprint)
    sync()  # other ranks wait for rank 0's tokenizer
    return (CompressiveFSQTokenizer if clips else TinyFSQTokenizer).from_pretrained(cache, device=device)


__all__ = ["ARCHITECTURES", "frame_tokenizer_source", "load_saved"]
