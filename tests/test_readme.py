"""The README's commands and example stay true."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_fresh_machine_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_python_example_runs(capsys, monkeypatch):
    monkeypatch.setenv("RLVR_FAST_BACKEND", "torch")
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README lost its example"
    assert len(blocks[0].strip().splitlines()) <= 25
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert "clipfrac" in capsys.readouterr().out


def test_readme_video_example_runs(capsys, monkeypatch):
    monkeypatch.delenv("RLVR_FAST_BACKEND", raising=False)  # the extension's kernels when built
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 3 and "unpack_video_tokens" in blocks[2], "README lost its video example"
    exec(compile(blocks[2], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "[True, True, True, True, True, False, True, True]" in out and "-2.0" in out


def test_readme_fused_linear_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert "fused_linear_policy_loss" in blocks[1], "README lost its fused linear example"
    exec(compile(blocks[1], "README.md", "exec"), {})
    assert "grad norm" in capsys.readouterr().out


def test_demo_script_runs_short(tmp_path):
    import runpy
    import sys

    sys.argv = ["grpo_world.py"]
    mod = runpy.run_path(str(ROOT / "examples" / "grpo_world.py"))
    results = mod["main"](
        [
            "--mle-steps",
            "5",
            "--rl-steps",
            "2",
            "--prompts",
            "4",
            "--group",
            "4",
            "--eval-size",
            "64",
            "--out",
            str(tmp_path),
        ]
    )
    assert set(results) == {"random init", "after MLE", "after MLE + GRPO"}
    assert (tmp_path / "summary.json").is_file()


def test_make_demo_runs_the_cli_demo():
    makefile = (ROOT / "Makefile").read_text()
    assert "rlvr-fast demo" in makefile.split("\ndemo:")[1].split("\n\n")[0]


def test_cli_demo_runs_short_and_prints_the_table(tmp_path, capsys):
    """`rlvr-fast demo` end to end with the demo config, shrunk to seconds."""
    from rlvr_fast.cli import main

    rc = main(
        [
            "demo",
            "model.hidden_size=32",
            "model.num_layers=1",
            "model.num_heads=2",
            "model.intermediate_size=64",
            "data.n_train=200",
            "data.n_test=16",
            "mle.steps=3",
            "trainer.steps=2",
            "trainer.eval_size=8",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=8",
            "trainer.progress=false",
            f"trainer.out_dir={tmp_path}",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "exact-match accuracy" in out and "task reward" in out and "changed-property accuracy" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"mle", "rlvr", "seconds"} <= set(summary)
    assert {"exact", "task", "property_acc"} <= set(summary["mle"]) == set(summary["rlvr"])
    assert (tmp_path / "curves.png").is_file()
    # the checkpoint evaluates through `rlvr-fast eval` to the numbers the run reported
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "checkpoint"),
                "data.n_train=200",
                "data.n_test=16",
                "trainer.eval_size=8",
                "trainer.progress=false",
                f"trainer.out_dir={tmp_path / 'eval'}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :]) == summary["rlvr"]


def test_cli_reports_config_errors(capsys):
    from rlvr_fast.cli import main

    assert main(["train", "trainer.nope=1"]) == 2
    assert "unknown key 'trainer.nope'" in capsys.readouterr().err
    assert main(["config", "rollout.n=4"]) == 0
    assert "n = 4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, says",
    [
        (["train", "reward.name=nope", "mle.steps=0", "trainer.steps=0"], "unknown reward 'nope'"),
        (
            [
                "train",
                "data.world=text_game",
                "data.train_path={tmp}/x.csv",
                "data.test_path={tmp}/x.csv",
                "model.path={tmp}",
            ],
            "expected a .parquet, .jsonl or .json file",
        ),
        (
            ["train", "data.world=text_game", "data.train_path={tmp}/x.jsonl", "data.test_path={tmp}/x.jsonl"],
            "needs a pretrained model with its tokenizer: set model.path",
        ),
        (["eval", "--checkpoint", "{tmp}/nope"], "--checkpoint '{tmp}/nope': no such directory"),
        (["eval", "--checkpoint", "{tmp}"], "is not a checkpoint directory (no config.json"),
    ],
)
def test_cli_user_errors_are_one_message(tmp_path, capsys, argv, says):
    """A bad setting or file reaches the terminal as one message naming it, no traceback; --debug raises."""
    from rlvr_fast.cli import main

    (tmp_path / "config.json").write_text("{}") if argv[0] == "train" else None
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says.format(tmp=tmp_path) in err and "Traceback" not in err and "--debug" in err
    with pytest.raises((ValueError, OSError)):
        main(["--debug", *argv])


def test_readme_performance_numbers_come_from_results_md():
    """Every time and memory figure in the README's Performance section is a number of RESULTS.md."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    perf = readme[readme.index("## Performance") : readme.index("## Where things live")]
    figures = set(re.findall(r"(\d[\d,]*(?:\.\d+)?) (?:ms|MiB|tokens/s|rollouts/s)", perf))
    known = set(re.findall(r"\d[\d,]*(?:\.\d+)?", results))
    assert figures and not sorted(figures - known), f"README figures not in RESULTS.md: {sorted(figures - known)}"
