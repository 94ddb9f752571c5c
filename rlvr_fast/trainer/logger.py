"""Run logging: a tqdm bar with reward / KL / clip fraction, JSON-lines metrics, optional TensorBoard,
and a PNG of the reward and eval-metric curves at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLogger:
    """Writes ``metrics.jsonl`` in ``out_dir`` (one JSON object per record, with ``stage`` and ``step``).

    ``enabled=False`` (non-zero ranks) makes every call a no-op. Appends on resume, after dropping
    records past the checkpoint's step so the file matches an uninterrupted run.
    """

    def __init__(self, out_dir: Path, *, enabled: bool = True, tensorboard: bool = False, progress: bool = True):
        self.out_dir, self.enabled, self.progress = Path(out_dir), enabled, progress
        self.path = self.out_dir / "metrics.jsonl"
        self.bar = None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                log.warning("trainer.tensorboard=true but the tensorboard package is not installed; skipping it")

    def truncate(self, keep: "callable") -> None:
        """Keep only the records for which ``keep(record)`` is true (used when resuming)."""
        if not self.enabled or not self.path.exists():
            return
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records() if keep(r)))

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("step", 0) + (1_000_000 if record.get("stage") == "rl" else 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record.get('stage', 'run')}/{k}", v, step)

    def start_bar(self, total: int, initial: int, desc: str) -> None:
        if not (self.enabled and self.progress):
            return
        from tqdm.auto import tqdm

        self.close_bar()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, mininterval=0.5)

    def advance(self, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        if self.tb is not None:
            self.tb.close()

    def plot(self, select_metric: str) -> Path | None:
        """``curves.png``: training reward per GRPO step, and held-out metrics per evaluation."""
        if not self.enabled:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed; no curves.png")
            return None
        rows = self.records()
        rl = [r for r in rows if r.get("stage") == "rl" and "reward" in r]
        mle = [r for r in rows if r.get("stage") == "mle" and "loss" in r]
        ev = [r for r in rows if r.get("stage") == "eval"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        if mle:
            axes[0].plot([r["step"] for r in mle], [r["loss"] for r in mle], lw=1)
        axes[0].set(title="MLE loss", xlabel="MLE step", yscale="log")
        if rl:
            xs, ys = [r["step"] for r in rl], [r["reward"] for r in rl]
            axes[1].plot(xs, ys, lw=0.8, alpha=0.5, label="mean reward per step")
            w = max(1, len(ys) // 10)  # each step sees few prompts: smooth to show the trend
            smooth = [sum(ys[max(0, i - w + 1) : i + 1]) / len(ys[max(0, i - w + 1) : i + 1]) for i in range(len(ys))]
            axes[1].plot(xs, smooth, lw=2, label=f"moving mean ({w} steps)")
            axes[1].legend()
        axes[1].set(title="GRPO training reward", xlabel="GRPO step")
        if ev:
            keys = [k for k in ev[-1] if k.startswith("eval/")]
            xs = [r["rl_step"] for r in ev]
            # metrics on another scale (PSNR in dB next to accuracies in [0, 1]) get their own axis
            big = {k for k in keys if max(abs(r.get(k, 0.0)) for r in ev) > 2.0}
            twin = axes[2].twinx() if big and len(big) < len(keys) else None
            for k in keys:
                ax = twin if twin is not None and k in big else axes[2]
                ax.plot(
                    xs,
                    [r.get(k, float("nan")) for r in ev],
                    marker="o",
                    ls="--" if ax is twin else "-",
                    label=k[5:] + (" (right axis)" if ax is twin else ""),
                    lw=2.5 if k == f"eval/{select_metric}" else 1,
                )
            if keys:
                handles = [h for a in (axes[2], twin) if a is not None for h in a.get_legend_handles_labels()[0]]
                axes[2].legend(handles=handles, fontsize=8)
        axes[2].set(title="held-out metrics (greedy)", xlabel="GRPO step (0 = after MLE)")
        fig.tight_layout()
        path = self.out_dir / "curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
