"""NumPy regressor vs a torch MLP, and its feature layout vs upstream's indexing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from heke_runtime.parity import compare
from heke_runtime.regressor import (
    POOLINGS,
    FeatureLayout,
    Regressor,
    RegressorError,
    load_regressor,
    save_regressor,
    stage_channels,
    upstream_layout,
)
from heke_runtime.tolerances import REGRESSOR

FULL = (64, 128, 256, 512)
STAGES = ("f1", "f2", "f3", "f4")


def upstream_prepare(per_stage, stages, poolings, group_width=128):
    """Upstream's ``PreDataset.prepare`` indexing, re-implemented with its np.delete steps.

    ``per_stage``: four arrays ``[V, S, 3*C]`` (ave, max, std). ``group_width`` is upstream's
    hard-coded 128 (C/4 of the full model).
    """
    f = [a.copy() for a in per_stage]
    widths = [a.shape[-1] // 3 for a in f]
    if "mean" not in poolings:
        f = [np.delete(a, np.s_[:c], axis=2) for a, c in zip(f, widths)]
    if "max" not in poolings:
        f = [np.delete(a, np.s_[-c * 2 : -c], axis=2) for a, c in zip(f, widths)]
    if "std" not in poolings:
        f = [np.delete(a, np.s_[-c:], axis=2) for a, c in zip(f, widths)]
    out = np.zeros((*f[0].shape[:2], 1), dtype=np.float32)
    for name, a in zip(STAGES, f):
        if name not in stages:
            continue
        if name == "f4":
            a = a.reshape((*a.shape[:-1], -1, 4, group_width))
            a = a.transpose([0, 1, 3, 2, 4])
            a = a.reshape((*a.shape[:-3], -1))
        out = np.concatenate((out, a), axis=2)
    return out[:, :, 1:]


def subsets(items):
    for n in range(1, len(items) + 1):
        yield from itertools.combinations(items, n)


def random_features(widths, videos=2, snippets=3, seed=0):
    rng = np.random.default_rng(seed)
    per_stage = [rng.standard_normal((videos, snippets, 3 * c)).astype(np.float32) for c in widths]
    return per_stage, np.concatenate(per_stage, axis=2)


def test_layout_matches_upstream_indexing_for_every_option():
    per_stage, engine = random_features(FULL)
    for stages in subsets(STAGES):
        for poolings in subsets(POOLINGS):
            layout = upstream_layout("r2p1d_HEKE_4", 2880, stages=stages, poolings=poolings)
            expected = upstream_prepare(per_stage, stages, poolings)
            assert layout.dim == expected.shape[-1]
            np.testing.assert_array_equal(layout.select(engine), expected, f"{stages} {poolings}")


def test_layout_generalises_the_regrouping_to_the_tiny_model():
    tiny = (8, 16, 32, 64)
    per_stage, engine = random_features(tiny, seed=1)
    layout = upstream_layout("r2p1d_HEKE_4", engine.shape[-1])
    assert layout.stage_channels == tiny
    np.testing.assert_array_equal(
        layout.select(engine), upstream_prepare(per_stage, STAGES, POOLINGS, group_width=16)
    )


def test_stage_four_groups_hold_their_own_mean_max_std():
    layout = upstream_layout("r2p1d_HEKE_4", 2880, stages=("f4",))
    index = layout.indices()
    start = 3 * (64 + 128 + 256)
    # group 0: mean of channels 0..127, then max of 0..127, then std of 0..127
    assert index[0] == start and index[128] == start + 512 and index[256] == start + 1024
    assert index[384] == start + 128  # group 1 starts with the mean of channel 128


def test_resnet_stages_and_no_regrouping():
    assert stage_channels("resnet_HEKE_4", 14400) == (256, 512, 1024, 2048, 64, 128, 256, 512)
    layout = upstream_layout("resnet_HEKE_4", 14400)
    assert layout.grouped == () and layout.dim == 14400
    np.testing.assert_array_equal(layout.indices(), np.arange(14400))


class TorchRegressor(nn.Module):
    """Upstream's FC_network and snippet mean, for the parity check."""

    def __init__(self, dim):
        super().__init__()
        self.reg = nn.Sequential(
            nn.Linear(dim, 128), nn.ELU(), nn.Linear(128, 32), nn.ELU(), nn.Linear(32, 1)
        )

    def forward(self, x):
        batch, snippets, dim = x.shape
        return self.reg(x.reshape(batch * snippets, dim)).reshape(batch, snippets)


