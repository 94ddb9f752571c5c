"""The data side of a video task: clips collected from a world, frames and clips encoded to codes, and the
word-level tokenizer of a :class:`~rlvr_fast.ops.VideoTokenLayout` (:mod:`rlvr_fast.worlds.video_task`)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def layout_tokenizer(layout):
    """A word-level ``PreTrainedTokenizerFast`` whose ids are the layout's: ``v<k>`` for visual code k,
    ``c<k>`` for context code k (``ctx_msp``), ``a<j>`` for action bin j, ``<bos>`` and ``<eos>`` (also pad). It lets a Hugging Face causal LM,
    ``generate`` and checkpoints treat frame tokens like text (``decode`` gives ``"v12 v7 ... <eos>"``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for k in range(layout.visual_vocab):
        vocab[f"v{k}"] = layout.visual_offset + k
    for k in range(layout.context_vocab if layout.context_shape else 0):  # ctx_msp: the context frame's codes
        vocab[f"c{k}"] = layout.context_offset + k
    for j in range(layout.action_bins):
        vocab[f"a{j}"] = layout.action_offset + j
    vocab["<bos>"], vocab["<eos>"] = layout.bos_id, layout.eos_id
    if layout.pad_id not in (layout.bos_id, layout.eos_id):
        vocab["<pad>"] = layout.pad_id
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"layout ids must be contiguous from 0 for a tokenizer, got {layout}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    pad = "<pad>" if "<pad>" in vocab else ("<eos>" if layout.pad_id == layout.eos_id else "<bos>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token=pad,
        unk_token="<eos>",
        clean_up_tokenization_spaces=False,
    )


def _collect(world, split: str, n: int, what: str):
    """(context uint8 [N, C, 3, H, W], target uint8 [N, P, 3, H, W], actions float32 [N, C+P, D], sources)."""
    from tqdm.auto import tqdm

    ctx, tgt, act, src = [], [], [], []
    try:
        desc = f"{what} {split} clips"
        clips = tqdm(world.examples(split, n), total=n, desc=desc, leave=False, mininterval=1.0)
        for ex in clips:
            ctx.append((ex.context * 255).round_().to(torch.uint8))
            tgt.append((ex.target * 255).round_().to(torch.uint8))
            act.append(ex.actions)
            src.append(ex.source)
    except KeyboardInterrupt:  # say what Ctrl-C discards, then let it end the run (exit code 130)
        message = (
            f"interrupted while generating the {what} {split} clips ({len(src)}/{n}): nothing was saved; "
            "the next run starts this step again"
        )
        log.warning(message)
        raise
    if not src:
        raise ValueError(f"the {split} split of {what} is empty")
    return torch.stack(ctx), torch.stack(tgt), torch.stack(act), src


def _encode_frames(tok, frames: torch.Tensor, device, chunk: int = 256) -> torch.Tensor:
    """uint8 [N, T, 3, H, W] -> int64 codes [N, T, h, w] (on the CPU)."""
    n, t = frames.shape[:2]
    flat = frames.flatten(0, 1)
    out = [tok.encode(flat[i : i + chunk].to(device).float().div_(255.0)).cpu() for i in range(0, flat.shape[0], chunk)]
    codes = torch.cat(out)
    return codes.view(n, t, *codes.shape[1:])


def _encode_clips(tok, clips: torch.Tensor, device, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 1 + F, 3, H, W] -> (context codes int64 [N, hc, wc], future codes int64 [N, F, hd, wd]) on the CPU."""
    parts = [tok.encode(clips[i : i + chunk].to(device).float().div_(255.0)) for i in range(0, clips.shape[0], chunk)]
    return torch.cat([c.cpu() for c, _ in parts]), torch.cat([d.cpu() for _, d in parts])
