"""One configuration tree for the trainer: dataclasses with help text, YAML files and ``a.b=value``
overrides from the command line.

    cfg = load_config("x.yaml", ["trainer.lr=1e-5", "rollout.n=8"])

Unknown keys, values of the wrong type, values outside their choices and inconsistent combinations
raise :class:`ConfigError` with a message that lists what is valid. ``describe()`` prints the tree.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ops.advantages import ESTIMATORS
from ..ops.pixel_metrics import AGGREGATES
from ..ops.policy_loss import AGG_MODES, KL_TYPES
from ..rewards.video import INVALID_TOKENS
from ..worlds import WORLDS
from .config_checks import INF_ALLOWED, ConfigError, validate
from .frame_tokenizer import ARCHITECTURES
from .engines import ENGINES
from .rollout import DECODE_MODES, PREFILL_MODES

__all__ = ["INF_ALLOWED", "Config", "ConfigError", "describe", "load_config", "validate"]


def _f(default, help: str, choices: tuple | None = None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    path: str | None = _f(
        None,
        "local Hugging Face causal-LM directory (config.json, weights, tokenizer files); "
        "empty: a tiny Llama built from scratch, for the built-in worlds only (they ship their "
        "tokenizer); text_game and web_page data need a real model here",
    )
    hidden_size: int = _f(128, "tiny model: hidden size")
    num_layers: int = _f(3, "tiny model: transformer layers")
    num_heads: int = _f(4, "tiny model: attention heads")
    intermediate_size: int = _f(384, "tiny model: MLP width")
    max_position_embeddings: int = _f(512, "tiny model: longest sequence")
    attn_implementation: str = _f(
        "auto",
        "attention kernel; auto = flash_attention_2 when importable on GPU, else sdpa",
        ("auto", "sdpa", "eager", "flash_attention_2"),
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")


@dataclass
class DataConfig:
    world: str = _f("synthetic_text_game", "which task", tuple(WORLDS))
    train_path: str | None = _f(
        None,
        "text_game / web_page: local .parquet or .jsonl training file; "
        "rt1_video: the directory of RLVR-World .npz episodes (split inside it)",
    )
    test_path: str | None = _f(None, "text_game / web_page: local held-out file")
    nongold_path: str | None = _f(
        None,
        "text_game: a second training file in the same format (RLVR-World's non-gold transitions) from "
        "which data.nongold_rows rows are drawn per epoch",
    )
    nongold_rows: int = _f(
        0,
        "text_game: rows drawn from data.nongold_path at random with replacement every epoch of the training "
        "file (from trainer.seed and the epoch); 0: off",
    )
    n_train: int = _f(6000, "synthetic worlds: training transitions (sprite_video: clips)")
    n_test: int = _f(500, "synthetic worlds: held-out transitions (sprite_video: clips)")
    synthetic_uuids: str = _f(
        "random", "synthetic world: random uuids per state, or a fixed uuid per object name", ("random", "by_name")
    )
    limit: int | None = _f(None, "loaded data: read at most this many rows per file")
    max_prompt_tokens: int = _f(
        1024, "prompts longer than this (token ids after the chat template) are dropped (counted in the log)"
    )
    chat_template: bool = _f(True, "loaded data: wrap prompts in the tokenizer's chat template if it has one")


@dataclass
class VideoConfig:
    context_frames: int = _f(1, "frames the world model conditions on (C)")
    predict_frames: int = _f(1, "frames it predicts (P); > 1 is multi-step, action tokens follow each frame")
    n_sprites: int = _f(3, "sprite_video: sprites on the canvas (1-4; sprite 0 follows the actions)")
    frame_size: list = _f([64, 64], "sprite_video: [height, width] of the canvas")
    action_bins: int = _f(256, "bins per action dimension (iVideoGPT: 256)")
    action_ranges_path: str | None = _f(
        None, "rt1_video: per-dimension [min, max] file (torch .pth or .npy); empty: RLVR-World's RT-1 ranges"
    )
    tokenizer: str = _f(
        "tiny",
        "frame tokenizer architecture; tiny_ctx / ivideogpt_ctx: iVideoGPT's compressive tokenizer and RLVR-World's ctx_msp layout",
        tuple(ARCHITECTURES),
    )
    tokenizer_path: str | None = _f(
        None,
        "local tokenizer checkpoint (save_pretrained directory or weight file); "
        "empty: train a tiny one on the training frames",
    )
    tokenizer_steps: int = _f(600, "training steps of the tiny tokenizer (when tokenizer_path is empty)")
    tokenizer_lr: float = _f(0.003, "its Adam learning rate")
    tokenizer_batch_size: int = _f(16, "its frames per step")
    tokenizer_future_frames: int = _f(
        0, "tiny_ctx: future frames per training clip, drawn at random beside its context frame (0: all)"
    )
    tokenizer_channels: list = _f([16, 32, 64], "its widths per stride-2 stage (3 stages: 64x64 -> 8x8 codes)")
    tokenizer_res_blocks: int = _f(1, "its residual blocks at the code resolution (encoder and decoder each)")
    reward_weights: dict | None = _f(
        None,
        "{term: weight} over mse, mae, psnr, ssim, lpips, objects (sprite_video only: the object reward, "
        "docs/rewards.md); empty: mae 1 + lpips 1 (RLVR-World's) when the LPIPS weight files are set, else "
        "mae 1 + ssim 1 (rlvr_fast's fallback: RLVR-World has no SSIM term)",
    )
    lpips_vgg_path: str | None = _f(None, "torchvision VGG16 state dict (.pth/.safetensors) for LPIPS")
    lpips_lin_path: str | None = _f(None, "the lpips package's vgg.pth linear-layer weights")
    invalid_reward: float | None = _f(None, "reward of a malformed rollout; empty: the worst a valid one can get")
    invalid_tokens: str = _f(
        "penalty",
        "a rollout with a non-visual id, an early EOS or missing tokens in its frame slots: penalty = it gets "
        "invalid_reward; clamp = RLVR-World's: every id clamped into the visual range, scored on that frame "
        "(invalid_reward must be empty)",
        INVALID_TOKENS,
    )
    aggregate: str = _f("mean", "multi-step: per-frame losses -> one reward", AGGREGATES)
    gamma: float = _f(0.9, "multi-step discount (aggregate=discount)")
    decode_chunk: int | None = _f(None, "frames per decoder call (caps memory); empty: the whole batch")
    preview: int = _f(6, "held-out clips drawn in preview.png (context / real / MLE / RLVR)")


@dataclass
class RolloutConfig:
    n: int = _f(8, "responses sampled per prompt (the GRPO group size)")
    prompts_per_step: int = _f(16, "prompts per GRPO step (over all ranks)")
    temperature: float = _f(1.0, "sampling temperature (> 0)")
    top_p: float = _f(1.0, "nucleus sampling mass in (0, 1]")
    top_k: int = _f(0, "top-k sampling; 0 disables")
    max_new_tokens: int = _f(96, "longest response; longer ones are cut (and get no EOS)")
    engine: str = _f(
        "hf",
        "what generates rollouts: hf = Hugging Face generate on the training model; vllm = a vLLM engine in "
        "the training process (pip install 'rlvr_fast[vllm]'), its weights synced from the policy before it "
        "samples after an optimizer step; auto = vllm where it is installed and can serve the model, else hf "
        "(the log says which and why)",
        ENGINES,
    )
    prefill: str = _f(
        "group",
        "hf engine: group = prefill each prompt once and share its KV cache among the group's n samples; "
        "sample = prefill every sample (generate's num_return_sequences)",
        PREFILL_MODES,
    )
    kv_cache_gb: float = _f(1.0, "vllm engine: KV-cache memory in GiB; must hold one group (prompt + n responses)")
    sleep: bool = _f(True, "vllm engine on GPU: release its weights and KV cache while the policy trains")


@dataclass
class RewardConfig:
    name: str | None = _f(None, "registered reward or 'module:function'; empty: the task's default")
    timeout_s: float = _f(
        10.0,
        "a reward call running longer is stopped (its worker process killed) and gets failure_reward; inf: no limit",
    )
    failure_reward: float = _f(0.0, "reward for a call that raises, exits, times out or returns NaN")
    workers: int = _f(4, "worker processes scoring a batch (rlvr_fast.rewards.score)")
    decode: str = _f(
        "clean",
        "the text a text reward and its metrics see (training and held-out evaluation): clean = the response "
        "without EOS and special tokens; verl = RLVR-World's verl: special tokens kept, the EOS text included",
        DECODE_MODES,
    )


@dataclass
class AlgoConfig:
    estimator: str = _f("grpo", "group advantage estimator", ESTIMATORS)
    ppo_epochs: int = _f(1, "passes over each rollout batch")
    mini_batch_size: int | None = _f(None, "sequences per optimizer step; empty: the whole rollout batch")
    micro_batch_size: int = _f(32, "sequences per forward/backward (gradient accumulation)")
    clip_low: float = _f(0.2, "PPO clip: ratio >= 1 - clip_low")
    clip_high: float = _f(0.28, "PPO clip: ratio <= 1 + clip_high (DAPO clip-higher)")
    dual_clip: float | None = _f(None, "dual-clip constant c > 1 for negative advantages; empty: off")
    kl_coef: float = _f(0.0, "KL penalty to the frozen reference model; 0: no reference model")
    kl_type: str = _f("k3", "KL estimator", tuple(k for k in KL_TYPES if k is not None))
    entropy_coef: float = _f(0.0, "entropy bonus")
    agg: str = _f("token-mean", "loss aggregation", AGG_MODES)
    tis_cap: float | None = _f(
        None,
        "truncated importance sampling of the rollout engine's log-prob gap (rollout.engine=vllm): the "
        "policy-gradient term of each token is weighted by min(exp(logp_trainer - logp_engine), tis_cap), "
        "as verl's rollout_is=token; empty: off",
    )


@dataclass
class MLEConfig:
    steps: int = _f(0, "supervised (maximum-likelihood) steps before RL; 0: none")
    batch_size: int = _f(32, "sequences per MLE step")
    lr: float = _f(1e-3, "MLE peak learning rate (cosine decay to 10% over mle.steps)")
    warmup_steps: int = _f(20, "MLE linear warmup steps")


@dataclass
class TrainerConfig:
    steps: int = _f(100, "GRPO steps")
    lr: float = _f(1e-5, "GRPO peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: list = _f([0.9, 0.999], "AdamW betas")
    warmup_steps: int = _f(0, "linear warmup steps, then constant")
    grad_clip: float = _f(1.0, "max global gradient norm; 0: no clipping")
    seed: int = _f(0, "seed for data order, sampling and initialisation")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    cpu_threads: int = _f(
        0,
        "CPU runs: torch threads (the frame tokenizer's training too); 0: as many as other processes "
        "leave idle, re-checked every 5 s (rlvr_fast/_threads.py)",
    )
    bf16: str = _f("auto", "bf16 autocast: auto = on for CUDA", ("auto", "on", "off"))
    parallel: str = _f(
        "auto", "multi-process wrapper under torchrun; auto: DDP below 1B params, else FSDP2", ("auto", "ddp", "fsdp")
    )
    eval_every: int = _f(25, "evaluate on the held-out split every this many GRPO steps; 0: only at the end")
    eval_size: int = _f(256, "held-out examples per evaluation (greedy decoding)")
    eval_batch_size: int = _f(64, "prompts per evaluation generate call")
    save_every: int = _f(50, "write a checkpoint every this many steps; 0: only at the end")
    out_dir: str = _f("runs/rlvr", "run directory: checkpoints, metrics.jsonl, plots, summary.json")
    tensorboard: bool = _f(False, "also log to TensorBoard (needs the tensorboard package)")
    progress: bool = _f(True, "show a progress bar")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    mle: MLEConfig = field(default_factory=MLEConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _coerce(value: Any, ann: Any, key: str) -> Any:
    """Check ``value`` against a field's resolved type hint; ints are accepted for floats."""
    args = typing.get_args(ann)
    optional = (typing.get_origin(ann) in (typing.Union, types.UnionType)) and type(None) in args
    base = next((a for a in args if a is not type(None)), ann) if optional else ann
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: may not be empty (expected {base.__name__})")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif base is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{key}: expected {base.__name__}, got {value!r} ({type(value).__name__})")


