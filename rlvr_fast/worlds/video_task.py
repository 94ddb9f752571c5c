"""Video world-model tasks for the trainer: frames -> tokens -> prompts, and the pixel reward on rollouts.

:class:`VideoTask` turns a video world (the built-in :class:`SpriteWorld`, loader :func:`sprite_video`,
or RLVR-World's RT-1 ``.npz`` episodes, :class:`OXEEpisodes`, loader :func:`rt1_video`) into a
:class:`~rlvr_fast.task.Task` whose examples are token sequences in iVideoGPT's layout
(:class:`~rlvr_fast.ops.VideoTokenLayout`)::

    prompt    [ctx frame 0 codes][its action bins] ... [ctx frame C-1 codes][its action bins] BOS
    response  [predicted frame codes]([its action bins]) x P   EOS

Action tokens inside a multi-step response are inputs, not predictions: generation forces them to the
clip's actions and the policy loss and MLE loss skip them (``Task.forced_slots``).

Every clip of both splits is held in memory as uint8 frames (64x64: 12 KiB a frame; RT-1 at 256x320:
240 KiB a frame, so ``data.n_train`` caps the memory); clips are not streamed.

The frame tokenizer (a :class:`TinyFSQTokenizer` or iVideoGPT's :class:`CNNFSQTokenizer`) comes from the
caller: a ready one, or a callable given the training split's frames and a fingerprint of the world
that shaped them (the trainer's, :mod:`rlvr_fast.trainer.frame_tokenizer`, loads or trains and caches).

Rewards (:meth:`VideoTask.score`) go through :class:`~rlvr_fast.rewards.video.VideoReward`: token-level
rewards [B, R] against each group's *real* frames (not the tokenizer's reconstruction, as in
RLVR-World), summed into the outcome scores. Held-out metrics: greedy predictions decoded and compared
with the real frames, MSE / MAE /
PSNR / SSIM (LPIPS with its weights) averaged over every clip, a malformed prediction counted with its
code-0 placeholder frames (``invalid_tokens="clamp"``: its clamped frames), plus ``valid`` (share of well-formed predictions) and ``reward``; a world with objects of known colours
(the sprite world) adds ``objects``, the object reward of :class:`~rlvr_fast.rewards.objects.ObjectReward`
(a reward term when ``video.reward_weights`` weights it), and ``sprites``, the share of sprites drawn in
the right place (:func:`~rlvr_fast.worlds.sprite.sprite_accuracy`), which catch a policy that erases
sprites to lower its MAE."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch

from ..task import Generated, Scored, ScoreStats, Task
from . import check_reward_name
from .video_data import _collect, _encode_clips, _encode_frames, layout_tokenizer

log = logging.getLogger(__name__)

ASSET_DIR = "frame_tokenizer"  # inside a model checkpoint: the tokenizer its frame tokens belong to

# a frame tokenizer (an nn.Module with encode / decode_latents / quantizer / save_pretrained), or a callable
# (train clips uint8 [N, C + P, 3, H, W], fingerprint str) -> one
FrameTokenizerSource = Union[torch.nn.Module, Callable[[torch.Tensor, str], torch.nn.Module]]


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
    context_codes: torch.Tensor | None = None  # int64 [N, hc, wc]: ctx_msp only, the reward decodes with them


class VideoTask(Task):
    """A video world-model task (module docstring); built by :func:`sprite_video` / :func:`rt1_video`.

    Attributes: ``layout`` (the token layout), ``tokenizer`` (its word-level tokenizer, the model's),
    ``frame_tokenizer`` (eval mode, on ``device``), ``reward`` (:class:`~rlvr_fast.rewards.video.VideoReward`),
    ``splits`` ({"train", "test"} tensors); ``train`` / ``test`` are :class:`VideoItem` s.

    world / description: the clip source (``examples(split, n)``, ``action_ranges()``) and a text naming
    everything that shaped its clips (part of the tokenizer fingerprint). objects: the world's
    :class:`~rlvr_fast.rewards.objects.ObjectReward` (None: no objects of known colours), for the
    ``objects`` reward term and the ``objects`` / ``sprites`` metrics. reward_options: :meth:`VideoReward.from_tokenizer`'s keyword
    arguments besides ``lpips`` (``invalid_reward``, ``invalid_tokens``, ``aggregate``, ``gamma``,
    ``decode_chunk``).
    preview: held-out clips drawn by :meth:`preview`.
    """

    select_metric = "reward"

    def __init__(
        self,
        name: str,
        world,
        description: str,
        *,
        seed: int,
        n_train: int,
        n_test: int,
        context_frames: int,
        predict_frames: int,
        action_bins: int,
        frame_tokenizer: FrameTokenizerSource,
        reward_weights: dict | None = None,
        lpips_vgg_path: str | None = None,
        lpips_lin_path: str | None = None,
        reward_options: dict | None = None,
        objects=None,
        preview: int = 0,
        device="cpu",
    ):

        self.name = name
        self.device = torch.device(device)
        raw = {s: _collect(world, s, n, name) for s, n in (("train", n_train), ("test", n_test))}
        if isinstance(frame_tokenizer, torch.nn.Module):
            tok = frame_tokenizer.to(self.device)
        else:
            train_frames = torch.cat([raw["train"][0], raw["train"][1]], 1)  # clips [N, C + P, 3, H, W]
            fingerprint = json.dumps({"world": description, "n_train": n_train, "seed": seed}, sort_keys=True)
            tok = frame_tokenizer(train_frames, fingerprint)
            del train_frames
        self.frame_tokenizer = tok.eval()
        self.ctx_msp = hasattr(tok, "context_features")  # the compressive tokenizer: RLVR-World's ctx_msp layout
        ranges = world.action_ranges()
        if self.ctx_msp:
            self.layout = self._encode_ctx_msp(raw, predict_frames, action_bins, ranges)
        else:
            self.layout = self._encode_per_frame(raw, context_frames, predict_frames, action_bins, ranges)
        self.reward = self._make_reward(reward_weights, lpips_vgg_path, lpips_lin_path, objects, reward_options or {})
        self.train, self.test = self.items("train"), self.items("test")
        self.tokenizer = layout_tokenizer(self.layout)
        self.response_length = self.layout.response_length
        self.ignore_eos = not self.layout.eos_after  # ctx_msp: RLVR-World samples with ignore_eos=True
        slots = self.layout.forced_slots()
        self.forced_slots = slots if any(slots) else None
        self.preview_count = preview

    def _encode_per_frame(self, raw, context_frames, predict_frames, action_bins, ranges):
        """iVideoGPT's per-frame layout: every frame tokenized on its own; fills ``self.splits``."""
        from ..ops import VideoTokenLayout
        from .video import discretize_actions

        tok = self.frame_tokenizer
        K = tok.num_codes
        h, w = tok.latent_shape(*raw["train"][1].shape[-2:])
        D, P, bins = raw["train"][2].shape[-1], predict_frames, action_bins
        layout = VideoTokenLayout(
            frames=P,
            frame_shape=(h, w),
            visual_offset=0,
            visual_vocab=K,
            action_tokens_per_frame=D if P > 1 else 0,
            action_offset=K,
            action_bins=bins,
            action_dims=D,
            bos_id=K + bins,
            eos_id=K + bins + 1,
            pad_id=K + bins + 1,
            eos_after=True,
        )
        self.splits: dict[str, _Split] = {}
        for split, (ctx, tgt, act, src) in raw.items():
            with torch.no_grad():
                ctx_codes = _encode_frames(tok, ctx, self.device)
                tgt_codes = _encode_frames(tok, tgt, self.device)
            bins_all = discretize_actions(act, ranges, bins)
            prompts = layout.prompt_ids(ctx_codes, bins_all[:, :context_frames])
            answers = layout.response_ids(tgt_codes, bins_all[:, context_frames:] if P > 1 else None)
            self.splits[split] = _Split(prompts, answers, tgt, ctx if split == "test" else None, src)
        return layout

    def _encode_ctx_msp(self, raw, predict_frames, action_bins, ranges):
        """RLVR-World's ctx_msp layout (:meth:`~rlvr_fast.ops.VideoTokenLayout.ctx_msp`): clips of 1 context
        frame + 1 + P frames; the context and the first frame (with its action) are the prompt, the P
        frames after it (each with its forced action) the response; fills ``self.splits``."""
        from ..ops import VideoTokenLayout
        from .video import discretize_actions

        tok = self.frame_tokenizer
        cfg = tok.config
        D = raw["train"][2].shape[-1]
        layout = VideoTokenLayout.ctx_msp(
            predict_frames,
            context_shape=cfg.context_grid,
            frame_shape=cfg.dynamics_grid,
            visual_vocab=tok.num_codes,
            context_vocab=tok.num_context_codes,
            action_bins=action_bins,
            action_dims=D,
        )
        self.splits = {}
        for split, (ctx, tgt, act, src) in raw.items():
            if ctx.shape[1] != 1 or tgt.shape[1] != predict_frames + 1:
                raise ValueError(
                    f"{self.name}: the compressive tokenizer's layout needs clips of 1 context frame and "
                    f"predict_frames + 1 = {predict_frames + 1} frames, got {ctx.shape[1]} and {tgt.shape[1]}"
                )
            with torch.no_grad():
                ctx_codes, codes = _encode_clips(tok, torch.cat([ctx, tgt], 1), self.device)
            bins = discretize_actions(act, ranges, action_bins)  # [N, 2 + P, D]: a0 (unused), a1, ..., a_{P+1}
            prompts = layout.context_prompt_ids(ctx_codes, codes[:, 0], bins[:, 1])
            answers = layout.response_ids(codes[:, 1:], bins[:, 2:])
            shown = torch.cat([ctx, tgt[:, :1]], 1) if split == "test" else None  # the prompt's frames
            self.splits[split] = _Split(prompts, answers, tgt[:, 1:], shown, src, ctx_codes)
        return layout

    def _make_reward(self, weights, lpips_vgg_path, lpips_lin_path, objects, options: dict):
        from ..rewards.video import VideoReward

        lpips = None
        if lpips_vgg_path or lpips_lin_path:
            from ..models.lpips import LPIPS

            if not (lpips_vgg_path and lpips_lin_path):
                raise ValueError("LPIPS needs both video.lpips_vgg_path and video.lpips_lin_path")
            lpips = LPIPS.from_files(lpips_vgg_path, lpips_lin_path).to(self.device).eval()
        return VideoReward.from_tokenizer(
            self.layout, self.frame_tokenizer, weights, lpips=lpips, objects=objects, **options
        )

    def items(self, split: str) -> list[VideoItem]:
        return [VideoItem(split, i, s) for i, s in enumerate(self.splits[split].sources)]

    def encode(
        self, example: VideoItem, tokenizer: Any = None, *, chat_template: bool = False
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of an item; the ids are the layout's, so ``tokenizer`` and
        ``chat_template`` do not matter."""
        s = self.splits[example.split]
        return s.prompts[example.index].tolist(), s.answers[example.index].tolist()

    def targets(self, items: Sequence[VideoItem], group_size: int = 1) -> torch.Tensor:
        """uint8 [G, P, 3, H, W] real frames of every ``group_size``-th item (one per group), on the device."""
        firsts = items[::group_size]
        split = firsts[0].split
        idx = torch.tensor([it.index for it in firsts])
        return self.splits[split].target[idx].to(self.device)

    def _context(self, items: Sequence[VideoItem], group_size: int = 1) -> torch.Tensor | None:
        """Context codes of every ``group_size``-th item (ctx_msp), on the device; None for the per-frame layout."""
        firsts = items[::group_size]
        codes = self.splits[firsts[0].split].context_codes
        return None if codes is None else codes[torch.tensor([it.index for it in firsts])].to(self.device)

    @torch.no_grad()
    def score(self, rollout: Generated, examples: Sequence[VideoItem], group_size: int) -> Scored:
        """Outcome scores float32 [B] (the token-level rewards summed, as verl does), the token-level rewards
        float32 [B, R] and per-rollout metrics {name: float32 [B]} (incl. ``valid``, ``reward``); the reward
        runs on the device and cannot fail a call (``ScoreStats()``)."""
        target = self.targets(examples, group_size).float().div_(255.0)  # converted once for both metrics
        out = self.reward(
            rollout.responses,
            rollout.present,
            target,
            group_size=group_size,
            context=self._context(examples, group_size),
        )
        metrics = {**out.metrics, "valid": out.valid.float(), "reward": out.scores}
        if self.reward.objects is not None:  # object-level check the pixel metrics cannot make (sprite_accuracy)
            metrics["sprites"] = self.reward.objects.in_place(out.frames, target, group_size=group_size).mean(1)
        return Scored(out.token_rewards.sum(-1), out.token_rewards, metrics, ScoreStats())

    def preview(self, path: Path, stages: dict[str, tuple[list[VideoItem], torch.Tensor, torch.Tensor]]) -> Path | None:
        """``preview.png``: per held-out clip a row of context frames (ctx_msp: the context and the prompt's
        first future frame), the real future frames, then each stage's greedy prediction of them
        (``stages``: {"mle": (items, responses, present), "rlvr": ...})."""
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
        test = self.splits["test"]
        idx = torch.tensor([it.index for it in items])
        # ctx_msp: the prompt holds the context frame and the first future frame; the response predicts t+2..
        shown = ["context", "prompt t+1"] if self.ctx_msp else [f"context {c}" for c in range(test.context.shape[1])]
        first = 2 if self.ctx_msp else 1
        steps = [f"t+{p + first}" for p in range(test.target.shape[1])]
        given = [test.context[idx, c] for c in range(len(shown))]  # each [k, 3, H, W]
        rows = {"real": [test.target[idx, p] for p in range(len(steps))]}
        for stage, (_, resp, present) in stages.items():
            frames, _ = self.reward.decode(resp.to(self.device), present.to(self.device), self._context(items))
            rows[{"mle": "MLE", "rlvr": "MLE+GRPO"}.get(stage, stage)] = list(frames.cpu().unbind(1))
        # one frame predicted: a row per clip (context | real | each stage); several: a block per clip, a
        # row per source (real, then each stage) over the predicted steps, the given frames in its first row
        if len(steps) == 1:
            titles = [*shown, *(f"{name} {steps[0]}" for name in rows)]
            grid = [[(f[i], "") for f in given] + [(r[0][i], "") for r in rows.values()] for i in range(len(items))]
        else:
            titles = [*shown, *steps]
            grid = [
                [(f[i] if j == 0 else None, "") for f in given]
                + [(fr[i], name if p == 0 else "") for p, fr in enumerate(r)]
                for i in range(len(items))
                for j, (name, r) in enumerate(rows.items())
            ]
        fig, axes = plt.subplots(len(grid), len(titles), figsize=(1.5 * len(titles), 1.5 * len(grid)), squeeze=False)
        for i, row in enumerate(grid):
            for j, (fr, label) in enumerate(row):
                ax = axes[i][j]
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(titles[j], fontsize=8)
                if fr is None:
                    ax.axis("off")
                    continue
                img = fr.float() / (255.0 if fr.dtype == torch.uint8 else 1.0)
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                if label:
                    ax.set_ylabel(label, fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def save_assets(self, directory: Path) -> None:
        """Save the frame tokenizer into a model checkpoint (``<dir>/frame_tokenizer``), so ``rlvr-fast eval``
        and ``model.path`` reuse exactly the tokenizer the model was trained with."""
        self.frame_tokenizer.save_pretrained(Path(directory) / ASSET_DIR)


# video.tokenizer names whose tokenizer encodes future frames conditioned on a context frame (ctx_msp layout)
CONTEXT_TOKENIZERS = ("tiny_ctx", "ivideogpt_ctx")


def clip_frames(tokenizer: str, context_frames: int, predict_frames: int) -> int:
    """Future frames a clip needs after its context: P, or 1 + P for a compressive tokenizer (RLVR-World's
    ctx_msp prompt holds the first future frame), which also needs exactly one context frame."""
    if tokenizer not in CONTEXT_TOKENIZERS:
        return predict_frames
    if context_frames != 1:
        raise ValueError(
            f"video.context_frames={context_frames}: video.tokenizer={tokenizer} (RLVR-World's ctx_msp layout) "
            "conditions on exactly 1 context frame; set video.context_frames=1"
        )
    return predict_frames + 1


def sprite_video(
    *,
    seed: int,
    n_train: int,
    n_test: int,
    context_frames: int,
    predict_frames: int,
    n_sprites: int,
    frame_size: Sequence[int],
    action_bins: int,
    frame_tokenizer: FrameTokenizerSource,
    reward_weights: dict | None = None,
    lpips_vgg_path: str | None = None,
    lpips_lin_path: str | None = None,
    invalid_reward: float | None = None,
    invalid_tokens: str = "penalty",
    aggregate: str,
    gamma: float,
    decode_chunk: int | None = None,
    preview: int,
    device="cpu",
    reward: str | None = None,
    tokenizer: str = "tiny",
) -> VideoTask:
    """The ``sprite_video`` task: :class:`~rlvr_fast.worlds.sprite.SpriteWorld` clips of ``frame_size``
    [height, width] with ``n_sprites`` sprites, generated from ``seed`` (:class:`VideoTask` for the rest).
    ``reward`` must be empty: the pixel reward is configured by ``reward_weights`` (which may weight the
    sprites' object term ``objects``, :func:`~rlvr_fast.worlds.sprite.sprite_objects`) and the LPIPS files;
    ``invalid_tokens`` (``penalty`` | ``clamp``, :data:`~rlvr_fast.rewards.video.INVALID_TOKENS`) says what a
    malformed rollout scores (:class:`~rlvr_fast.rewards.video.VideoReward`). ``tokenizer`` (``video.tokenizer``)
    names a compressive one (:data:`CONTEXT_TOKENIZERS`): then clips hold 1 + 1 + P frames (:func:`clip_frames`)."""
    from .sprite import SpriteWorld, SpriteWorldConfig, sprite_objects

    check_reward_name("sprite_video", reward)
    h, w = (int(v) for v in frame_size)
    cfg = SpriteWorldConfig(
        height=h,
        width=w,
        n_sprites=n_sprites,
        seed=seed,
        context_frames=context_frames,
        predict_frames=clip_frames(tokenizer, context_frames, predict_frames),
    )
    return VideoTask(
        "sprite_video",
        SpriteWorld(cfg),
        f"sprite_world({json.dumps(asdict(cfg), sort_keys=True)})",
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        context_frames=context_frames,
        predict_frames=predict_frames,
        action_bins=action_bins,
        frame_tokenizer=frame_tokenizer,
        reward_weights=reward_weights,
        lpips_vgg_path=lpips_vgg_path,
        lpips_lin_path=lpips_lin_path,
        objects=sprite_objects(n_sprites),
        preview=preview,
        reward_options=dict(
            invalid_reward=invalid_reward,
            invalid_tokens=invalid_tokens,
            aggregate=aggregate,
            gamma=gamma,
            decode_chunk=decode_chunk,
        ),
        device=device,
    )


def rt1_video(
    *,
    seed: int,
    n_train: int,
    n_test: int,
    train_path: str,
    context_frames: int,
    predict_frames: int,
    action_bins: int,
    frame_tokenizer: FrameTokenizerSource,
    action_ranges_path: str | None = None,
    reward_weights: dict | None = None,
    lpips_vgg_path: str | None = None,
    lpips_lin_path: str | None = None,
    invalid_reward: float | None = None,
    invalid_tokens: str = "penalty",
    aggregate: str,
    gamma: float,
    decode_chunk: int | None = None,
    preview: int,
    device="cpu",
    reward: str | None = None,
    tokenizer: str = "tiny",
) -> VideoTask:
    """The ``rt1_video`` task: RLVR-World's RT-1 ``.npz`` episodes in the directory ``train_path`` (the
    held-out split inside it), actions scaled by ``action_ranges_path`` (empty: RLVR-World's RT-1 ranges).
    ``reward`` must be empty and ``invalid_tokens`` is the reward's, as for :func:`sprite_video`."""
    from .rt1 import OXEEpisodes

    check_reward_name("rt1_video", reward)
    future = clip_frames(tokenizer, context_frames, predict_frames)
    world = OXEEpisodes(train_path, context_frames, future, action_ranges=action_ranges_path)
    description = (
        f"rt1({os.path.abspath(train_path)}, {len(world.files('train'))} train files, "
        f"C={context_frames}, P={predict_frames})"
    )
    return VideoTask(
        "rt1_video",
        world,
        description,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        context_frames=context_frames,
        predict_frames=predict_frames,
        action_bins=action_bins,
        frame_tokenizer=frame_tokenizer,
        reward_weights=reward_weights,
        lpips_vgg_path=lpips_vgg_path,
        lpips_lin_path=lpips_lin_path,
        preview=preview,
        device=device,
        reward_options=dict(
            invalid_reward=invalid_reward,
            invalid_tokens=invalid_tokens,
            aggregate=aggregate,
            gamma=gamma,
            decode_chunk=decode_chunk,
        ),
    )


__all__ = [
    "ASSET_DIR",
    "CONTEXT_TOKENIZERS",
    "clip_frames",
    "FrameTokenizerSource",
    "VideoItem",
    "VideoTask",
    "layout_tokenizer",
    "rt1_video",
    "sprite_video",
]
