"""RT-1 / Open X-Embodiment episodes from RLVR-World's ``.npz`` files, as video-world clips.

:class:`OXEEpisodes` reads one file per episode as RLVR-World's converter writes it (``<display key>``:
uint8 [T, H, W, 3] RGB frames, ``action``: [T, D]) and cuts it into windows, each a
:class:`~rlvr_fast.worlds.video.VideoExample`. :data:`RT1_ACTION_RANGES` (or
:func:`compute_action_ranges` for other datasets) gives the per-dim (min, max) that
:func:`~rlvr_fast.worlds.video.discretize_actions` bins with. File format, splits, windows: docs/worlds.md.

Source: RLVR-World's converter ``vid_wm/oxe_data_converter.py`` and iVideoGPT's loader
``vid_wm/ivideogpt/ivideogpt/data/simple_dataloader.py`` (github.com/thuml/RLVR-World commit e1b8b6f).
"""

from __future__ import annotations

import glob
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .video import (
    SPLITS,
    VideoExample,
    _check_index,
    _check_ranges,
    _check_split,
    _hash_unit,
    load_action_ranges,
)

__all__ = [
    "DISPLAY_KEYS",
    "RT1_ACTION_NAMES",
    "RT1_ACTION_RANGES",
    "OXEEpisodes",
    "compute_action_ranges",
    "rt1_action_ranges",
]

# ----------------------------------------------------------------------------- action ranges

RT1_ACTION_NAMES: tuple[str, ...] = (
    "base_displacement_vector[0]",
    "base_displacement_vector[1]",
    "base_displacement_vertical_rotation",
    "gripper_closedness_action",
    "rotation_delta[0]",
    "rotation_delta[1]",
    "rotation_delta[2]",
    "terminate_episode[0]",
    "terminate_episode[1]",
    "terminate_episode[2]",
    "world_vector[0]",
    "world_vector[1]",
    "world_vector[2]",
)
"""The 13 RT-1 action dims in the converter's order (the RLDS action dict's sorted keys; the ranges
below confirm it: terminate_episode is the one-hot triple in [0, 1])."""

RT1_ACTION_RANGES: tuple[tuple[float, float], ...] = (
    (-0.39600884914398193, 0.39600181579589844),
    (-0.009631033055484295, 0.003676734399050474),
    (-0.4000452756881714, 0.39991137385368347),
    (-1.0, 1.0),
    (-1.569917917251587, 1.570636510848999),
    (-1.569892168045044, 1.5321086645126343),
    (-1.570419430732727, 1.5691522359848022),
    (0.0, 1.0),
    (0.0, 1.0),
    (0.0, 1.0),
    (-2.0204520225524902, 2.9984593391418457),
    (-5.497899532318115, 22.09052848815918),
    (-2.031663417816162, 2.7507524490356445),
)
"""(min, max) per RT-1 action dim: RLVR-World's ``vid_wm/ivideogpt/configs/vgpt/frac_action_ranges.pth``
(identical to ``vid_wm/verl/ivideogpt/configs/frac_action_ranges.pth``), exact float32 values."""


def rt1_action_ranges() -> torch.Tensor:
    """float32 [13, 2] RT-1 action ranges (column 0 min, column 1 max): :data:`RT1_ACTION_RANGES`."""
    return torch.tensor(RT1_ACTION_RANGES, dtype=torch.float32)


# ----------------------------------------------------------------------------- RT-1 / OXE episodes

DISPLAY_KEYS: dict[str, str] = {
    "taco_play": "rgb_static",
    "roboturk": "front_rgb",
    "viola": "agentview_rgb",
    "berkeley_autolab_ur5": "hand_image",
    "language_table": "rgb",
    "berkeley_mvp_converted_externally_to_rlds": "hand_image",
    "berkeley_rpt_converted_externally_to_rlds": "hand_image",
    "stanford_robocook_converted_externally_to_rlds1": "image_1",
    "stanford_robocook_converted_externally_to_rlds2": "image_2",
    "stanford_robocook_converted_externally_to_rlds3": "image_3",
    "stanford_robocook_converted_externally_to_rlds4": "image_4",
    "uiuc_d3field1": "image_1",
    "uiuc_d3field2": "image_2",
    "uiuc_d3field3": "image_3",
    "uiuc_d3field4": "image_4",
    "bair_robot_pushing": "aux1_image",
}
"""Frame key per OXE dataset (iVideoGPT ``get_display_key``); every other dataset, RT-1 included, uses
``"image"``."""

_FORMAT_HINT = (
    "RLVR-World's vid_wm/oxe_data_converter.py writes '<image key>': uint8 [T, H, W, 3] and "
    "'action': [T, D] per episode"
)


