"""Checkpoints that are never lost and never run code.

A checkpoint directory holds ``model.safetensors`` (weights), ``config.json`` and the tokenizer files
(so ``from_pretrained`` can load it), a task's own assets (video worlds: ``frame_tokenizer/``, the
frame tokenizer the model's tokens belong to), and the trainer state: optimizer, LR scheduler, RNG states
(python, numpy, torch CPU and CUDA), the data stream position, the step counters and the metric
history needed to continue exactly. The state is split into ``trainer_state.safetensors`` (every
tensor) and ``trainer_state.json`` (everything else, with references to those tensors, plus the size and,
but for safetensors files, the sha256 of every other file of the directory). Neither format can execute
code when read, unlike a pickle.

Writing: everything goes into ``<name>.tmp``, is fsynced and verified (re-read: sizes, hashes, safetensors
headers, JSON), then the current ``<name>`` becomes ``<name>.prev`` and the new one is renamed into
place. So the last good checkpoint survives until the next one is complete, and a crash at any point
leaves at least one. Reading (:func:`load_checkpoint`) tries ``<name>``, then ``<name>.prev``: a
missing, truncated or modified file is named in a warning and the next one is used.

Checkpoints of the previous format (``trainer_state.pt``, a ``torch.save`` pickle) are still read, with
``torch.load(weights_only=True)`` and only numpy's array reconstruction allow-listed (for the numpy RNG
state); the next save writes the new format. A ``trainer_state.pt`` holding anything else (code,
arbitrary classes) was not written by rlvr_fast: it is refused with a :class:`CheckpointError` naming
it, never executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE = "trainer_state.pt"  # the previous format (a pickle), read safely or refused
FORMAT = 2
PREVIOUS = ".prev"  # the last good checkpoint, kept until the next one is complete
_NUMERIC_KINDS = "biuf"  # numpy dtypes a state may hold (bool, int, uint, float)


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, modified, unsafe or does not match the model; the message
    names the file."""


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch CPU (and, once initialised, CUDA) random generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states returned by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ state <-> JSON + tensors
def encode_state(obj: Any, tensors: dict[str, torch.Tensor], where: str = "state") -> Any:
    """``obj`` as plain JSON data; its tensors are moved into ``tensors`` (CPU clones) and referenced by key.

    Handles dicts (any keys), lists, tuples, tensors, numeric numpy arrays and scalars, str, int, float
    (NaN and infinities included), bool and None; anything else is a TypeError naming where it is."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        # clone: tensors sharing storage (tied weights) are refused by safetensors
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"{where}: cannot store a numpy array of dtype {obj.dtype}")
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return encode_state(obj.item(), tensors, where)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {"__float__": repr(float(obj))}  # strict JSON: no NaN
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        # non-string keys (the optimizer's parameter indices) as pairs, so their type survives
        pairs = [[encode_state(k, tensors, where), encode_state(v, tensors, f"{where}[{k!r}]")] for k, v in obj.items()]
        return {"__items__": pairs}
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`; raises KeyError / TypeError / ValueError on malformed data."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in obj["__items__"]}
    if "__float__" in obj:
        value = float(obj["__float__"])
        if math.isfinite(value):
            raise ValueError(f"__float__ {obj['__float__']!r} is finite")
        return value
    if "__ndarray__" in obj:
        dtype = np.dtype(str(obj["dtype"]))
        if dtype.kind not in _NUMERIC_KINDS:
            raise ValueError(f"numpy dtype {dtype} is not numeric")
        return np.array(obj["__ndarray__"], dtype=dtype).reshape(obj["shape"])
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise TypeError(f"a dictionary key cannot be a {type(key).__name__}")
    return key


# ------------------------------------------------------------------------------ writing
def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _files(directory: Path) -> Iterable[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _describe(file: Path) -> dict[str, Any]:
    """Size, and a hash except for safetensors files: those can be large and their headers are parsed."""
    out: dict[str, Any] = {"bytes": file.stat().st_size}
    if file.suffix != ".safetensors":
        out["sha256"] = _sha256(file)
    return out


def _is_good(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def save_checkpoint(
    path: str | Path,
    model,
    tokenizer,
    state: dict[str, Any],
    weights: dict | None = None,
    assets: Callable[[Path], Any] | None = None,
    keep_previous: bool = True,
) -> Path:
    """Write ``model`` (an unwrapped HF model; ``weights`` overrides its state dict, e.g. the gathered
    FSDP one), ``tokenizer`` and ``state`` to ``path`` atomically; ``assets(dir)`` adds a task's own
    files (a video task's frame tokenizer) before the directory is verified and renamed into place.
    keep_previous: the checkpoint it replaces becomes ``<path>.prev`` (else it is deleted)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = model.state_dict() if weights is None else weights
    # clone: tied embeddings share storage, which safetensors refuses; contiguous for the file format
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    save_file(weights, tmp / WEIGHTS, metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if assets is not None:
        assets(tmp)
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(state, tensors)
    save_file(tensors, tmp / STATE_TENSORS)
    files = {p.relative_to(tmp).as_posix(): _describe(p) for p in _files(tmp)}
    doc = {"format": FORMAT, "files": files, "state": encoded}
    (tmp / STATE_JSON).write_text(json.dumps(doc, allow_nan=False))
    for p in _files(tmp):  # the renames below must not precede the data
        _fsync(p)
    verify_checkpoint(tmp)
    previous = path.with_name(path.name + (PREVIOUS if keep_previous else ".old"))
    if path.exists():
        if keep_previous and not _is_good(path):  # never let a broken checkpoint replace a good .prev
            log.warning("replacing the broken checkpoint %s (keeping %s)", path, previous)
            shutil.rmtree(path)
        else:
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)
    os.replace(tmp, path)
    if not keep_previous:
        shutil.rmtree(previous, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the renames durable (not possible everywhere)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


# ------------------------------------------------------------------------------ reading
def _name(file: Path) -> str:
    return repr(str(file))


def _bad(file: Path, what: str, e: BaseException | None = None) -> CheckpointError:
    detail = f" ({type(e).__name__}: {str(e)[:200]})" if e is not None else ""
    return CheckpointError(f"checkpoint file {_name(file)} {what}{detail}")


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(file, "is truncated or not JSON", e) from None


def _check_safetensors(file: Path) -> None:
    """Parse the header (the tensors' offsets must fit the file): catches truncation without reading data."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise _bad(file, "is truncated or not a safetensors file", e) from None


def verify_checkpoint(path: str | Path) -> dict | None:
    """Check a checkpoint directory without loading it: ``trainer_state.json`` parses, every file it lists
    exists with the size (and, but for safetensors files, the sha256) it was written with, and the
    safetensors headers parse. Returns the parsed ``trainer_state.json``, or None for a previous-format
    checkpoint (``trainer_state.pt``, not checked here). Raises :class:`CheckpointError` naming the first
    bad file."""
    path = Path(path)
    doc_file = path / STATE_JSON
    if not doc_file.is_file():
        if (path / LEGACY_STATE).is_file() and (path / WEIGHTS).is_file():
            return None
        raise CheckpointError(f"checkpoint {_name(path)} is incomplete: no {STATE_JSON}")
    doc = _read_json(doc_file)
    files = doc.get("files") if isinstance(doc, dict) else None
    if not (isinstance(files, dict) and doc.get("format") == FORMAT and "state" in doc):
        raise CheckpointError(f"checkpoint file {_name(doc_file)} is not a trainer state of format {FORMAT}")
    for rel in (WEIGHTS, STATE_TENSORS):
        if rel not in files:
            raise CheckpointError(f"checkpoint file {_name(doc_file)} does not list {rel}")
    for rel, want in files.items():
        file = path / rel
        if not (isinstance(want, dict) and file.resolve().is_relative_to(path.resolve())):
            raise CheckpointError(f"checkpoint file {_name(doc_file)} has a bad entry for {rel!r}")
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {_name(file)} is missing")
        size = file.stat().st_size
        if size != want.get("bytes"):
            written = want.get("bytes")
            raise _bad(file, f"has {size} bytes, not {written}: truncated or modified")
        if "sha256" in want and _sha256(file) != want["sha256"]:
            raise CheckpointError(f"checkpoint file {_name(file)} was modified after it was written (sha256)")
        if file.suffix == ".safetensors":
            _check_safetensors(file)
    return doc


def _load_safetensors(file: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device=device)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise _bad(file, "cannot be read", e) from None


def _legacy_safe_globals() -> list:
    """What a previous-format state needs beyond tensors and plain data: numpy's RNG key array."""
    from numpy._core import multiarray  # numpy 2; pickles of numpy 1 name numpy.core.multiarray

    reconstruct = multiarray._reconstruct
    dtypes = [np.dtypes.UInt32DType, np.dtypes.Int64DType, np.dtypes.Float64DType, np.dtypes.BoolDType]
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtypes]


def _unpickling_reason(message: str) -> str:
    """The line of torch's weights-only error that says what was refused (not its advice to load unsafely)."""
    for line in message.splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        advice = ("Weights only load failed", "Check the documentation", "(1)", "(2)")
        if line and not line.startswith(advice):
            return line[:200]
    return "an object that is not a tensor or plain data"


def _read_legacy_state(file: Path, map_location="cpu") -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = _unpickling_reason(str(e))
        raise CheckpointError(
            f"checkpoint file {_name(file)} (previous format, a pickle) holds more than tensors and data "
            f"({first}); it was not loaded, because loading it could run code. Only resume from checkpoints "
            "you wrote: rlvr_fast never writes such a file"
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever torch.load raises on a damaged file
        raise _bad(file, "is truncated or not a trainer state", e) from None


def read_trainer_state(path: str | Path, required: Iterable[str] = (), map_location="cpu") -> dict[str, Any]:
    """The trainer state of the checkpoint directory ``path`` (verified first; never runs code).
    required: keys the state must have. Raises :class:`CheckpointError` naming the bad file."""
    path = Path(path)
    doc = verify_checkpoint(path)
    if doc is None:
        file, state = path / LEGACY_STATE, _read_legacy_state(path / LEGACY_STATE, map_location)
    else:
        file = path / STATE_JSON
        tensors = _load_safetensors(path / STATE_TENSORS, str(map_location))
        try:
            state = decode_state(doc["state"], tensors)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _bad(file, "is malformed", e) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {_name(file)} holds a {type(state).__name__}, not a state")
    missing = sorted(set(required) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint file {_name(file)} lacks {missing}")
    return state


def _candidates(path: Path) -> list[Path]:
    # .old: the previous format's name for the checkpoint being replaced
    names = (path.name, path.name + PREVIOUS, path.name + ".old")
    return [path.with_name(n) for n in names if path.with_name(n).is_dir()]


def load_checkpoint(
    path: str | Path,
    model,
    *,
    map_location="cpu",
    required: Iterable[str] = (),
    check: Callable[[dict], Any] | None = None,
) -> dict[str, Any]:
    """Load weights into ``model`` (strict) and return the trainer state dict.

    Tries ``path``, then ``<path>.prev``: a checkpoint with a missing, truncated or modified file is named
    in a warning and skipped. The state's ``"loaded_from"`` is the directory used. required: keys the
    state must have. check(state): called before the weights are loaded (may refuse by raising).
    Raises FileNotFoundError if there is no checkpoint, :class:`CheckpointError` if none is usable or the
    weights do not match the model. map_location: where the state's tensors go."""
    path = Path(path)
    candidates = _candidates(path)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (expected {WEIGHTS} and {STATE_JSON})")
    device = str(next(model.parameters()).device)
    problems = []
    for directory in candidates:
        try:
            state = read_trainer_state(directory, required, map_location)
            weights = _load_safetensors(directory / WEIGHTS, device)
        except CheckpointError as e:
            problems.append(str(e))
            log.warning("%s: cannot resume from %s", e, directory)
            continue
        if directory != path:
            log.warning("resuming from the previous good checkpoint %s instead of %s", directory, path)
        if check is not None:
            check(state)
        _load_weights(model, weights, directory / WEIGHTS)
        state["loaded_from"] = str(directory)
        return state
    raise CheckpointError(f"no usable checkpoint at {str(path)!r}: " + "; ".join(problems))


def _load_weights(model, weights: dict[str, torch.Tensor], file: Path) -> None:
    """Check names and shapes first, so a mismatch leaves the model untouched."""
    own = model.state_dict()
    # tied weights are saved under both names; a missing tied name is fine, anything else is not
    missing = sorted(k for k in set(own) - set(weights) if not k.endswith("lm_head.weight"))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint file {_name(file)} does not match the model: missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {shapes}"
        )
    model.load_state_dict(weights, strict=False)
