"""Checkpoint loading: the authors' format, its error cases, demo weights."""

from __future__ import annotations

import pickle

import pytest
import torch

from heke_ref.checkpoint import (
    demo_weights,
    load_checkpoint,
    load_model,
    load_reference_weights,
    save_checkpoint,
)
from heke_runtime.errors import CheckpointError, HekeError
from heke_runtime.files import sha256_file
from tests.conftest import reference_file


@pytest.fixture(scope="module")
def r2p1d_weights():
    return load_reference_weights(reference_file("upstream_r2p1d_HEKE_4.npz"), "r2p1d_HEKE_4")


@pytest.mark.parametrize("prefix", [False, True])
def test_authors_format_round_trips(tmp_path, r2p1d_weights, prefix):
    path = tmp_path / "r2p1d_model_HEKE4.pkl"
    # The authors' files also carry optimizer state beside the weights.
    state = {("module." if prefix else "") + k: v for k, v in r2p1d_weights.state_dict.items()}
    torch.save(
        {
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "epoch": 7,
        },
        path,
    )
    loaded = load_checkpoint(path, "r2p1d_HEKE_4")
    assert loaded.sha256 == sha256_file(path)
    assert not loaded.demo
    for key, value in r2p1d_weights.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value), key


def test_legacy_non_zip_format_loads(tmp_path, r2p1d_weights):
    path = tmp_path / "old.pkl"
    torch.save({"state_dict": r2p1d_weights.state_dict}, path, _use_new_zipfile_serialization=False)
    assert (
        load_checkpoint(path, "r2p1d_HEKE_4").state_dict.keys() == r2p1d_weights.state_dict.keys()
    )


def test_other_models_checkpoint_is_named(tmp_path):
    path = tmp_path / "resnet.pkl"
    save_checkpoint(demo_weights("resnet_HEKE_4"), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "r2p1d_HEKE_4")
    message = str(info.value)
    assert "looks like a resnet_HEKE_4 checkpoint" in message
    assert "missing" in message and "unexpected" in message
    assert "\n" not in message


def test_shape_mismatch_is_reported(tmp_path, r2p1d_weights):
    state = dict(r2p1d_weights.state_dict)
    state["group_conv_3.bias"] = torch.zeros(5)
    path = tmp_path / "bad.pkl"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"1 shape: group_conv_3.bias \(5,\) != \(4,\)"):
        load_checkpoint(path, "r2p1d_HEKE_4")


def test_missing_key_is_named(tmp_path, r2p1d_weights):
    state = dict(r2p1d_weights.state_dict)
    del state["resnet.stem.0.weight"]
    path = tmp_path / "missing.pkl"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"1 missing: resnet.stem.0.weight"):
        load_checkpoint(path, "r2p1d_HEKE_4")


def test_truncated_file(tmp_path, r2p1d_weights):
    path = tmp_path / "full.pkl"
    torch.save({"state_dict": r2p1d_weights.state_dict}, path)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pkl: damaged or truncated"):
        load_checkpoint(cut, "r2p1d_HEKE_4")


@pytest.mark.parametrize(
    "content",
    [b"hello world\n", b"", b"\x80\x04K\x05.", bytes(range(256)) * 3, b"(lp0\nS'x'\np1\na."],
)
def test_non_checkpoint(tmp_path, content):
    path = tmp_path / "notes.pkl"
    path.write_bytes(content)
    with pytest.raises(
        CheckpointError, match=r"notes\.pkl: (not a PyTorch|no 'state_dict'|damaged)"
    ) as info:
        load_checkpoint(path, "r2p1d_HEKE_4")
    assert "safe list" not in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pkl", "r2p1d_HEKE_4")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path, "r2p1d_HEKE_4")


class Untrusted:
    """A class outside torch's weights_only safe list."""


def test_untrusted_objects_need_explicit_opt_in(tmp_path, r2p1d_weights):
    path = tmp_path / "odd.pkl"
    torch.save({"state_dict": r2p1d_weights.state_dict, "extra": Untrusted()}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path, "r2p1d_HEKE_4")
    loaded = load_checkpoint(path, "r2p1d_HEKE_4", trust_pickle=True)
    assert "group_conv_1.weight" in loaded.state_dict


def test_unknown_model_lists_the_valid_ones(tmp_path):
    with pytest.raises(HekeError, match="valid models: r2p1d_HEKE_4, resnet_HEKE_4"):
        load_checkpoint(tmp_path / "x.pkl", "r3d_HEKE_4")


def test_errors_inherit_builtins():
    assert issubclass(CheckpointError, ValueError)
    assert pickle.loads(pickle.dumps(CheckpointError("x"))).args == ("x",)


def test_demo_weights_are_seeded_flagged_and_calibrated():
    first, second = demo_weights("r2p1d_HEKE_4", tiny=True), demo_weights("r2p1d_HEKE_4", tiny=True)
    assert first.demo and "demo" in first.describe().lower()
    assert first.sha256 == second.sha256
    assert first.sha256 != demo_weights("r2p1d_HEKE_4", tiny=True, seed=1).sha256
    # BatchNorm statistics moved away from the identity init (mean 0, var 1).
    running_var = first.state_dict["resnet.stem.1.running_var"]
    assert not torch.allclose(running_var, torch.ones_like(running_var))
    model = load_model(first)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 32, 32))
    assert torch.isfinite(out.heads).all()


def test_demo_weights_do_not_touch_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    demo_weights("r2p1d_HEKE_4", tiny=True)
    assert torch.equal(torch.rand(3), expected)
