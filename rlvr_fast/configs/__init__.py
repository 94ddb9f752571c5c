"""Config files shipped with the package: the demo configs and the run presets.

A preset is a YAML file in ``presets/`` (its name is the file name without ``.yaml``); ``rlvr-fast
train --preset NAME`` layers it under ``--config`` and the overrides. The files are the one place the
names are written: :func:`preset_names` lists them, :func:`preset_path` finds one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted (the ``.yaml`` files of ``rlvr_fast/configs/presets``)."""
    folder = resources.files(__name__) / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The file of the preset ``name``; ValueError listing the available names if there is none."""
    names = preset_names()
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(names)}")
    return Path(str(resources.files(__name__) / "presets" / f"{name}.yaml"))


__all__ = ["preset_names", "preset_path"]