def _npz_files(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"episode directory {root!r} does not exist")
    files = sorted(glob.glob(os.path.join(root, "*.npz")))
    if not files:
        sub = os.path.join(root, "fractal20220817_data")
        if os.path.isdir(sub):
            files = sorted(glob.glob(os.path.join(sub, "*.npz")))
    if not files:
        raise FileNotFoundError(f"no .npz episode files in {root!r} (nor in its fractal20220817_data/); {_FORMAT_HINT}")
    return files


def _read_npz(path: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an npz file; ValueError naming the file (and the key) when it cannot."""
    z = None
    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.lib.npyio.NpzFile):
            present = sorted(z.files)
            missing = [k for k in keys if k not in present]
            if not missing:
                return {k: z[k] for k in keys}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e}); {_FORMAT_HINT}") from None
    finally:
        if isinstance(z, np.lib.npyio.NpzFile):
            z.close()
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bad file is a bad value: ValueError, like the rest
        what = type(z).__name__
        raise ValueError(f"{path}: holds a single {what}, not an .npz archive; {_FORMAT_HINT}")  # noqa: TRY004
    raise ValueError(f"{path}: missing key {missing[0]!r} (keys: {present}); {_FORMAT_HINT}")


def _npy_header(zf: zipfile.ZipFile, path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of array ``key`` in an npz archive, read from its header without loading it."""
    try:
        member = zf.open(key + ".npy")
    except KeyError:
        keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
        raise ValueError(f"{path}: missing key {key!r} (keys: {keys}); {_FORMAT_HINT}") from None
    try:
        with member as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: key {key!r} is not a readable .npy array ({type(e).__name__}: {e})") from None
    return tuple(shape), dtype


def _check_episode_arrays(
    path: str,
    image_key: str,
    fshape: tuple[int, ...],
    fdtype: np.dtype,
    ashape: tuple[int, ...],
    adtype: np.dtype,
) -> None:
    if fdtype != np.uint8 or len(fshape) != 4 or fshape[-1] != 3:
        raise ValueError(f"{path}: key {image_key!r} must be uint8 [T, H, W, 3] frames, got {fdtype} {list(fshape)}")
    if len(ashape) != 2 or not (np.issubdtype(adtype, np.floating) or np.issubdtype(adtype, np.integer)):
        raise ValueError(f"{path}: key 'action' must be a numeric [T, D] array, got {adtype} {list(ashape)}")
    if fshape[0] < 1 or ashape[0] != fshape[0]:
        raise ValueError(
            f"{path}: expected one action per frame and at least one frame, got {fshape[0]} frames "
            f"({image_key!r}) and {ashape[0]} actions ('action')"
        )


class OXEEpisodes:
    """RT-1 / Open X-Embodiment episodes from RLVR-World's ``.npz`` files, as :class:`VideoExample` s.

    Args:
        root: a directory of ``*.npz`` episodes (or one holding ``fractal20220817_data/*.npz``, the layout
            iVideoGPT's loader reads). File format, split rules and windows: docs/worlds.md.
        context_frames: C (RLVR-World single-step: 4).
        predict_frames: P (RLVR-World single-step: 1).
        image_key: the frames' key (``"image"`` for RT-1; :data:`DISPLAY_KEYS` for other datasets).
        frame_step: take every ``frame_step``-th frame and its action (iVideoGPT ``stepsize``; RLVR-World
            uses 1 for RT-1).
        stride: start of consecutive windows apart, in frames.
        resize: ``(H, W)`` to resize frames to (torch bilinear interpolation with antialiasing, what
            torchvision's ``F.resize`` does to tensors; RLVR-World uses (256, 320), RT-1's native size),
            or None to keep the stored size.
        split_rule: ``"ivideogpt"`` (sorted file ``i`` is held out iff ``i % 100 == 0``) or ``"hash"``
            (blake2b of the file name in the ``test_fraction`` bucket).
        test_fraction: held-out share for ``split_rule="hash"``.
        max_episodes: keep only the first ``max_episodes`` files of each split.
        action_ranges: [D, 2] ranges or a path to a ranges file, returned by :meth:`action_ranges` and
            checked against the episodes' D (default: :data:`RT1_ACTION_RANGES` when D = 13, else the
            min / max of the episodes, :func:`compute_action_ranges`).

    Frames come back float32 [T, 3, H, W] in [0, 1] (uint8 / 255), actions float32 [T, D]. The file
    list is read at construction; each split's index (frame counts from the npz headers, without
    decompressing frames) on first use. Errors name the file and the key.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        context_frames: int = 4,
        predict_frames: int = 1,
        *,
        image_key: str = "image",
        frame_step: int = 1,
        stride: int = 1,
        resize: tuple[int, int] | None = None,
        split_rule: str = "ivideogpt",
        test_fraction: float = 0.01,
        max_episodes: int | None = None,
        action_ranges: torch.Tensor | np.ndarray | str | os.PathLike | None = None,
    ) -> None:
        for name, value in (
            ("context_frames", context_frames),
            ("predict_frames", predict_frames),
            ("frame_step", frame_step),
            ("stride", stride),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if split_rule not in ("ivideogpt", "hash"):
            raise ValueError(f"split_rule: expected 'ivideogpt' or 'hash', got {split_rule!r}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
        if resize is not None:
            if len(resize) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in resize):
                raise ValueError(f"resize: expected (H, W) positive ints or None, got {resize!r}")
            resize = (int(resize[0]), int(resize[1]))
        if max_episodes is not None and max_episodes < 0:
            raise ValueError(f"max_episodes: expected >= 0 or None, got {max_episodes}")
        self.root = os.fspath(root)
        self.context_frames = context_frames
        self.predict_frames = predict_frames
        self.image_key = image_key
        self.frame_step = frame_step
        self.stride = stride
        self.resize = resize
        self.split_rule = split_rule
        self.test_fraction = test_fraction
        self.max_episodes = max_episodes
        self.all_files = _npz_files(self.root)
        """Every ``*.npz`` path, sorted (the order the ``ivideogpt`` split rule counts in)."""
        self._split_files: dict[str, list[str]] = {s: [] for s in SPLITS}
        for i, path in enumerate(self.all_files):
            self._split_files[self.split_of(i, path)].append(path)
        if max_episodes is not None:
            self._split_files = {s: f[:max_episodes] for s, f in self._split_files.items()}
        self._windows: dict[str, list[tuple[str, int, int]]] = {}
        self._action_dim: int | None = None
        self._ranges_arg = action_ranges
        self._ranges: torch.Tensor | None = None
        self._cache: tuple[str, np.ndarray, np.ndarray] | None = None

    # -- files and splits

    def split_of(self, index: int, path: str) -> str:
        """The split of sorted file ``index`` at ``path`` under :attr:`split_rule`."""
        if self.split_rule == "ivideogpt":
            return "test" if index % 100 == 0 else "train"
        return "test" if _hash_unit(os.path.basename(path).encode()) < self.test_fraction else "train"

    def files(self, split: str = "train") -> list[str]:
        """The episode files of ``split`` (sorted; at most ``max_episodes``)."""
        _check_split(split)
        return list(self._split_files[split])

    def _header(self, path: str) -> tuple[int, int]:
        """(frames T, action dim D) of an episode, from the npz headers; validates keys and shapes."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"episode file {path!r} does not exist")
        try:
            with zipfile.ZipFile(path) as zf:
                fshape, fdtype = _npy_header(zf, path, self.image_key)
                ashape, adtype = _npy_header(zf, path, "action")
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path}: not an .npz archive ({type(e).__name__}: {e}); {_FORMAT_HINT}") from None
        _check_episode_arrays(path, self.image_key, fshape, fdtype, ashape, adtype)
        return fshape[0], ashape[1]

    def _note_dim(self, path: str, d: int) -> None:
        if self._action_dim is None:
            self._action_dim = d
        elif d != self._action_dim:
            raise ValueError(f"{path}: 'action' has {d} dims, earlier episodes have {self._action_dim}")

    @property
    def span(self) -> int:
        """Frames one window covers in the episode: ``(C + P - 1) * frame_step + 1``."""
        return (self.context_frames + self.predict_frames - 1) * self.frame_step + 1

    def _index(self, split: str) -> list[tuple[str, int, int]]:
        if split not in self._windows:
            windows = []
            for path in self._split_files[split]:
                t, d = self._header(path)
                self._note_dim(path, d)
                starts = range(0, t - self.span + 1, self.stride) if t >= self.span else range(1)
                windows += [(path, s, t) for s in starts]
            self._windows[split] = windows
        return self._windows[split]

    def num_examples(self, split: str = "train") -> int:
        """How many examples (windows) ``split`` has."""
        _check_split(split)
        return len(self._index(split))

    @property
    def action_dim(self) -> int:
        """D, the action vector size (read from the first episode's header)."""
        if self._action_dim is None:
            path = self.all_files[0]
            self._note_dim(path, self._header(path)[1])
        assert self._action_dim is not None
        return self._action_dim

    def action_ranges(self) -> torch.Tensor:
        """float32 [D, 2] (min, max) per action dim for :func:`discretize_actions` (see ``__init__``)."""
        if self._ranges is None:
            arg = self._ranges_arg
            if arg is None:
                ranges = rt1_action_ranges() if self.action_dim == 13 else compute_action_ranges(self.all_files)
            elif isinstance(arg, (str, os.PathLike)):
                ranges = load_action_ranges(arg)
            else:
                ranges = _check_ranges(arg, "action_ranges")
            if ranges.shape[0] != self.action_dim:
                raise ValueError(
                    f"action_ranges: {ranges.shape[0]} dims, but the episodes in {self.root!r} have "
                    f"{self.action_dim}-dim actions"
                )
            self._ranges = ranges
        return self._ranges

    # -- loading

    def load_episode(self, path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
        """One whole episode: frames float32 [T, 3, H, W] in [0, 1] (resized if asked), actions float32 [T, D]."""
        frames, actions = self._arrays(os.fspath(path))
        return self._frames(frames), torch.from_numpy(actions.astype(np.float32))

    def _arrays(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1], self._cache[2]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"episode file {path!r} does not exist")
        arrays = _read_npz(path, (self.image_key, "action"))
        frames, actions = arrays[self.image_key], arrays["action"]
        _check_episode_arrays(path, self.image_key, frames.shape, frames.dtype, actions.shape, actions.dtype)
        self._note_dim(path, actions.shape[1])
        if not np.isfinite(actions).all():
            raise ValueError(f"{path}: key 'action' holds NaN or inf")
        self._cache = (path, frames, actions)
        return frames, actions

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.resize is not None and tuple(x.shape[-2:]) != self.resize:
            x = torch.nn.functional.interpolate(
                x, size=self.resize, mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        return x.contiguous()

    def sample(self, index: int, split: str = "train") -> VideoExample:
        """Example ``index`` of ``split``: windows in file order, then start order (docs/worlds.md).

        context [C, 3, H, W], actions [C + P, D], target [P, 3, H, W], float32; ``source`` is
        ``"<file>:<start>"``; ``extra`` = ``{"file", "start", "frame_indices"}``.
        """
        _check_split(split)
        _check_index(index)
        windows = self._index(split)
        if index >= len(windows):
            raise IndexError(f"index: {split} has {len(windows)} examples, got index {index}")
        path, start, _ = windows[int(index)]
        frames, actions = self._arrays(path)
        n = self.context_frames + self.predict_frames
        idx = [min(start + j * self.frame_step, frames.shape[0] - 1) for j in range(n)]
        clip = self._frames(frames[idx])
        return VideoExample(
            context=clip[: self.context_frames],
            actions=torch.from_numpy(actions[idx].astype(np.float32)),
            target=clip[self.context_frames :],
            source=f"{path}:{start}",
            extra={"file": path, "start": start, "frame_indices": idx},
        )

    def examples(self, split: str = "train", n: int | None = None) -> Iterator[VideoExample]:
        """The examples of ``split`` in order (the first ``n``, or all when ``n`` is None)."""
        total = self.num_examples(split)
        for i in range(total if n is None else min(n, total)):
            yield self.sample(i, split)

    def __len__(self) -> int:
        """Train examples (``num_examples("train")``)."""
        return self.num_examples("train")


def compute_action_ranges(files: str | os.PathLike | Sequence[str | os.PathLike]) -> torch.Tensor:
    """float32 [D, 2] per-dim (min, max) of ``action`` over episode files (or a directory of them), as
    RLVR-World's ``vid_wm/verl/ivideogpt/scripts/summarize_action_ranges.py`` computes
    ``frac_action_ranges.pth`` (which covers every episode, held-out ones included)."""
    if isinstance(files, (str, os.PathLike)):
        files = _npz_files(os.fspath(files))
    lo = hi = None
    for f in files:
        path = os.fspath(f)
        a = _read_npz(path, ("action",))["action"]
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{path}: key 'action' must be numeric, got {a.dtype}")
        a = a.astype(np.float32)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"{path}: key 'action' must be a non-empty [T, D] array, got shape {list(a.shape)}")
        if lo is not None and a.shape[1] != lo.shape[0]:
            raise ValueError(f"{path}: 'action' has {a.shape[1]} dims, earlier episodes have {lo.shape[0]}")
        lo = a.min(0) if lo is None else np.minimum(lo, a.min(0))
        hi = a.max(0) if hi is None else np.maximum(hi, a.max(0))
    if lo is None:
        raise ValueError("compute_action_ranges: no episode files given")
    return torch.from_numpy(np.stack([lo, hi], axis=1).astype(np.float32))
