"""The rules a configuration must satisfy beyond its types and choices: every float finite (bar the
keys in :data:`INF_ALLOWED`), ranges, and the cross-field checks (batch shapes, the files and model a world
reads, the gold + non-gold mix, the reward a world takes). :func:`validate` raises :class:`ConfigError`
naming the keys and what would be valid; ``trainer/config.py`` holds the tree and calls it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

from ..ops.advantages import GROUP_ESTIMATORS, WHITENED_ESTIMATORS
from ..worlds import WORLDS, check_reward_name, loader


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message says what is valid."""


# Float keys for which inf means something (said in their help text). Every other number in the
# config, lists and mappings included, must be finite: NaN passes every `x > 0` test by failing none.
INF_ALLOWED = frozenset({"reward.timeout_s"})


def _numbers(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, float):
        yield value


def _check_finite(cfg) -> None:
    """The generic rule: every float anywhere in the tree is finite, except +inf for INF_ALLOWED keys."""
    for section in dataclasses.fields(cfg):
        node = getattr(cfg, section.name)
        for f in dataclasses.fields(node):
            key, value = f"{section.name}.{f.name}", getattr(node, f.name)
            for v in _numbers(value):
                if not math.isfinite(v) and not (v == math.inf and key in INF_ALLOWED):
                    allowed = " (or inf)" if key in INF_ALLOWED else ""
                    raise ConfigError(f"{key} must be a finite number{allowed}, got {value!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg, *, for_eval: bool = False, inputs: bool = True) -> None:
    """Finiteness of every float (:data:`INF_ALLOWED` lists the exceptions), ranges and cross-field
    checks: raise :class:`ConfigError` naming the keys and what would be valid.

    ``for_eval``: the config of an evaluation (``rlvr-fast eval``), which reads only the held-out file
    of a text_game / web_page world, so ``data.train_path`` may be unset. ``inputs`` False: the data files,
    episodes and model a run reads (``data.*_path``, ``model.path``) may be unset (``rlvr-fast config``).
    """
    _check_finite(cfg)
    r, a, t, v, rw, d = cfg.rollout, cfg.algo, cfg.trainer, cfg.video, cfg.reward, cfg.data
    world = WORLDS[d.world]  # data.world is one of them (a choice)
    files = "data.train_path and data.test_path"
    if for_eval:
        files = "data.test_path (eval reads only the held-out file)"
    checks = [
        (r.n >= 1, f"rollout.n must be >= 1, got {r.n}"),
        (
            r.n >= 2 or a.estimator not in GROUP_ESTIMATORS,
            f"rollout.n = {r.n}: estimator {a.estimator!r} compares samples within a group, use rollout.n >= 2",
        ),
        (r.prompts_per_step >= 1, f"rollout.prompts_per_step must be >= 1, got {r.prompts_per_step}"),
        (r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature}"),
        (0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}"),
        (r.top_k >= 0, f"rollout.top_k must be >= 0, got {r.top_k}"),
        (r.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {r.max_new_tokens}"),
        (r.kv_cache_gb > 0, f"rollout.kv_cache_gb must be > 0, got {r.kv_cache_gb}"),
        (a.tis_cap is None or a.tis_cap > 0, f"algo.tis_cap must be > 0 or empty, got {a.tis_cap}"),
        (
            a.tis_cap is None or r.engine != "hf",
            "algo.tis_cap corrects the gap between the vLLM engine's log-probs and the trainer's: set "
            "rollout.engine=vllm, or leave algo.tis_cap empty (with hf the sampler is the trainer's model)",
        ),
        (a.ppo_epochs >= 1, f"algo.ppo_epochs must be >= 1, got {a.ppo_epochs}"),
        (a.micro_batch_size >= 1, f"algo.micro_batch_size must be >= 1, got {a.micro_batch_size}"),
        (a.clip_low >= 0 and a.clip_high >= 0, "algo.clip_low and algo.clip_high must be >= 0"),
        (a.dual_clip is None or a.dual_clip > 1, f"algo.dual_clip must be > 1 or empty, got {a.dual_clip}"),
        (a.kl_coef >= 0, f"algo.kl_coef must be >= 0, got {a.kl_coef}"),
        (rw.timeout_s > 0, f"reward.timeout_s must be > 0 (inf: no limit), got {rw.timeout_s}"),
        (rw.workers >= 1, f"reward.workers must be >= 1, got {rw.workers}"),
        (v.tokenizer_lr > 0, f"video.tokenizer_lr must be > 0, got {v.tokenizer_lr}"),
        (
            v.tokenizer_future_frames >= 0,
            f"video.tokenizer_future_frames must be >= 0 (0: all), got {v.tokenizer_future_frames}",
        ),
        (0 < v.gamma <= 1, f"video.gamma must be in (0, 1], got {v.gamma}"),
        (
            v.reward_weights is None or all(_is_number(w) for w in v.reward_weights.values()),
            f"video.reward_weights must map terms to numbers, got {v.reward_weights!r}",
        ),
        (t.weight_decay >= 0, f"trainer.weight_decay must be >= 0, got {t.weight_decay}"),
        (t.steps >= 0 and cfg.mle.steps >= 0, "trainer.steps and mle.steps must be >= 0"),
        (t.lr > 0 and cfg.mle.lr > 0, "trainer.lr and mle.lr must be > 0"),
        (t.grad_clip >= 0, f"trainer.grad_clip must be >= 0, got {t.grad_clip}"),
        (t.cpu_threads >= 0, f"trainer.cpu_threads must be >= 0 (0: adapt to idle cores), got {t.cpu_threads}"),
        (
            len(t.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in t.betas),
            f"trainer.betas must be two numbers in [0, 1), got {t.betas}",
        ),
        (t.eval_size >= 1 and t.eval_batch_size >= 1, "trainer.eval_size and trainer.eval_batch_size must be >= 1"),
        (
            not (inputs and world.files) or bool(d.test_path and (for_eval or d.train_path)),
            f"data.world = {d.world!r} reads local files: set {files}",
        ),
        (
            not (inputs and world.needs_model) or cfg.model.path,
            f"data.world = {d.world!r} needs a pretrained model with its tokenizer: set model.path to a local "
            "Hugging Face model directory (config.json, weights, tokenizer files), e.g. one saved with "
            "save_pretrained",
        ),
        (d.nongold_rows >= 0, f"data.nongold_rows must be >= 0, got {d.nongold_rows}"),
        (
            d.nongold_rows <= 0 or "nongold_path" in inspect.signature(loader(d.world)).parameters,
            f"data.nongold_rows = {d.nongold_rows}: data.world = {d.world!r} reads no second training file "
            "(data.nongold_path); set data.nongold_rows=0",
        ),
        (
            not inputs or d.nongold_rows == 0 or bool(d.nongold_path) or for_eval,
            f"data.nongold_rows = {d.nongold_rows} draws rows from a second training file: set data.nongold_path "
            "(or data.nongold_rows=0)",
        ),
        (
            not (inputs and (v.reward_weights or {}).get("lpips"))
            or bool(v.lpips_vgg_path and v.lpips_lin_path)
            or not world.own_reward,  # a text world reads no video settings
            f"video.reward_weights = {v.reward_weights!r} weights LPIPS: set video.lpips_vgg_path and "
            "video.lpips_lin_path (local VGG16 and lpips weight files; nothing is downloaded), or drop the lpips "
            "term (then the reward is not RLVR-World's: docs/rewards.md)",
        ),
        (
            not (inputs and world.episodes) or d.train_path,
            f"data.world = {d.world!r} reads local episodes: set data.train_path to the .npz directory",
        ),
    ]
    batch = r.prompts_per_step * r.n
    mini = a.mini_batch_size or batch
    checks += [
        (
            mini >= 1 and batch % mini == 0,
            f"algo.mini_batch_size = {mini} must divide the rollout batch rollout.prompts_per_step x rollout.n = {batch}",
        ),
        (
            mini % r.n == 0 or a.estimator in WHITENED_ESTIMATORS,
            f"algo.mini_batch_size = {mini} must be a multiple of rollout.n = {r.n} (whole groups per mini-batch)",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    try:  # the world's loader refuses it too; checked here so the run fails before any work
        check_reward_name(d.world, rw.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