def weights_of(module):
    layers = [m for m in module.reg if isinstance(m, nn.Linear)]
    out = {}
    for i, layer in enumerate(layers, start=1):
        out[f"w{i}"] = layer.weight.detach().numpy().copy()
        out[f"b{i}"] = layer.bias.detach().numpy().copy()
    return out


@pytest.mark.parametrize(("stages", "poolings"), [(STAGES, POOLINGS), (("f2", "f4"), ("max",))])
def test_numpy_regressor_matches_torch(tmp_path, stages, poolings):
    torch.manual_seed(0)
    layout = upstream_layout("r2p1d_HEKE_4", 2880, stages=stages, poolings=poolings)
    net = TorchRegressor(layout.dim).eval()
    path = save_regressor(tmp_path / "reg.npz", layout, weights_of(net), trained_on="test")
    regressor = load_regressor(path)
    per_stage, engine = random_features(FULL, videos=1, snippets=12, seed=2)
    engine *= 3.0  # activations of a trained backbone's scale, both ELU branches exercised
    x = upstream_prepare([a * 3.0 for a in per_stage], stages, poolings)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[0].numpy()
    actual = regressor.snippet_scores(engine[0])
    result = compare("regressor", {"scores": actual}, {"scores": expected}, REGRESSOR)
    assert result, result.report()
    assert abs(regressor.predict(engine[0]) - float(expected.mean())) <= REGRESSOR.atol
    assert regressor.metadata["trained_on"] == "test"


def test_engine_mismatch_is_one_line(tmp_path):
    layout = upstream_layout("r2p1d_HEKE_4", 2880)
    net = TorchRegressor(layout.dim)
    regressor = load_regressor(save_regressor(tmp_path / "r.npz", layout, weights_of(net)))
    for model, width in (("r2p1d_HEKE_4", 360), ("resnet_HEKE_4", 14400)):
        with pytest.raises(RegressorError) as info:
            regressor.check_engine(model, width)
        assert "\n" not in str(info.value)
    regressor.check_engine("r2p1d_HEKE_4", 2880)


def test_backbone_weights_recorded_at_training_must_match(tmp_path):
    layout = upstream_layout("r2p1d_HEKE_4", 2880, stages=("f1",))
    path = save_regressor(
        tmp_path / "r.npz",
        layout,
        weights_of(TorchRegressor(layout.dim)),
        backbone_weights_sha256="a" * 64,
    )
    regressor = load_regressor(path)
    regressor.check_engine("r2p1d_HEKE_4", 2880, "a" * 64)
    with pytest.raises(RegressorError, match="backbone weights"):
        regressor.check_engine("r2p1d_HEKE_4", 2880, "b" * 64)


def test_bad_files_are_refused_without_unpickling(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, metadata=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(RegressorError, match=r"pickled\.npz"):
        load_regressor(pickled)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(RegressorError, match="not a regressor"):
        load_regressor(text)
    with pytest.raises(RegressorError, match="no such"):
        load_regressor(tmp_path / "absent.npz")


def test_wrong_weight_shapes_and_layout_options_are_named():
    layout = upstream_layout("r2p1d_HEKE_4", 2880, stages=("f1",))
    with pytest.raises(RegressorError, match="Linear"):
        Regressor(layout, {k: np.zeros((1, 1)) for k in ("w1", "b1", "w2", "b2", "w3", "b3")})
    with pytest.raises(RegressorError, match="valid: f1, f2, f3, f4"):
        FeatureLayout("r2p1d_HEKE_4", FULL, ("f5",))
    with pytest.raises(RegressorError, match="valid: mean, max, std"):
        FeatureLayout("r2p1d_HEKE_4", FULL, ("f1",), ("median",))
    with pytest.raises(RegressorError, match="multiple of 45"):
        stage_channels("r2p1d_HEKE_4", 1000)
