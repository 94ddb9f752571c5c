"""Packaging: lean import, the kernels inside the package, and the dispatch rules."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rlvr_fast
from rlvr_fast import _dispatch

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, cwd="/"
    )


def test_import_does_not_initialise_cuda_or_import_triton():
    res = _run(
        """
        import sys, torch
        import rlvr_fast, rlvr_fast.ops
        assert not torch.cuda.is_initialized(), "import initialised CUDA"
        assert "triton" not in sys.modules, "import pulled in triton"
        assert "rlvr_fast.kernels" not in sys.modules
        assert "rlvr_fast._C" not in sys.modules, "import loaded the compiled extension"
        print("ok")
        """
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_import_and_torch_backend_work_without_triton():
    res = _run(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("triton blocked for this test")
        sys.meta_path.insert(0, Block())
        import torch, rlvr_fast
        x = torch.randn(4, 7)
        lp = rlvr_fast.token_logprobs(x, torch.tensor([0, 1, 2, 6]))
        assert torch.allclose(lp, torch.log_softmax(x, -1)[torch.arange(4), torch.tensor([0, 1, 2, 6])])
        print("ok")
        """,
        RLVR_FAST_BACKEND="",
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_kernels_live_inside_the_package():
    """No top-level kernels/: it would shadow Hugging Face's `kernels` (see test_environment.py)."""
    import rlvr_fast.kernels as k

    assert Path(k.__file__).resolve() == ROOT / "rlvr_fast" / "kernels" / "__init__.py"
    assert not (ROOT / "kernels").exists()


@pytest.mark.slow
def test_non_editable_install_ships_kernels(tmp_path):
    """`pip install .` (not editable) must ship rlvr_fast/kernels and the extension in site-packages."""
    target = tmp_path / "site"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (target / "rlvr_fast" / "kernels" / "logprobs.py").is_file()
    assert list((target / "rlvr_fast").glob("_C*.so")), "the wheel lacks the extension rlvr_fast._C"
    res = _run(
        """
        import rlvr_fast, rlvr_fast.kernels.logprobs as k, rlvr_fast._C as ext
        print(rlvr_fast.__file__); print(k.__file__); print(ext.__file__)
        """,
        PYTHONPATH=str(target),
    )
    assert res.returncode == 0, res.stderr
    assert all(line.startswith(str(target)) for line in res.stdout.split()), res.stdout


def test_version_and_public_api():
    assert rlvr_fast.__version__
    for name in ("group_advantages", "token_logprobs", "policy_loss", "policy_loss_from_logits"):
        assert callable(getattr(rlvr_fast, name))
        assert callable(getattr(rlvr_fast.ops, name))
    for op in ("group_advantages", "token_logprobs", "policy_loss", "policy_loss_from_logits"):
        assert hasattr(torch.ops.rlvr_fast, op)


class TestDispatch:
    def test_auto_on_cpu_is_torch(self, monkeypatch):
        monkeypatch.delenv("RLVR_FAST_BACKEND", raising=False)
        assert _dispatch.select_backend("op", torch.device("cpu")) == "torch"

    def test_forced_triton_on_cpu_needs_interpreter(self, monkeypatch):
        monkeypatch.setenv("RLVR_FAST_BACKEND", "triton")
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            _dispatch.select_backend("token_logprobs", torch.device("cpu"))

    def test_forced_cuda_for_op_without_it_raises(self, monkeypatch):
        monkeypatch.setenv("RLVR_FAST_BACKEND", "cuda")
        with pytest.raises(RuntimeError, match="no 'cuda' backend"):
            _dispatch.select_backend("policy_loss", torch.device("cpu"))

    def test_unknown_backend_raises(self, monkeypatch):
        monkeypatch.setenv("RLVR_FAST_BACKEND", "tpu")
        with pytest.raises(ValueError, match="RLVR_FAST_BACKEND"):
            _dispatch.select_backend("op", torch.device("cpu"))

    def test_forced_error_reaches_public_api(self, monkeypatch):
        monkeypatch.setenv("RLVR_FAST_BACKEND", "cuda")
        with pytest.raises(RuntimeError, match="cannot be honoured"):
            rlvr_fast.token_logprobs(torch.randn(2, 3), torch.tensor([0, 1]))

    def test_cuda_fallback_logs_once(self, monkeypatch, caplog):
        monkeypatch.delenv("RLVR_FAST_BACKEND", raising=False)
        monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
        _dispatch._warned.clear()
        with caplog.at_level("WARNING", logger="rlvr_fast"):
            assert _dispatch.select_backend("opx", torch.device("cuda")) == "torch"
            assert _dispatch.select_backend("opx", torch.device("cuda")) == "torch"
        assert sum("falling back" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("skip", ["0", "1"])
def test_setup_chooses_the_extension_kind(skip):
    """CppExtension for a CPU build of torch (whatever GPU is attached); none with RLVR_FAST_SKIP_EXT=1."""
    import torch

    res = subprocess.run(
        [sys.executable, "setup.py", "--name"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "RLVR_FAST_SKIP_EXT": skip},
    )
    assert res.returncode == 0 and res.stdout.strip() == "rlvr_fast", res.stderr
    if skip == "1":
        assert "without the C++/CUDA extension" in res.stderr
    elif torch.version.cuda is None:
        assert "as CppExtension" in res.stderr
