"""Video world-model tasks for the trainer: frames -> tokens -> prompts, and the pixel reward on rollouts.

``video_task(data_cfg, video_cfg, ...)`` turns a video world (the built-in :class:`SpriteWorld` or
RLVR-World's RT-1 ``.npz`` episodes, :class:`OXEEpisodes`) into a :class:`~rlvr_fast.worlds.Task` whose
examples are token sequences in iVideoGPT's layout (:class:`~rlvr_fast.ops.VideoTokenLayout`)::

    prompt    [ctx frame 0 codes][its action bins] ... [ctx frame C-1 codes][its action bins] BOS
    response  [predicted frame codes]([its action bins]) x P   EOS

Action tokens inside a multi-step response are inputs, not predictions: generation forces them to the
clip's actions and the policy loss and MLE loss skip them (``Task.forced_slots``).

Every clip of both splits is held in memory as uint8 frames (64x64: 12 KiB a frame; RT-1 at 256x320:
240 KiB a frame, so ``data.n_train`` caps the memory); clips are not streamed.

The frame tokenizer is a local checkpoint (``video.tokenizer_path``: a :class:`TinyFSQTokenizer` or
iVideoGPT's :class:`CNNFSQTokenizer`), or a :class:`TinyFSQTokenizer` trained on the training split's
frames and cached in ``<out_dir>/tokenizer`` with a fingerprint of everything that shaped it (a later
run with the same settings, ``--resume`` and ``eval`` reuse it; other settings retrain it).

Rewards (``Task.score_tokens``) go through :class:`~rlvr_fast.rewards.video.VideoReward`: token-level
rewards [B, R] against each group's *real* frames (not the tokenizer's reconstruction, as in
RLVR-World). Held-out metrics: greedy predictions decoded and compared with the real frames, MSE / MAE /
PSNR / SSIM (LPIPS with its weights) averaged over every clip, a malformed prediction counted with its
code-0 placeholder frames, plus ``valid`` (share of well-formed predictions) and ``reward``; the sprite
world adds ``sprites``, the share of sprites drawn in the right place (:func:`~rlvr_fast.worlds.video.
sprite_accuracy`), which catches a policy that erases sprites to lower its MAE.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import Task

log = logging.getLogger(__name__)

ASSET_DIR = "frame_tokenizer"  # inside a model checkpoint: the tokenizer its frame tokens belong to


class VideoItem(NamedTuple):
    """One example of a video task: row ``index`` of the task's ``split`` tensors; ``source`` for errors."""

    split: str
    index: int
    source: str


@dataclass
class _Split:
    prompts: torch.Tensor  # int64 [N, Lp]
    answers: torch.Tensor  # int64 [N, R]
    target: torch.Tensor  # uint8 [N, P, 3, H, W], the real frames the reward compares with
    context: torch.Tensor | None  # uint8 [N, C, 3, H, W] (held-out split only: previews)
    sources: list[str]


