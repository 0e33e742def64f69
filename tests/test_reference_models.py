"""heke_ref models vs the authors' own outputs (../shared/reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heke_ref.checkpoint import load_model, load_reference_weights
from heke_ref.registry import create_model
from heke_runtime.models import HEAD_NAMES
from heke_runtime.parity import compare
from heke_runtime.tolerances import REFERENCE_VS_UPSTREAM
from tests.conftest import reference_file

CASES = {
    "r2p1d_HEKE_4": ("upstream_r2p1d_HEKE_4.npz", ("clips",), ["f1", "f2", "f3", "f4"]),
    "resnet_HEKE_4": (
        "upstream_resnet_HEKE_4.npz",
        ("rgb", "dif"),
        [f"{p}_f{i}" for p in ("rgb", "dif") for i in range(1, 5)],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_keys_and_shapes_match_the_authors(name):
    npz_name, _, _ = CASES[name]
    with np.load(reference_file(npz_name)) as data:
        stored = {k[2:]: data[k].shape for k in data.files if k.startswith("w/")}
    fresh = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
    assert fresh == stored


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_match_the_authors_within_1e5(name):
    npz_name, inputs, feature_keys = CASES[name]
    path = reference_file(npz_name)
    model = load_model(load_reference_weights(path, name))
    with np.load(path) as data, torch.no_grad():
        out = model(*(torch.from_numpy(data[k]) for k in inputs))
        expected = {
            "heads": data["heads"],
            "features": np.concatenate([data[k] for k in feature_keys], axis=1),
        }
    actual = {"heads": out.heads.numpy(), "features": out.features.numpy()}
    result = compare(f"{name} vs upstream", actual, expected, REFERENCE_VS_UPSTREAM)
    assert result, result.report()


def test_feature_sizes_follow_the_design_layout():
    model = create_model("r2p1d_HEKE_4")
    assert model.feature_sizes == (192, 384, 768, 1536)
    assert sum(model.feature_sizes) == 2880
    assert HEAD_NAMES == ("gmsd", "st_gmsd", "st_rred", "ms_ssim")


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_models_run_with_dynamic_sizes(name):
    model = create_model(name, tiny=True)
    with torch.no_grad():
        if name == "r2p1d_HEKE_4":
            out = model(torch.randn(3, 3, 8, 35, 48))
        else:
            out = model(torch.randn(3, 3, 35, 48), torch.randn(3, 3, 35, 48))
    assert out.heads.shape == (3, 4)
    assert out.features.shape == (3, sum(model.feature_sizes))
    assert torch.isfinite(out.features).all()


def test_std_feature_is_unbiased():
    """The third block of each stage is torch.std (N-1), as upstream."""
    model = create_model("r2p1d_HEKE_4", tiny=True)
    captured = {}
    model.resnet.layer1.register_forward_hook(lambda m, i, o: captured.setdefault("s1", o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 8, 32, 32))
    stage = captured["s1"].flatten(2).double()
    channels = stage.shape[1]
    std = out.features[0, 2 * channels : 3 * channels].double()
    assert torch.allclose(std, stage.std(dim=2, unbiased=True)[0], atol=1e-5)
    assert not torch.allclose(std, stage.std(dim=2, unbiased=False)[0], atol=1e-7)