def _apply(node, data: dict, prefix: str = "") -> None:
    fields = _fields(node)
    hints = typing.get_type_hints(type(node))  # annotations are strings under `from __future__`
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown key {path!r}; valid keys{' under ' + prefix[:-1] if prefix else ''}: {sorted(fields)}"
            )
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping) with keys {sorted(_fields(current))}")
            _apply(current, value, path + ".")
            continue
        value = _coerce(value, hints[key], path)
        choices = fields[key].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}")
        setattr(node, key, value)


def parse_override(text: str) -> dict:
    """``"a.b=1e-5"`` -> ``{"a": {"b": 1e-05}}``; the value is read as YAML (numbers, bools, null, lists)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot read the value ({e})") from e
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: Config | None = None,
    *,
    for_eval: bool = False,
    preset: str | None = None,
    inputs: bool = True,
) -> Config:
    """Build a :class:`Config`: defaults (or ``base``), then the shipped ``preset`` (a name of
    :func:`rlvr_fast.configs.preset_names`), then the YAML file, then each override; then :func:`validate`
    it (``for_eval``: for ``rlvr-fast eval``, which needs no training file; ``inputs`` False: the local files
    and model a run reads may be unset, for ``rlvr-fast config``)."""
    import copy

    cfg = copy.deepcopy(base) if base is not None else Config()
    if preset is not None:
        from ..configs import preset_path

        try:
            _apply_file(cfg, preset_path(preset))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if path is not None:
        _apply_file(cfg, path)
    for text in overrides:
        _apply(cfg, parse_override(text))
    validate(cfg, for_eval=for_eval, inputs=inputs)
    return cfg


def _apply_file(cfg: Config, path: str | Path) -> None:
    """Apply the sections of the YAML file ``path`` to ``cfg`` (ConfigError naming the file if it is missing,
    not YAML or not a mapping)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    _apply(cfg, data)


def describe(node=None, prefix: str = "") -> str:
    """The configuration tree as text: ``key = default  # help [choices]``."""
    node = node if node is not None else Config()
    lines = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name}:")
            lines.append(describe(value, prefix + "  "))
            continue
        choices = f.metadata.get("choices")
        extra = f" {list(choices)}" if choices else ""
        lines.append(f"{prefix}{f.name} = {value!r}  # {f.metadata.get('help', '')}{extra}")
    return "\n".join(lines)
