"""The README's commands and example stay true."""

import re
from pathlib import Path

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


def test_demo_script_runs_short(tmp_path):
    import runpy
    import sys

    sys.argv = ["grpo_world.py"]
    mod = runpy.run_path(str(ROOT / "examples" / "grpo_world.py"))
    results = mod["main"](["--mle-steps", "5", "--rl-steps", "2", "--prompts", "4", "--group", "4",
                           "--eval-size", "64", "--out", str(tmp_path)])  # fmt: skip
    assert set(results) == {"random init", "after MLE", "after MLE + GRPO"}
    assert (tmp_path / "summary.json").is_file()
