"""Checkpoints in safetensors only (the only module that imports safetensors).

A model checkpoint is self-describing: its metadata holds a format version, the model and
diffusion configs as JSON and provenance, so loading rebuilds the exact network and loads it
strictly. Pickles are refused from their magic bytes, whatever their name: loading one could run
arbitrary code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from vdgen.atomic import atomic_path
from vdgen.config import DiffusionConfig, ModelConfig, from_dict, to_dict
from vdgen.diffusion import Denoiser
from vdgen.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1
FORMAT_NAME = "vdgen-model"
MAX_HEADER_BYTES = 16 * 1024 * 1024
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` and string `metadata` to `path` as safetensors, atomically."""
    from safetensors.torch import save_file

    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_path(Path(path)) as tmp:
        mode = tmp.stat().st_mode
        save_file(contiguous, str(tmp), metadata=metadata)
        # safetensors replaces the file with its own 0600 one: keep the umask-based mode atomic_path set.
        os.chmod(tmp, mode)


def read_header(path: Path) -> dict[str, Any]:
    """Validate the safetensors header of `path` without loading tensors; return it parsed."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError(f"{path}: is empty (0 bytes), not a checkpoint")
        with open(path, "rb") as handle:
            head = handle.read(9)
            # A safetensors header is JSON, so a plausible length followed by "{" is safetensors even
            # when the length's low byte happens to be a pickle's 0x80 or zip's "PK" (about 1 file in 32).
            safetensors_like = _plausible_length(head, size) and head[8:9] == b"{"
            if not safetensors_like and (_looks_like_pickle(head) or path.suffix.lower() in _PICKLE_SUFFIXES):
                raise CheckpointError(
                    f"{path}: is a pickle (torch.save) file; vdgen loads only safetensors, "
                    "because unpickling a file can run arbitrary code"
                )
            if len(head) < 8:
                raise CheckpointError(f"{path}: too short to be a safetensors checkpoint")
            (header_len,) = struct.unpack("<Q", head[:8])
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise CheckpointError(f"{path}: malformed safetensors header (declared {header_len} bytes)")
            handle.seek(8)
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed safetensors header (not JSON)") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed safetensors header")
    data_len = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise CheckpointError(f"{path}: malformed safetensors metadata")
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("dtype"), str)
            or not isinstance(shape, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise CheckpointError(f"{path}: malformed safetensors entry for tensor {name!r}")
    return header


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read all tensors and the metadata of a safetensors file, validating it first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load safetensors ({str(exc).splitlines()[0]})") from exc
    return tensors, dict(header.get("__metadata__", {}))


def _looks_like_pickle(head: bytes) -> bool:
    # Pickle protocol 2+ starts with PROTO (0x80); torch.save's zip format starts with "PK".
    return head[:1] == b"\x80" or head[:2] == b"PK"


def _plausible_length(head: bytes, size: int) -> bool:
    if len(head) < 8:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return header_len <= min(MAX_HEADER_BYTES, size - 8)


MAX_PARAMETERS = 2_000_000_000
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A network rebuilt from a checkpoint, with its diffusion config and provenance."""

    net: torch.nn.Module
    model_config: ModelConfig
    diffusion_config: DiffusionConfig
    provenance: dict[str, Any]
    path: Path

    def denoiser(self, image_mask: torch.Tensor | None = None) -> Denoiser:
        return Denoiser(self.net, self.diffusion_config, image_mask)


def model_metadata(model_config: ModelConfig, diffusion_config: DiffusionConfig, provenance: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata of a model checkpoint."""
    import vdgen

    provenance = {"vdgen_version": vdgen.__version__, **provenance}
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(to_dict(model_config)),
        "diffusion_config": json.dumps(to_dict(diffusion_config)),
        "provenance": json.dumps(provenance),
    }


def save_model(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    diffusion_config: DiffusionConfig,
    provenance: dict[str, Any],
) -> None:
    """Write a release checkpoint: weights (usually the EMA) plus configs and provenance."""
    save_tensors(path, state_dict, model_metadata(model_config, diffusion_config, provenance))


def read_model_configs(path: Path) -> tuple[ModelConfig, DiffusionConfig, dict[str, Any], dict[str, Any]]:
    """Parse and validate a model checkpoint's metadata without loading its tensors."""
    header = read_header(path)
    meta = header.get("__metadata__", {})
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a vdgen model checkpoint (no '{FORMAT_NAME}' format tag)")
    version = meta.get("format_version", "")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported (this vdgen reads {FORMAT_VERSION})")
    try:
        model_data = json.loads(meta["model_config"])
        diffusion_data = json.loads(meta["diffusion_config"])
        provenance = json.loads(meta.get("provenance", "{}"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is missing or not JSON ({exc})") from exc
    try:
        model_config = from_dict(ModelConfig, model_data, "model")
        diffusion_config = from_dict(DiffusionConfig, diffusion_data, "diffusion")
    except ConfigError as exc:
        # Key names come from the file: escape control characters so the message stays one line.
        raise CheckpointError(f"{path}: {str(exc).encode('unicode_escape').decode('ascii')}") from exc
    if not isinstance(provenance, dict):
        provenance = {}
    return model_config, diffusion_config, provenance, header


def build_network(model_config: ModelConfig, source: str = "config") -> torch.nn.Module:
    """Build the U-Net, refusing absurd sizes before any memory is allocated."""
    from vdgen.unet import UNet3D

    _meta_network(model_config, source)
    return UNet3D(model_config)


def _meta_network(model_config: ModelConfig, source: str) -> torch.nn.Module:
    """The U-Net on the meta device (shapes only, no memory), refused if absurdly large."""
    from vdgen.unet import UNet3D

    with torch.device("meta"):
        probe = UNet3D(model_config)
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: the model would have {count:,} parameters (limit {MAX_PARAMETERS:,})")
    return probe


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the exact model from a checkpoint's metadata and load its weights strictly."""
    path = Path(path)
    model_config, diffusion_config, provenance, header = read_model_configs(path)
    # Compare against shapes only: a forged header must not make us allocate a large network.
    expected = _meta_network(model_config, str(path)).state_dict()
    stored = {name: entry for name, entry in header.items() if name != "__metadata__"}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected)")
    for name, entry in stored.items():
        shape = tuple(entry.get("shape", ()))
        if shape != tuple(expected[name].shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape}, the model needs {tuple(expected[name].shape)}")
        # load_state_dict would silently cast integer or bool data into the float weights.
        if entry.get("dtype") not in _FLOAT_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')}, the model needs floating point")
    tensors, _ = load_tensors(path)
    from vdgen.unet import UNet3D

    net = UNet3D(model_config)  # its size was checked on the meta device above
    net.load_state_dict(tensors, strict=True)
    net.to(device).eval()
    return LoadedModel(net, model_config, diffusion_config, provenance, path)