def layout_tokenizer(layout):
    """A word-level ``PreTrainedTokenizerFast`` whose ids are the layout's: ``v<k>`` for visual code k,
    ``a<j>`` for action bin j, ``<bos>`` and ``<eos>`` (also pad). It lets a Hugging Face causal LM,
    ``generate`` and checkpoints treat frame tokens like text (``decode`` gives ``"v12 v7 ... <eos>"``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for k in range(layout.visual_vocab):
        vocab[f"v{k}"] = layout.visual_offset + k
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
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token=pad,
                                   unk_token="<eos>", clean_up_tokenization_spaces=False)  # fmt: skip


def _world(data_cfg, video_cfg, seed: int):
    from .rt1 import OXEEpisodes
    from .sprite import SpriteWorld, SpriteWorldConfig

    if data_cfg.world == "sprite_video":
        h, w = (int(v) for v in video_cfg.frame_size)
        cfg = SpriteWorldConfig(height=h, width=w, n_sprites=video_cfg.n_sprites, seed=seed,
                                context_frames=video_cfg.context_frames, predict_frames=video_cfg.predict_frames)  # fmt: skip
        return SpriteWorld(cfg), f"sprite_world({json.dumps(asdict(cfg), sort_keys=True)})"
    if data_cfg.world == "rt1_video":
        world = OXEEpisodes(data_cfg.train_path, video_cfg.context_frames, video_cfg.predict_frames,
                            action_ranges=video_cfg.action_ranges_path)  # fmt: skip
        files = world.files("train")
        return world, f"rt1({os.path.abspath(data_cfg.train_path)}, {len(files)} train files, C={video_cfg.context_frames}, P={video_cfg.predict_frames})"
    raise ValueError(f"data.world={data_cfg.world!r} is not a video world")


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


def _tokenizer(video_cfg, frames: torch.Tensor, cache: Path | None, fingerprint: str, device, main: bool, sync,
               checkpoint: str | None, seed: int):  # fmt: skip
    """The frame tokenizer: ``video.tokenizer_path``, else the one saved with the model checkpoint being
    loaded, else the cache, else trained (rank 0) and cached."""
    from ..models.cnn_fsq import CNNFSQTokenizer
    from ..models.tiny_fsq import TinyFSQConfig, TinyFSQTokenizer
    from ..trainer.train_tokenizer import train_tokenizer

    cls = TinyFSQTokenizer if video_cfg.tokenizer == "tiny" else CNNFSQTokenizer
    saved = Path(checkpoint) / ASSET_DIR if checkpoint else None
    if video_cfg.tokenizer_path:
        return cls.from_pretrained(video_cfg.tokenizer_path, device=device)
    if saved is not None and saved.is_dir():
        log.info("frame tokenizer: the one saved with the model, %s", saved)
        return _load_saved(saved, device)
    if video_cfg.tokenizer != "tiny":
        raise ValueError("video.tokenizer=ivideogpt needs video.tokenizer_path (a local CNNFSQModel256 checkpoint)")
    stamp = cache / "fingerprint.txt" if cache is not None else None
    if (main or cache is None) and not (stamp is not None and stamp.is_file() and stamp.read_text() == fingerprint):
        cfg = TinyFSQConfig(channels=tuple(video_cfg.tokenizer_channels), res_blocks=video_cfg.tokenizer_res_blocks)
        cuda = torch.device(device).type == "cuda"
        log.info("training the frame tokenizer: %d steps on %d frames", video_cfg.tokenizer_steps, frames.shape[0])
        try:
            res = train_tokenizer(frames, video_cfg.tokenizer_steps, lr=video_cfg.tokenizer_lr, seed=seed, config=cfg,
                                  batch_size=video_cfg.tokenizer_batch_size, device=device,
                                  autocast_dtype=torch.bfloat16 if cuda else None, channels_last=cuda)  # fmt: skip
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
    return TinyFSQTokenizer.from_pretrained(cache, device=device)


def _load_saved(path: Path, device):
    from ..models.cnn_fsq import CNNFSQTokenizer
    from ..models.tiny_fsq import TinyFSQTokenizer

    kind = json.loads((path / "config.json").read_text()).get("_class_name", "")
    cls = TinyFSQTokenizer if kind == "TinyFSQTokenizer" else CNNFSQTokenizer
    return cls.from_pretrained(path, device=device)


def _encode_frames(tok, frames: torch.Tensor, device, chunk: int = 256) -> torch.Tensor:
    """uint8 [N, T, 3, H, W] -> int64 codes [N, T, h, w] (on the CPU)."""
    n, t = frames.shape[:2]
    flat = frames.flatten(0, 1)
    out = [tok.encode(flat[i : i + chunk].to(device).float().div_(255.0)).cpu() for i in range(0, flat.shape[0], chunk)]
    codes = torch.cat(out)
    return codes.view(n, t, *codes.shape[1:])


class VideoTask:
    """Data and hooks of a video world-model task; :meth:`task` gives the trainer's :class:`Task`.

    Attributes: ``layout`` (the token layout), ``tokenizer`` (frame tokenizer, eval mode, on ``device``),
    ``reward`` (:class:`~rlvr_fast.rewards.video.VideoReward`), ``splits`` ({"train", "test"} tensors).
    """

    def __init__(self, data_cfg, video_cfg, *, seed: int = 0, device="cpu", cache_dir: str | os.PathLike | None = None,
                 main: bool = True, sync: Callable[[], Any] = lambda: None, checkpoint: str | None = None):  # fmt: skip
        from ..ops import VideoTokenLayout
        from .video import discretize_actions

        self.device = torch.device(device)
        self.video_cfg = video_cfg
        world, desc = _world(data_cfg, video_cfg, seed)
        raw = {s: _collect(world, s, n, data_cfg.world) for s, n in (("train", data_cfg.n_train), ("test", data_cfg.n_test))}
        train_frames = torch.cat([raw["train"][0], raw["train"][1]], 1).flatten(0, 1)
        tok_cfg = {k: getattr(video_cfg, k) for k in ("tokenizer_steps", "tokenizer_lr", "tokenizer_batch_size",
                                                      "tokenizer_channels", "tokenizer_res_blocks")}  # fmt: skip
        fingerprint = json.dumps({"world": desc, "n_train": data_cfg.n_train, "seed": seed, **tok_cfg}, sort_keys=True)
        cache = Path(cache_dir) if cache_dir is not None else None
        self.tokenizer = _tokenizer(video_cfg, train_frames, cache, fingerprint, self.device, main, sync,
                                    checkpoint, seed).eval()  # fmt: skip
        del train_frames
        K = self.tokenizer.num_codes
        h, w = self.tokenizer.latent_shape(*raw["train"][1].shape[-2:])
        D, P = raw["train"][2].shape[-1], video_cfg.predict_frames
        bins = video_cfg.action_bins
        self.layout = VideoTokenLayout(
            frames=P, frame_shape=(h, w), visual_offset=0, visual_vocab=K, action_tokens_per_frame=D if P > 1 else 0,
            action_offset=K, action_bins=bins, action_dims=D, bos_id=K + bins, eos_id=K + bins + 1,
            pad_id=K + bins + 1, eos_after=True,
        )  # fmt: skip
        ranges = world.action_ranges()
        self.splits: dict[str, _Split] = {}
        C = video_cfg.context_frames
        for split, (ctx, tgt, act, src) in raw.items():
            with torch.no_grad():
                ctx_codes = _encode_frames(self.tokenizer, ctx, self.device)
                tgt_codes = _encode_frames(self.tokenizer, tgt, self.device)
            bins_all = discretize_actions(act, ranges, bins)
            prompts = self.layout.prompt_ids(ctx_codes, bins_all[:, :C])
            answers = self.layout.response_ids(tgt_codes, bins_all[:, C:] if P > 1 else None)
            self.splits[split] = _Split(prompts, answers, tgt, ctx if split == "test" else None, src)
        self.reward = self._make_reward()
        self.n_sprites = video_cfg.n_sprites if data_cfg.world == "sprite_video" else 0
        self.forced_slots = self._forced_slots()

    def _make_reward(self):
        from ..rewards.video import VideoReward

        v = self.video_cfg
        lpips = None
        if v.lpips_vgg_path or v.lpips_lin_path:
            from ..models.lpips import LPIPS

            if not (v.lpips_vgg_path and v.lpips_lin_path):
                raise ValueError("LPIPS needs both video.lpips_vgg_path and video.lpips_lin_path")
            lpips = LPIPS.from_files(v.lpips_vgg_path, v.lpips_lin_path).to(self.device).eval()
        return VideoReward.from_tokenizer(self.layout, self.tokenizer, v.reward_weights, lpips=lpips,
                                          invalid_reward=v.invalid_reward, aggregate=v.aggregate, gamma=v.gamma,
                                          decode_chunk=v.decode_chunk)  # fmt: skip

    def _forced_slots(self) -> list[bool]:
        """Response positions that hold inputs (the action tokens after each predicted frame)."""
        lay = self.layout
        visual = set(lay.slot_positions())
        body = lay.frames * (lay.tokens_per_frame + lay.action_tokens_per_frame)
        return [t < body and t not in visual for t in range(lay.response_length)]

    # -- the Task hooks

    def items(self, split: str) -> list[VideoItem]:
        return [VideoItem(split, i, s) for i, s in enumerate(self.splits[split].sources)]

    def encode(self, item: VideoItem) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of an item."""
        s = self.splits[item.split]
        return s.prompts[item.index].tolist(), s.answers[item.index].tolist()

    def targets(self, items: list[VideoItem], group_size: int = 1) -> torch.Tensor:
        """uint8 [G, P, 3, H, W] real frames of every ``group_size``-th item (one per group), on the device."""
        firsts = items[::group_size]
        split = firsts[0].split
        idx = torch.tensor([it.index for it in firsts])
        return self.splits[split].target[idx].to(self.device)

    @torch.no_grad()
    def score_tokens(self, responses: torch.Tensor, present: torch.Tensor, items: list[VideoItem], group_size: int):
        """Token-level rewards float32 [B, R] and per-rollout metrics {name: float32 [B]} (incl. ``valid``, ``reward``)."""
        target = self.targets(items, group_size).float().div_(255.0)  # converted once for both metrics
        out = self.reward(responses, present, target, group_size=group_size)
        metrics = {**out.metrics, "valid": out.valid.float(), "reward": out.scores}
        if self.n_sprites:  # object-level check the pixel metrics cannot make (see sprite_accuracy)
            from .sprite import sprite_accuracy

            metrics["sprites"] = sprite_accuracy(out.frames, target, self.n_sprites, group_size=group_size)
        return out.token_rewards, metrics

    def preview(self, path: Path, stages: dict[str, tuple[list[VideoItem], torch.Tensor, torch.Tensor]]) -> Path | None:
        """``preview.png``: per held-out clip a row of context frames, real next frames, then each stage's
        greedy prediction (``stages``: {"mle": (items, responses, present), "rlvr": ...})."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed; no preview.png")
            return None
        if not stages:
            return None
        items = next(iter(stages.values()))[0]
        k = len(items)
        cols: list[tuple[str, torch.Tensor]] = []  # (title, frames [k, 3, H, W] uint8 or float)
        test = self.splits["test"]
        idx = torch.tensor([it.index for it in items])
        for c in range(test.context.shape[1]):
            cols.append((f"context {c}", test.context[idx, c]))
        for p in range(test.target.shape[1]):
            cols.append((f"real t+{p + 1}", test.target[idx, p]))
        for stage, (_, resp, present) in stages.items():
            frames, _ = self.reward.decode(resp.to(self.device), present.to(self.device))
            label = {"mle": "MLE", "rlvr": "MLE+GRPO"}.get(stage, stage)
            for p in range(frames.shape[1]):
                cols.append((f"{label} t+{p + 1}", frames[:, p].cpu()))
        fig, axes = plt.subplots(k, len(cols), figsize=(1.6 * len(cols), 1.6 * k), squeeze=False)
        for j, (title, fr) in enumerate(cols):
            for i in range(k):
                img = fr[i].float() / (255.0 if fr.dtype == torch.uint8 else 1.0)
                ax = axes[i][j]
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(title, fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def task(self, name: str) -> Task:
        return Task(
            name=name, train=self.items("train"), test=self.items("test"), metrics=None, default_reward="",
            select_metric="reward", tokenizer=layout_tokenizer(self.layout), encode=self.encode,
            score_tokens=self.score_tokens, response_length=self.layout.response_length,
            forced_slots=self.forced_slots if any(self.forced_slots) else None, preview=self.preview,
            preview_count=self.video_cfg.preview, save_assets=self.save_assets,
        )  # fmt: skip

    def save_assets(self, directory: Path) -> None:
        """Save the frame tokenizer into a model checkpoint (``<dir>/frame_tokenizer``), so ``rlvr-fast eval``
        and ``model.path`` reuse exactly the tokenizer the model was trained with."""
        self.tokenizer.save_pretrained(Path(directory) / ASSET_DIR)


def video_task(data_cfg, video_cfg, *, seed: int = 0, device="cpu", cache_dir=None, main=True, sync=lambda: None,
               checkpoint: str | None = None) -> Task:  # fmt: skip
    """The :class:`Task` of ``data.world`` = ``sprite_video`` or ``rt1_video`` (module docstring).

    data_cfg / video_cfg: the ``data`` and ``video`` config sections. device: where the tokenizer and the
    reward run. cache_dir: where a trained tokenizer is cached (None: not cached). main / sync: rank 0
    trains the tokenizer, ``sync()`` is a barrier. checkpoint: a model directory (``model.path``) whose
    ``frame_tokenizer/`` is used when ``video.tokenizer_path`` is empty.
    """
    return VideoTask(data_cfg, video_cfg, seed=seed, device=device, cache_dir=cache_dir, main=main, sync=sync,
                     checkpoint=checkpoint).task(data_cfg.world)  # fmt: skip
