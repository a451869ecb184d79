"""I3D port: TF "SAME" semantics, the restricted unpickler, conversion, loading, and the published oracle."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vdgen.errors import CheckpointError, VideoInputError
from vdgen.i3d import (
    I3D,
    WEIGHTS_NAME,
    MaxPool3dSame,
    Unit3D,
    convert_i3d_checkpoint,
    default_weights_path,
    kinetics400_labels,
    load_i3d,
    load_numpy_pickle,
    same_padding,
)

DATA = Path(__file__).parent / "data" / "i3d"


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 7, 2, (2, 3)), (79, 7, 2, (3, 3)), (16, 3, 2, (0, 1)), (7, 3, 1, (1, 1)), (8, 2, 2, (0, 0)), (5, 1, 1, (0, 0))],
)
def test_same_padding_is_tensorflows(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_same_max_pool_pads_with_minus_infinity_and_keeps_ceil_size():
    x = torch.full((1, 2, 5, 7, 7), -5.0)
    y = MaxPool3dSame(3, 2)(x)
    assert y.shape == (1, 2, 3, 4, 4)
    assert torch.all(y == -5.0)  # zero padding would let 0 win at the borders


def test_same_max_pool_asymmetric_padding_goes_after():
    # 4 samples, kernel 3, stride 2 -> total pad 1, all after: windows {0,1,2} and {2,3,pad}.
    x = torch.tensor([3.0, 1.0, 2.0, 5.0]).view(1, 1, 1, 1, 4)
    y = MaxPool3dSame((1, 1, 3), (1, 1, 2))(x)
    assert y.flatten().tolist() == [3.0, 5.0]


def test_unit3d_same_conv_output_size_and_zero_padding_after():
    unit = Unit3D(1, 1, (1, 1, 2), (1, 1, 2))
    with torch.no_grad():
        unit.weight.fill_(1.0)
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 1, 3)
    # Windows {0,1} and {2,pad}; batch norm with var 1, eps 1e-3 divides by sqrt(1.001).
    expected = torch.tensor([3.0, 3.0]) / torch.tensor(1.001).sqrt()
    torch.testing.assert_close(unit(x).flatten(), expected)


def test_random_i3d_gives_400_logits_per_clip_and_refuses_short_clips():
    torch.manual_seed(0)
    model = I3D().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 9, 224, 224)).shape == (1, 400)
        with pytest.raises(VideoInputError, match="at least 9 frames"):
            model(torch.zeros(1, 3, 8, 224, 224))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": _RunsCode(marker)}, protocol=4))
    with pytest.raises(CheckpointError, match="refused"):
        load_numpy_pickle(evil)
    with pytest.raises(CheckpointError):
        convert_i3d_checkpoint(evil, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_restricted_unpickler_loads_numpy_arrays(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(2, dtype=np.float64)}}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=4))
    loaded = load_numpy_pickle(path)
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    assert loaded["b"]["c"].dtype == np.float64


def _as_flax_tree(model: I3D) -> dict:
    """The inverse of the conversion: a torch I3D's tensors in the Flax checkpoint's layout."""
    tree: dict = {"params": {}, "batch_stats": {}}
    for key, tensor in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        array = tensor.numpy()
        if leaf == "weight":
            top, sub, name, array = "params", "Conv_0", "kernel", array.transpose(2, 3, 4, 1, 0)
        elif leaf == "bias":
            top, sub, name = "params", "Conv_0", "bias"
        elif leaf == "beta":
            top, sub, name = "params", "BatchNorm_0", "bias"
        else:
            top, sub, name = "batch_stats", "BatchNorm_0", leaf.removeprefix("moving_")
            array = array.reshape(1, 1, 1, 1, -1)
        node = tree[top]
        for part in [*module.split("."), sub]:
            node = node.setdefault(part, {})
        node[name] = np.ascontiguousarray(array)
    return tree


def test_conversion_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = I3D()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.uniform_(0.5, 2.0) if name.endswith("var") else buffer.normal_()
    src, dst = tmp_path / "random.ckpt", tmp_path / WEIGHTS_NAME
    src.write_bytes(pickle.dumps(_as_flax_tree(model), protocol=4))
    convert_i3d_checkpoint(src, dst)
    loaded = load_i3d(dst)
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_conversion_refuses_incomplete_checkpoint(tmp_path):
    src = tmp_path / "empty.ckpt"
    src.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}}, protocol=4))
    with pytest.raises(CheckpointError, match="missing params/Conv3d_1a_7x7/Conv_0/kernel"):
        convert_i3d_checkpoint(src, tmp_path / "out.safetensors")


def test_load_i3d_missing_weights_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VDGEN_WEIGHTS", str(tmp_path))
    assert default_weights_path() == tmp_path / WEIGHTS_NAME
    with pytest.raises(CheckpointError, match="I3D weights not found"):
        load_i3d()


def test_load_i3d_refuses_other_safetensors(tmp_path):
    from vdgen.checkpoint import save_tensors

    path = tmp_path / "other.safetensors"
    save_tensors(path, {"x": torch.zeros(1)}, {"format": "vdgen-model"})
    with pytest.raises(CheckpointError, match="not a vdgen-i3d"):
        load_i3d(path)


def test_labels_are_the_400_kinetics_classes():
    labels = kinetics400_labels()
    assert len(labels) == 400 and len(set(labels)) == 400
    assert labels[0] == "abseiling" and "playing cricket" in labels


def test_oracle_cricket_clip_first_16_frames(monkeypatch):
    """kinetics-i3d rgb_scratch on its sample clip: 'playing cricket', logit 14.947 on the first 16 frames."""
    monkeypatch.delenv("VDGEN_WEIGHTS", raising=False)
    frames = np.load(DATA / "cricket16.npz")["frames"]
    assert frames.shape == (16, 224, 224, 3) and frames.dtype == np.uint8
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        logits = load_i3d()(x)[0]
    labels = kinetics400_labels()
    top = logits.argsort(descending=True)[:2].tolist()
    assert [labels[i] for i in top] == ["playing cricket", "archery"]
    assert logits[top[0]].item() == pytest.approx(14.947, abs=0.01)
    assert logits[top[1]].item() == pytest.approx(10.612, abs=0.01)
