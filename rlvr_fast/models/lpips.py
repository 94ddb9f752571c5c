"""LPIPS with a VGG16 trunk (v0.1), the perceptual reward of RLVR-World's video world model.

Source: Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"
(https://arxiv.org/abs/1801.03924), as implemented by the ``lpips`` package (richzhang/
PerceptualSimilarity, ``lpips/lpips.py`` and ``lpips/pretrained_networks.py``) and its copy in
taming-transformers (``taming/modules/losses/lpips.py``). RLVR-World calls it with ``net='vgg'`` on
frames in [0, 1] mapped with ``x * 2 - 1``; :class:`LPIPS` takes [0, 1] frames and does that mapping.

For images ``x0, x1`` of shape [3, H, W] in [0, 1]::

    z      = (2 x - 1 - shift) / scale           shift = [-.030, -.088, -.188], scale = [.458, .448, .450]
    f_l    = VGG16 features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3      (l = 0..4)
    u_l    = f_l / (sqrt(sum_c f_l^2) + 1e-10)   unit length over channels at every pixel
    LPIPS  = sum_l mean_hw( sum_c w_l[c] * (u_l(x0) - u_l(x1))^2 )

where ``w_l`` is the learned "lin" 1x1 convolution (no bias, weight [1, C_l, 1, 1]). Nothing is
clamped: inputs outside [0, 1] pass through, as in the ``lpips`` package.

Weights are never downloaded: :meth:`LPIPS.from_files` reads torchvision's ``vgg16-397923af.pth``
(or a safetensors copy) and the ``lpips`` repo's ``lpips/weights/v0.1/vgg.pth`` from local paths;
:func:`lpips_vgg16_schema` gives the keys and shapes both files must hold.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from rlvr_fast._checks import FLOAT_DTYPES, check_same_device, check_tensor
from rlvr_fast.models._files import check_against_schema, read_state_dict

# torchvision's vgg16 `features`: conv layers (3x3, padding 1) at these indices, a ReLU after each,
# MaxPool2d(2, 2) at 4, 9, 16, 23. LPIPS stops before the last pool (index 30).
VGG16_CONV_LAYERS: tuple[tuple[int, int, int], ...] = (
    # (index, in_channels, out_channels)
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
)
VGG16_POOL_LAYERS = (4, 9, 16, 23)
# Taps are the outputs of features[0:4], [4:9], [9:16], [16:23], [23:30]: relu1_2 ... relu5_3.
LPIPS_TAP_ENDS = (4, 9, 16, 23, 30)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# The v0.1 scaling layer (lpips' ScalingLayer): ImageNet statistics expressed in [-1, 1] units.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10
# Four 2x2 pools before relu5_3: smaller images leave an empty last tap.
MIN_SIZE = 16

_VGG_FILE_HELP = (
    "torchvision's VGG16 ImageNet state dict (vgg16-397923af.pth, from "
    "https://download.pytorch.org/models/vgg16-397923af.pth, or a .safetensors copy of it)"
)
_LIN_FILE_HELP = (
    "the lpips package's v0.1 linear-layer weights for net='vgg' (lpips/weights/v0.1/vgg.pth in "
    "https://github.com/richzhang/PerceptualSimilarity, shipped inside `pip install lpips`)"
)


def lpips_vgg16_schema() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Expected ``{key: shape}`` of the two weight files, as ``(vgg16_schema, lin_schema)``.

    vgg16: torchvision's ``vgg16`` state dict keys ``features.<idx>.weight`` [C_out, C_in, 3, 3] and
    ``features.<idx>.bias`` [C_out] for the 13 conv layers (``classifier.*`` keys may also be present
    in the file and are ignored). lin: the ``lpips`` package's keys ``lin<l>.model.1.weight``
    [1, C_l, 1, 1], C_l = 64, 128, 256, 512, 512 (``model.1`` because a Dropout sits at ``model.0``).
    """
    vgg: dict[str, tuple[int, ...]] = {}
    for idx, cin, cout in VGG16_CONV_LAYERS:
        vgg[f"features.{idx}.weight"] = (cout, cin, 3, 3)
        vgg[f"features.{idx}.bias"] = (cout,)
    lin = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}
    return vgg, lin


def _check_images(name: str, x) -> None:
    check_tensor(name, x, dtypes=FLOAT_DTYPES, ndim=4)
    if x.shape[1] != 3:
        raise ValueError(f"{name}: expected RGB images [N, 3, H, W], got shape {tuple(x.shape)}")
    if x.shape[2] < MIN_SIZE or x.shape[3] < MIN_SIZE:
        raise ValueError(
            f"{name}: expected H, W >= {MIN_SIZE} (VGG16 pools four times before relu5_3), got shape {tuple(x.shape)}"
        )


