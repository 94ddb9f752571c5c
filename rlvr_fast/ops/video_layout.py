"""Where a video world model's tokens sit: :class:`VideoTokenLayout` (iVideoGPT / RLVR-World id ranges,
prompts, responses, the visual slots :func:`~rlvr_fast.ops.unpack_video_tokens` reads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks as C


@dataclass(frozen=True)
class VideoTokenLayout:
    """Where a response's visual tokens are, and the id ranges of the token vocabulary.

    Defaults are RLVR-World / iVideoGPT single-step: visual ids 0..4374 (FSQ levels [7,5,5,5,5] give
    4375 codes), 256 action-bin ids 4375..4630 (each of the 13 action dimensions is one token taking
    one of those bins), BOS 4631, EOS = pad 4632; a frame is 16 x 20 = 320 visual tokens; the
    response is the predicted frame's 320 tokens then EOS.

    Multi-step responses (RLVR-World ``msp_reward_fn``) hold ``frames`` predicted frames, each as
    ``tokens_per_frame`` visual tokens followed by ``action_tokens_per_frame`` action tokens, e.g.
    ``VideoTokenLayout(frames=4, frame_shape=(8, 10), action_tokens_per_frame=13, eos_after=False)``.

    RLVR-World's multi-step layout with the compressive tokenizer (``ctx_msp``, :meth:`ctx_msp`) adds a
    context frame tokenized in full with its own id range (``context_offset``, ``context_shape``), has no
    BOS and no EOS, and starts the prompt with the context then the first future frame::

        prompt    [context codes + 4375: 32x40] [frame 1 codes: 8x10] [its 13 action bins + 8750]
        response  ([frame t codes: 8x10] [its 13 action bins + 8750]) for t = 2..8        (7 x 93 = 651)

    Attributes:
        frames: predicted frames per response.
        frame_shape: (h, w) of the latent token grid of one frame.
        visual_offset, visual_vocab: visual ids are ``visual_offset .. visual_offset + visual_vocab - 1``.
        action_tokens_per_frame: action tokens after each frame's visual tokens in the response.
        action_offset, action_bins: action ids are ``action_offset .. action_offset + action_bins - 1``.
        action_dims: dimensions of the action vector (one token each in the prompt layout).
        bos_id, eos_id, pad_id: special ids.
        eos_after: whether the response ends with ``eos_id`` after the last frame.
        context_shape: (h, w) of a context frame's codes when the context is tokenized apart (``ctx_msp``:
            :meth:`context_prompt_ids`); None: context frames use the ``frame_shape`` codes (:meth:`prompt_ids`).
        context_offset, context_vocab: context ids are ``context_offset .. context_offset + context_vocab - 1``
            (``context_vocab`` 0: ``visual_vocab``); only with ``context_shape``.
    """

    frames: int = 1
    frame_shape: tuple[int, int] = (16, 20)
    visual_offset: int = 0
    visual_vocab: int = 4375
    action_tokens_per_frame: int = 0
    action_offset: int = 4375
    action_bins: int = 256
    action_dims: int = 13
    bos_id: int = 4631
    eos_id: int = 4632
    pad_id: int = 4632
    eos_after: bool = True
    context_shape: tuple[int, int] | None = None
    context_offset: int = 0
    context_vocab: int = 0

    @classmethod
    def ctx_msp(
        cls,
        frames: int = 7,
        *,
        context_shape: tuple[int, int] = (32, 40),
        frame_shape: tuple[int, int] = (8, 10),
        visual_vocab: int = 4375,
        context_vocab: int | None = None,
        action_bins: int = 256,
        action_dims: int = 13,
    ) -> VideoTokenLayout:
        """RLVR-World's ``ctx_msp`` layout (``vid_wm/verl/ivideogpt/processor.py``
        ``ContextMultiStepPredictionProcessor``, ``run_ctx_msp_vgpt.sh``; e1b8b6f): future-frame codes
        ``0 .. V-1``, context codes ``V .. V + Vc - 1``, action bins ``V + Vc .. V + Vc + bins - 1``, BOS
        and EOS = pad after them (unused in the sequences: 9006 / 9007 for RT-1, vocabulary 9008); each of
        the ``frames`` predicted frames is its codes then its ``action_dims`` forced action tokens, no EOS."""
        vc = visual_vocab if context_vocab is None else context_vocab
        bos = visual_vocab + vc + action_bins
        return cls(
            frames=frames,
            frame_shape=frame_shape,
            visual_offset=0,
            visual_vocab=visual_vocab,
            action_tokens_per_frame=action_dims,
            action_offset=visual_vocab + vc,
            action_bins=action_bins,
            action_dims=action_dims,
            bos_id=bos,
            eos_id=bos + 1,
            pad_id=bos + 1,
            eos_after=False,
            context_shape=context_shape,
            context_offset=visual_vocab,
            context_vocab=vc,
        )

    def __post_init__(self):
        if not isinstance(self.frame_shape, (tuple, list)):
            raise ValueError(f"VideoTokenLayout.frame_shape: expected (h, w), got {self.frame_shape!r}")
        object.__setattr__(self, "frame_shape", tuple(int(s) for s in self.frame_shape))
        for name in ("frames", "visual_vocab", "action_bins", "action_dims"):
            C.check_positive(f"VideoTokenLayout.{name}", getattr(self, name))
        if len(self.frame_shape) != 2 or min(self.frame_shape) < 1:
            raise ValueError(f"VideoTokenLayout.frame_shape: expected (h, w) >= 1, got {self.frame_shape}")
        C.check_positive("VideoTokenLayout.action_tokens_per_frame", self.action_tokens_per_frame, allow_zero=True)
        visual = range(self.visual_offset, self.visual_offset + self.visual_vocab)
        actions = range(self.action_offset, self.action_offset + self.action_bins)
        if self.visual_offset < 0 or (visual.start < actions.stop and actions.start < visual.stop):
            raise ValueError(f"VideoTokenLayout: visual ids {visual} and action ids {actions} must be disjoint, >= 0")
        ranges = [visual, actions]
        if self.context_shape is not None:
            if not isinstance(self.context_shape, (tuple, list)) or len(self.context_shape) != 2:
                raise ValueError(f"VideoTokenLayout.context_shape: expected (h, w), got {self.context_shape!r}")
            object.__setattr__(self, "context_shape", tuple(int(v) for v in self.context_shape))
            if min(self.context_shape) < 1:
                raise ValueError(f"VideoTokenLayout.context_shape: expected (h, w) >= 1, got {self.context_shape}")
            if not self.context_vocab:
                object.__setattr__(self, "context_vocab", self.visual_vocab)
            C.check_positive("VideoTokenLayout.context_vocab", self.context_vocab)
            context = range(self.context_offset, self.context_offset + self.context_vocab)
            if self.context_offset < 0 or any(r.start < context.stop and context.start < r.stop for r in ranges):
                raise ValueError(
                    f"VideoTokenLayout: context ids {context} must be >= 0 and disjoint from visual ids {visual} "
                    f"and action ids {actions}"
                )
            ranges.append(context)
            if self.eos_after:
                raise ValueError("VideoTokenLayout: the ctx_msp layout (context_shape set) has no EOS: eos_after=False")
        elif self.context_offset or self.context_vocab:
            raise ValueError("VideoTokenLayout: context_offset / context_vocab need context_shape")
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if value < 0 or any(value in r for r in ranges):
                raise ValueError(f"VideoTokenLayout.{name}={value} lies inside the visual, action or context id range")

    @property
    def tokens_per_frame(self) -> int:
        return self.frame_shape[0] * self.frame_shape[1]

    @property
    def response_length(self) -> int:
        """Tokens in a complete response (frames, their action tokens, and EOS when ``eos_after``)."""
        return self.frames * (self.tokens_per_frame + self.action_tokens_per_frame) + int(self.eos_after)

    @property
    def context_tokens(self) -> int:
        """Tokens of the context frame in a ``ctx_msp`` prompt (0 without ``context_shape``)."""
        return self.context_shape[0] * self.context_shape[1] if self.context_shape else 0

    @property
    def vocab_size(self) -> int:
        return max(
            self.visual_offset + self.visual_vocab,
            self.action_offset + self.action_bins,
            self.context_offset + self.context_vocab,
            self.bos_id + 1,
            self.eos_id + 1,
            self.pad_id + 1,
        )

    def prompt_ids(self, context_codes: torch.Tensor, context_actions: torch.Tensor) -> torch.Tensor:
        """The prompt of a prediction: each context frame's visual tokens, then its action tokens, then BOS.

        Args:
            context_codes: int [B, Fc, h, w] frame codes in [0, visual_vocab) (the tokenizer's output).
            context_actions: int [B, Fc, action_dims] action bins in [0, action_bins).

        Returns:
            int64 [B, Fc * (h * w + action_dims) + 1]. Source: iVideoGPT's ``SimpleVideoProcessor``
            (history = frame tokens + offset action tokens per step; the response starts after BOS).
        """
        codes = self._check_codes("context_codes", context_codes)
        C.check_tensor("context_actions", context_actions, dtypes=C.INT_DTYPES, ndim=3)
        C.check_shape(
            "context_actions",
            context_actions,
            (*codes.shape[:2], self.action_dims),
            "[B, Fc, action_dims] like context_codes",
        )
        actions = self._check_bins("context_actions", context_actions)
        b = codes.shape[0]
        hist = torch.cat([codes.flatten(2) + self.visual_offset, actions + self.action_offset], dim=2)
        bos = torch.full((b, 1), self.bos_id, dtype=torch.long, device=codes.device)
        return torch.cat([hist.reshape(b, -1), bos], dim=1)

    def context_prompt_ids(
        self, context_codes: torch.Tensor, first_codes: torch.Tensor, first_actions: torch.Tensor
    ) -> torch.Tensor:
        """The ``ctx_msp`` prompt: context codes + ``context_offset``, the first future frame's codes, its
        action tokens (no BOS).

        Args:
            context_codes: int [B, *context_shape] in [0, context_vocab) (the compressive tokenizer's context codes).
            first_codes: int [B, *frame_shape] in [0, visual_vocab): the first future frame (an input, not predicted).
            first_actions: int [B, action_dims] bins in [0, action_bins): its action.

        Returns:
            int64 [B, context_tokens + tokens_per_frame + action_dims]; RT-1: 1280 + 80 + 13 = 1373 (RLVR-World
            ``data.max_prompt_length``). Source: ``ContextMultiStepPredictionProcessor.__call__``.
        """
        if self.context_shape is None:
            raise ValueError("context_prompt_ids: this layout has no separate context frame (use prompt_ids)")
        C.check_tensor("context_codes", context_codes, dtypes=C.INT_DTYPES, ndim=3)
        if tuple(context_codes.shape[1:]) != self.context_shape:
            raise ValueError(f"context_codes: expected [B, {self.context_shape}], got {tuple(context_codes.shape)}")
        C.check_in_range("context_codes", context_codes, self.context_vocab, "context codes")
        first = self._check_codes("first_codes", first_codes[:, None])
        C.check_tensor("first_actions", first_actions, dtypes=C.INT_DTYPES, ndim=2)
        b = context_codes.shape[0]
        C.check_shape("first_actions", first_actions, (b, self.action_dims), "[B, action_dims]")
        if first.shape[0] != b:
            raise ValueError(f"first_codes: expected {b} rows like context_codes, got {first.shape[0]}")
        parts = [
            context_codes.long().flatten(1) + self.context_offset,
            first.flatten(1) + self.visual_offset,
            self._check_bins("first_actions", first_actions) + self.action_offset,
        ]
        return torch.cat(parts, dim=1)

    def context_codes(self, prompts: torch.Tensor) -> torch.Tensor:
        """Context codes int64 [B, *context_shape] read back from ``ctx_msp`` prompts [B, Lp] (the offset removed)."""
        if self.context_shape is None:
            raise ValueError("context_codes: this layout has no separate context frame")
        codes = prompts[:, : self.context_tokens].long() - self.context_offset
        C.check_in_range("prompts (context tokens)", codes, self.context_vocab, "context codes")
        return codes.view(-1, *self.context_shape)

    def response_ids(self, codes: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """The target response (MLE labels, or a perfect rollout): int64 [B, response_length].

        Args:
            codes: int [B, frames, h, w] codes of the predicted frames.
            actions: int [B, frames, action_tokens_per_frame] bins placed after each frame's visual
                tokens; required exactly when ``action_tokens_per_frame > 0`` (multi-step layout).

        :func:`unpack_video_tokens` of the result gives back ``codes`` with every sample valid.
        """
        codes = self._check_codes("codes", codes)
        if codes.shape[1:] != (self.frames, *self.frame_shape):
            raise ValueError(
                f"codes: expected [B, {self.frames}, {self.frame_shape[0]}, {self.frame_shape[1]}], "
                f"got {tuple(codes.shape)}"
            )
        b = codes.shape[0]
        parts = [codes.flatten(2) + self.visual_offset]
        if self.action_tokens_per_frame:
            if actions is None:
                raise ValueError(
                    f"actions: this layout puts {self.action_tokens_per_frame} action tokens after "
                    "each frame; pass them"
                )
            C.check_tensor("actions", actions, dtypes=C.INT_DTYPES, ndim=3)
            C.check_shape("actions", actions, (b, self.frames, self.action_tokens_per_frame))
            parts.append(self._check_bins("actions", actions) + self.action_offset)
        elif actions is not None:
            raise ValueError("actions: this layout has no action tokens in the response")
        out = torch.cat(parts, dim=2).reshape(b, -1)
        if self.eos_after:
            out = torch.cat([out, torch.full((b, 1), self.eos_id, dtype=torch.long, device=out.device)], dim=1)
        return out

    def _check_codes(self, name: str, codes: torch.Tensor) -> torch.Tensor:
        C.check_tensor(name, codes, dtypes=C.INT_DTYPES, ndim=4)
        if tuple(codes.shape[2:]) != self.frame_shape:
            raise ValueError(f"{name}: expected frames of {self.frame_shape} codes, got {tuple(codes.shape)}")
        C.check_in_range(name, codes, self.visual_vocab, "codes")
        return codes.long()

    def _check_bins(self, name: str, bins: torch.Tensor) -> torch.Tensor:
        C.check_in_range(name, bins, self.action_bins, "action bins")
        return bins.long()

    def forced_slots(self) -> list[bool]:
        """Per response position, whether it holds an input rather than a prediction: the action tokens
        after each predicted frame (generation forces them to the clip's actions; no loss on them, as
        RLVR-World's actor masks ``[:, :, tokens_per_frame:]`` of each frame, ``dp_actor.py``)."""
        visual = set(self.slot_positions())
        body = self.frames * (self.tokens_per_frame + self.action_tokens_per_frame)
        return [t < body and t not in visual for t in range(self.response_length)]

    def slot_positions(self) -> list[int]:
        """Response positions of the visual tokens, frame by frame, row-major within a frame."""
        return _slot_tensor(self, torch.device("cpu")).tolist()


def _slot_tensor(layout: VideoTokenLayout, device: torch.device) -> torch.Tensor:
    """:meth:`VideoTokenLayout.slot_positions` as int32 [F * h * w], built with arange (traceable)."""
    stride = layout.tokens_per_frame + layout.action_tokens_per_frame
    frame = torch.arange(layout.frames, dtype=torch.int32, device=device)[:, None] * stride
    return (frame + torch.arange(layout.tokens_per_frame, dtype=torch.int32, device=device)).flatten()
