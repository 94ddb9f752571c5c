"""``rlvr-fast``: the command line.

    rlvr-fast demo [--world text|video|video_msp] [key=value ...]  the built-in main job (MLE then GRPO, table)
    rlvr-fast train [--preset NAME] [--config x.yaml] [--resume] [key=value ...]
    rlvr-fast eval --checkpoint DIR [--preset NAME] [--config x.yaml] [key=value ...]
    rlvr-fast config [--preset NAME] [--config x.yaml] [key=value ...]  print the resolved configuration
    rlvr-fast bench [run_all.py options]                 the benchmark suite of a source checkout

Overrides are ``section.key=value`` (values read as YAML), e.g. ``trainer.lr=1e-5 rollout.n=8``.
Layering: the defaults, then the preset (a file of rlvr_fast/configs/presets, e.g. rlvr_world_web_page),
then the --config file, then the overrides.
Multi-GPU: ``torchrun --nproc_per_node=N -m rlvr_fast.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

DEMO_CONFIGS = {"text": "demo.yaml", "video": "demo_video.yaml", "video_msp": "demo_video_msp.yaml"}
# (summary key, label, higher is better): the rows of the before/after table, in this order
TABLE_METRICS = (
    ("exact", "exact-match accuracy", True),
    ("task", "task reward", True),
    ("property_acc", "changed-property accuracy", True),
    ("item_acc", "item accuracy", True),
    ("f1", "item F1", True),
    ("parsed", "parsed answers", True),
    ("mae", "MAE (lower is better)", False),
    ("mse", "MSE (lower is better)", False),
    ("psnr", "PSNR, dB", True),
    ("ssim", "SSIM", True),
    ("lpips", "LPIPS (lower is better)", False),
    ("objects", "object reward", True),
    ("sprites", "sprites in place", True),
    ("valid", "well-formed predictions", True),
    ("reward", "reward", True),
)


# Errors the library raises for bad settings, files and inputs (each names what is wrong); anything
# else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError)


def _config(path: str | None, overrides: list[str], default: str | None = None, *, for_eval: bool = False, preset=None):
    from .trainer.config import load_config

    if path is None and default is not None:
        with resources.as_file(resources.files("rlvr_fast.configs") / default) as p:
            return load_config(p, overrides, for_eval=for_eval)
    return load_config(path, overrides, for_eval=for_eval, preset=preset)


def format_table(summary: dict) -> str:
    """The before/after table of a run summary: one row per task metric, MLE vs MLE + GRPO; a row whose
    metric got worse after GRPO ends with ``<- worse`` (so a user need not check each direction)."""
    mle, rl = summary.get("mle", {}), summary.get("rlvr", {})
    rows = [row for row in TABLE_METRICS if row[0] in mle or row[0] in rl]
    lines = [f"{'held-out metric':<28}{'MLE':>10}{'MLE + GRPO':>14}{'change':>10}"]
    for key, label, higher in rows:
        a, b = mle.get(key, float("nan")), rl.get(key, float("nan"))
        d = 4 if max(abs(a), abs(b)) < 0.1 else 3  # MAE / MSE are small: keep their significant digits
        change = round(b - a, d)  # as printed: no mark for a rounding ulp
        worse = change < 0 if higher else change > 0
        lines.append(f"{label:<28}{a:>10.{d}f}{b:>14.{d}f}{b - a:>+10.{d}f}" + ("  <- worse" if worse else ""))
    return "\n".join(lines)


def _report(summary: dict, out_dir: str) -> None:
    n = summary.get("eval_examples", "?")
    print(f"\n{summary.get('task', '')}: {n} held-out examples, greedy decoding")
    print(format_table(summary))
    if summary.get("best"):
        b = summary["best"]
        which = "the MLE model (before GRPO)" if b.get("stage") == "mle" else f"GRPO step {b['step']}"
        print(
            f"best checkpoint by {summary['select_metric']}: {which} "
            f"({summary['select_metric']} {b.get(summary['select_metric'], float('nan')):.3f}) in {out_dir}/best"
        )
    print(
        f"{summary['seconds']:.0f} s; metrics {out_dir}/metrics.jsonl, curves {summary.get('plot')}, "
        f"summary {out_dir}/summary.json, checkpoint {out_dir}/checkpoint"
    )
    if summary.get("preview"):
        print(f"held-out predictions (context / real / MLE / MLE + GRPO): {summary['preview']}")


DEMO_REQUEST = "demo_request.json"  # the demo's resolved configuration, written when its run finished


def _demo_request(cfg) -> dict:
    from . import __version__

    return {"version": __version__, "config": cfg.to_dict()}


def _finished_demo(cfg) -> dict | None:
    """The summary of a finished demo run of exactly this configuration in its out_dir, else None."""
    out = Path(cfg.trainer.out_dir)
    try:
        request = json.loads((out / DEMO_REQUEST).read_text())
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if request == json.loads(json.dumps(_demo_request(cfg))) else None


def cmd_train(args, default_config: str | None = None) -> int:
    from .trainer import train

    cfg = _config(args.config, args.overrides, default_config, preset=getattr(args, "preset", None))
    demo = args.cmd == "demo"
    request = _demo_request(cfg) if demo else None
    if demo and not args.resume and not args.force and (done := _finished_demo(cfg)) is not None:
        print(
            f"rlvr-fast demo: {cfg.trainer.out_dir} holds a finished run of this configuration; showing it "
            "(--force runs it again)"
        )
        _report(done, cfg.trainer.out_dir)
        return 0
    try:
        summary = train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        if demo:
            (Path(cfg.trainer.out_dir) / DEMO_REQUEST).write_text(json.dumps(request, indent=1))
        _report(summary, cfg.trainer.out_dir)
    return 0


def cmd_eval(args) -> int:
    from .trainer import GRPOTrainer

    # a checkpoint directory is a Hugging Face model directory (weights, config, tokenizer)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_dir():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint!r}: no such directory (a run's out_dir/best or out_dir/checkpoint)"
        )
    if not (ckpt / "config.json").is_file():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint!r} is not a checkpoint directory (no config.json; "
            "use a run's out_dir/best or out_dir/checkpoint)"
        )
    # eval reads only the held-out data: a text world's config needs no data.train_path
    cfg = _config(args.config, [*args.overrides, f"model.path={args.checkpoint}"], for_eval=True, preset=args.preset)
    metrics = GRPOTrainer(cfg, eval_only=True).evaluate()
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_config(args) -> int:
    from .trainer.config import describe, load_config

    # the local files and model a run reads may still be unset: the tree is printed to be filled in
    print(describe(load_config(args.config, args.overrides, preset=args.preset, inputs=False)))
    return 0


def cmd_bench(args) -> int:
    script = Path.cwd() / "benchmarks" / "run_all.py"
    if not script.is_file():
        print(
            "rlvr-fast bench runs benchmarks/run_all.py of a source checkout: run it from the repository root",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *args.rest])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rlvr-fast",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in (
        ("demo", "the built-in main job"),
        ("train", "MLE + GRPO training"),
        ("eval", "evaluate a checkpoint"),
        ("config", "print the resolved configuration"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--config", help="YAML file (sections as in `rlvr-fast config`)")
        s.add_argument("overrides", nargs="*", help="section.key=value")
        if name != "demo":
            s.add_argument(
                "--preset",
                help="a shipped run preset, layered under --config and the overrides (e.g. rlvr_world_web_page; "
                "an unknown name lists them)",
            )
        if name in ("train", "demo"):
            s.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint")
        if name == "demo":
            s.add_argument(
                "--world",
                choices=sorted(DEMO_CONFIGS),
                default="text",
                help="text: the synthetic text game (demo.yaml); video: the sprite world (demo_video.yaml); "
                "video_msp: the sprite world, 7 frames in RLVR-World's ctx_msp layout (demo_video_msp.yaml)",
            )
            s.add_argument(
                "--force",
                action="store_true",
                help="run again even when out_dir holds a finished run of the same configuration",
            )
        if name == "eval":
            s.add_argument(
                "--checkpoint", required=True, help="checkpoint directory (out_dir/best or out_dir/checkpoint)"
            )
    b = sub.add_parser("bench", help="run the benchmark suite (source checkout)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    try:
        if args.cmd == "demo":
            return cmd_train(args, default_config=DEMO_CONFIGS[args.world])
        if args.cmd == "train":
            return cmd_train(args)
        if args.cmd == "eval":
            return cmd_eval(args)
        if args.cmd == "config":
            return cmd_config(args)
        return cmd_bench(args)
    except USER_ERRORS as e:
        # what the library raises for a bad setting, file or input: one line, the traceback on request
        if args.debug:
            raise
        kind = "KeyError: " if isinstance(e, KeyError) else ""  # a KeyError's message is the key alone
        print(f"rlvr-fast: {kind}{e}\n(rlvr-fast --debug {args.cmd} ... shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