def _check_count(name: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int{' or None' if allow_none else ''}, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")


def _group_segments(start: int, stop: int, group_size: int) -> Iterator[tuple[int, int, int, int]]:
    """Split predictions [start, stop) into runs ``(a, b, g0, g1)`` that each view as [g1 - g0, k].

    A run is either whole groups (k = group_size) or a piece of one group (g1 = g0 + 1), so each
    run's target features broadcast with ``unsqueeze(1)`` and are never repeated.
    """
    a = start
    while a < stop:
        g = a // group_size
        if a % group_size == 0 and stop - a >= group_size:
            m = (stop - a) // group_size
            yield a, a + m * group_size, g, g + m
            a += m * group_size
        else:
            b = min(stop, (g + 1) * group_size)
            yield a, b, g, g + 1
            a = b


class LPIPS(nn.Module):
    """LPIPS v0.1 with a VGG16 trunk: ``LPIPS(pred, target, group_size=k)`` -> float32 [B].

    Built with random weights (torchvision's VGG init: Kaiming-normal fan-out convs, zero biases;
    non-negative lin weights, like the trained ones, which the ``lpips`` trainer clamps at 0), drawn
    from torch's global generator. Use :meth:`from_files` for the real metric. Parameters are frozen
    and the module starts in eval mode (there is no dropout or batch norm, so the mode changes
    nothing). Gradients still flow to ``pred`` if it requires them; wrap reward calls in
    ``torch.no_grad()``.

    The trunk runs in the module's dtype (``.to(torch.bfloat16)`` works); the input mapping, tap
    normalisation and distances run in float32 (float64 for a float64 module).
    """

    def __init__(self) -> None:
        super().__init__()
        conv_at = {idx: (cin, cout) for idx, cin, cout in VGG16_CONV_LAYERS}
        layers: list[nn.Module] = []
        for i in range(LPIPS_TAP_ENDS[-1]):
            if i in conv_at:
                layers.append(nn.Conv2d(*conv_at[i], kernel_size=3, padding=1))
            elif i in VGG16_POOL_LAYERS:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # in place is safe: every tap is normalised into a new tensor before the next layer
                layers.append(nn.ReLU(inplace=True))
        # indices match torchvision's `features.<idx>`, so the file maps key for key
        self.vgg = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        # not persistent: constants of the formula, not weights, so state_dict holds only the files' tensors
        self.register_buffer("shift", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.empty(1, 3, 1, 1), persistent=False)
        self._fill_constants()
        for m in self.vgg:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for lin in self.lins:
            nn.init.uniform_(lin.weight, 0.0, 2.0 / lin.weight.shape[1])
        self.requires_grad_(False)
        self.eval()

    def _fill_constants(self) -> None:
        with torch.no_grad():
            self.shift.copy_(torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
            self.scale.copy_(torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    @classmethod
    def from_files(cls, vgg16_path, lin_path, *, device=None, dtype=None) -> LPIPS:
        """The real LPIPS-VGG metric from two local files (nothing is downloaded).

        vgg16_path: torchvision's ``vgg16-397923af.pth`` (``.pth``/``.pt`` read with
        ``torch.load(weights_only=True)``, or a ``.safetensors`` copy): ``features.<idx>.weight/bias``
        as in :func:`lpips_vgg16_schema`; ``classifier.*`` keys are ignored.
        lin_path: the ``lpips`` package's ``lpips/weights/v0.1/vgg.pth`` (``lin0..lin4.model.1.weight``,
        [1, C_l, 1, 1]). device / dtype: where the module lives and the trunk's dtype (default CPU,
        float32).

        Raises FileNotFoundError for a missing file (naming the path and the file expected there),
        ValueError naming a file that cannot be read (truncated, empty, garbage), and ValueError listing
        missing keys, unexpected keys (other than ``classifier.*`` in the VGG file)
        and wrong shapes. Unlike the ``lpips`` package (``strict=False``), nothing is left at random.
        Does not touch torch's global random generator.
        """
        vgg_schema, lin_schema = lpips_vgg16_schema()
        vgg_sd = read_state_dict(vgg16_path, _VGG_FILE_HELP)
        check_against_schema(vgg_sd, vgg_schema, vgg16_path, _VGG_FILE_HELP, ignore_prefixes=("classifier.",))
        lin_sd = read_state_dict(lin_path, _LIN_FILE_HELP)
        check_against_schema(lin_sd, lin_schema, lin_path, _LIN_FILE_HELP)

        state = {f"vgg.{k.removeprefix('features.')}": vgg_sd[k] for k in vgg_schema}
        for k in range(len(LPIPS_CHANNELS)):
            state[f"lins.{k}.weight"] = lin_sd[f"lin{k}.model.1.weight"]
        # build on meta: no random init to throw away and no draw from the global generator
        with torch.device("meta"):
            model = cls()
        model = model.to_empty(device=device if device is not None else "cpu")
        if dtype is not None:
            model = model.to(dtype=dtype)
        model.load_state_dict(state, strict=True)
        model._fill_constants()
        return model

    def _compute_dtype(self) -> torch.dtype:
        return torch.float64 if self.lins[0].weight.dtype == torch.float64 else torch.float32

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised VGG16 taps of ``x`` [N, 3, H, W] (any float dtype, values in [0, 1]).

        Returns ``[u_0, ..., u_4]`` with ``u_l`` [N, C_l, H / 2^l, W / 2^l] (floored), C_l = 64, 128,
        256, 512, 512, in float32 (float64 for a float64 module): ``f_l / (sqrt(sum_c f_l^2) + 1e-10)``
        of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 applied to ``(2 x - 1 - shift) / scale``.
        """
        _check_images("x", x)
        check_same_device(x=x, model=self.shift)
        cdt = self._compute_dtype()
        net_dtype = self.lins[0].weight.dtype
        h = ((x.to(cdt) * 2 - 1 - self.shift.to(cdt)) / self.scale.to(cdt)).to(net_dtype)
        taps = []
        start = 0
        for end in LPIPS_TAP_ENDS:
            for i in range(start, end):
                h = self.vgg[i](h)
            f = h.to(cdt)
            taps.append(f / (f.square().sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS))
            start = end
        return taps

    def _distance(self, fp: list[torch.Tensor], ft: list[torch.Tensor], start: int, group_size: int) -> torch.Tensor:
        """LPIPS of predictions [start, start + n) (taps ``fp``) against their groups' taps in ``ft``."""
        n = fp[0].shape[0]
        out = []
        for a, b, g0, g1 in _group_segments(start, start + n, group_size):
            m = g1 - g0
            score = None
            for u_p, u_t, lin in zip(fp, ft, self.lins):
                p = u_p[a - start : b - start].unflatten(0, (m, (b - a) // m))  # [m, k, C, h, w]
                d = (p - u_t[g0:g1].unsqueeze(1)).square()  # target broadcast over the group
                w = lin.weight.to(d.dtype).view(-1)
                # mean_hw(sum_c w_c d_c) == sum_c w_c mean_hw(d_c): average first, then the 1x1 conv
                s = d.mean(dim=(-2, -1)) @ w  # [m, k]
                score = s if score is None else score + s
            out.append(score.flatten())
        return torch.cat(out)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, *, group_size: int = 1, chunk_size: int | None = None
    ) -> torch.Tensor:
        """LPIPS of every prediction against its group's target -> float32 [B].

        pred: [B, 3, H, W] float (any of float32/bf16/fp16/fp64), values in [0, 1]; predictions of one
        group are contiguous (prediction i belongs to group ``i // group_size``).
        target: [G, 3, H, W] float, same H, W, device; G = B / group_size.
        group_size: predictions per target (GRPO's n). Each target goes through the network once and
        its taps are broadcast over the group (views, never repeated).
        chunk_size: at most this many predictions through the network at once (None: all B), to
        bound activation memory; results do not depend on it beyond float rounding.

        Formula: Zhang et al. 2018 v0.1 as in the ``lpips`` package (see the module docstring).
        """
        _check_images("pred", pred)
        _check_images("target", target)
        check_same_device(pred=pred, target=target, model=self.shift)
        _check_count("group_size", group_size)
        _check_count("chunk_size", chunk_size, allow_none=True)
        if target.shape[2:] != pred.shape[2:]:
            raise ValueError(
                f"target: expected the same H, W as pred {tuple(pred.shape)}, got shape {tuple(target.shape)}"
            )
        B, G = pred.shape[0], target.shape[0]
        if B % group_size != 0:
            raise ValueError(f"group_size: expected a divisor of pred's batch B={B}, got {group_size}")
        if G * group_size != B:
            raise ValueError(
                f"target: expected B / group_size = {B // group_size} images "
                f"(B={B}, group_size={group_size}), got shape {tuple(target.shape)}"
            )
        if B == 0:
            return torch.zeros(0, dtype=torch.float32, device=pred.device)
        ft = self.features(target)
        step = B if chunk_size is None else chunk_size
        scores = [self._distance(self.features(pred[s : s + step]), ft, s, group_size) for s in range(0, B, step)]
        return torch.cat(scores).to(torch.float32)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"version=0.1, trunk=vgg16, params={n / 1e6:.2f}M, taps at {list(LPIPS_TAP_ENDS)}"


__all__ = ["LPIPS", "LPIPS_CHANNELS", "LPIPS_EPS", "LPIPS_SCALE", "LPIPS_SHIFT", "lpips_vgg16_schema"]
