"""NumPy regressor vs a torch MLP, and its feature layout vs upstream's indexing."""

from __future__ import annotations

import itertools
import json

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
    with pytest.raises(RegressorError) as info:  # the model named even where widths agree
        regressor.check_engine("resnet_HEKE_4", 2880)
    assert str(info.value).endswith(
        "was trained on r2p1d_HEKE_4 features; the engine is resnet_HEKE_4"
    )
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


@pytest.mark.parametrize(
    "bad",
    [
        {"w1": (128, 193)},  # one input too many
        {"w1": (128, 191)},  # one too few
        {"w1": (128, 192, 1)},
        {"w1": (128 * 192,)},
        {"w1": (128, 192, 1), "w2": (32, 128, 1)},  # two layers of the same wrong rank
        {"w1": (128 * 192,), "w2": (32 * 128,)},
        {"w1": (128 * 192,), "w2": (32 * 128,), "w3": (32,)},
        {"b1": (129,)},
        {"b1": (127,)},
        {"w2": (32, 127)},
        {"w2": (32, 129)},
        {"b2": (31,)},
        {"b2": (33,)},
        {"w3": (2, 32)},
        {"w3": (1, 31)},
        {"b3": (2,)},
        {"b3": ()},
    ],
    ids=lambda bad: ",".join(f"{k}{list(v)}" for k, v in bad.items()),
)
def test_every_malformed_layer_is_refused_on_loading(tmp_path, bad):
    layout = upstream_layout("r2p1d_HEKE_4", 2880, stages=("f1",))  # 3 x 64 = 192 inputs
    good = weights_of(TorchRegressor(layout.dim))
    save_regressor(tmp_path / "good.npz", layout, good)  # the baseline
    weights = {**good, **{k: np.zeros(s, np.float32) for k, s in bad.items()}}
    meta = {"format": "heke-regressor/1", "layout": layout.to_dict()}
    path = tmp_path / "bad.npz"  # written as a foreign tool would: save_regressor refuses it
    np.savez(path, metadata=np.array(json.dumps(meta)), **weights)
    with pytest.raises(RegressorError) as info:
        load_regressor(path)
    assert str(info.value).startswith(f"{path}: regressor weight shapes ")
    assert "do not form Linear(192,h)-ELU-Linear(h,h2)-ELU-Linear(h2,1)" in str(info.value)


def spoil_layout(**changes):
    def spoil(meta):
        meta["layout"].update(changes)
        meta["layout"] = {k: v for k, v in meta["layout"].items() if v is not None}
        return meta

    return spoil


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda meta: [1, 2], "unreadable metadata (AttributeError: "),
        (lambda meta: {"format": meta["format"]}, "unreadable metadata (KeyError: 'layout')"),
        (lambda meta: {**meta, "format": "heke-regressor/0"}, "format 'heke-regressor/0', exp"),
        (lambda meta: {**meta, "format": "heke-regressor/2"}, "format 'heke-regressor/2', exp"),
        (lambda meta: {**meta, "format": None}, "format None, expected heke-regressor/1"),
        (spoil_layout(model=None), "unreadable layout (KeyError: 'model')"),
        (spoil_layout(stage_channels=["x"]), "unreadable layout (ValueError: "),
        (spoil_layout(stage_channels=5), "unreadable layout (TypeError: "),
        (spoil_layout(stages=["f9"]), ": unknown stage 'f9'; valid: f1, f2, f3, f4"),
        (spoil_layout(stage_channels=[8, 16, 32, 64, 128]), "has 4 stages, got 5 widths"),
        (spoil_layout(stage_channels=[8, 16, 32]), "has 4 stages, got 3 widths"),
        (spoil_layout(stages=["f8", "f9"]), ": unknown stage 'f8'; valid: f1, f2, f3, f4"),
        (spoil_layout(stages=[]), "select at least one stage (valid: f1, f2, f3, f4)"),
        (spoil_layout(poolings=[]), "select at least one pooling (valid: mean, max, std)"),
        (spoil_layout(poolings=["max", "mean"]), "poolings must be unique and in order"),
        (spoil_layout(stage_channels=[8, 16, 32, 66]), "stage f4 has 66 channels, not /4"),
        (spoil_layout(stages=["f4", "f2"]), "stages must be unique and in order"),
        (spoil_layout(stages=["f2", "f2"]), "stages must be unique and in order"),
    ],
)
def test_unreadable_metadata_is_one_line_naming_the_file(tmp_path, spoil, message):
    layout = upstream_layout("r2p1d_HEKE_4", 2880)
    meta = spoil({"format": "heke-regressor/1", "layout": layout.to_dict()})
    path = tmp_path / "r.npz"
    np.savez(path, metadata=np.array(json.dumps(meta)), **weights_of(TorchRegressor(layout.dim)))
    with pytest.raises(RegressorError) as info:
        load_regressor(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert "RegressorError" not in text  # its own errors are not wrapped as unreadable


def test_a_regressor_of_one_model_refuses_the_other_models_engine(tmp_path):
    layout = upstream_layout("resnet_HEKE_4", 14400)
    regressor = load_regressor(
        save_regressor(tmp_path / "r.npz", layout, weights_of(TorchRegressor(layout.dim)))
    )
    with pytest.raises(RegressorError) as info:
        regressor.check_engine("r2p1d_HEKE_4", 14400)
    assert str(info.value).endswith(
        "was trained on resnet_HEKE_4 features; the engine is r2p1d_HEKE_4"
    )


def test_features_of_another_width_are_named_exactly(tmp_path):
    layout = upstream_layout("r2p1d_HEKE_4", 2880)
    regressor = load_regressor(
        save_regressor(tmp_path / "r.npz", layout, weights_of(TorchRegressor(layout.dim)))
    )
    for width in (2879, 2881):  # narrower too: never read past the features' end
        with pytest.raises(RegressorError) as info:
            regressor.snippet_scores(np.zeros((3, width), np.float32))
        assert str(info.value) == (
            f"features have width {width}; this regressor expects 2880 "
            "(r2p1d_HEKE_4 stages [64, 128, 256, 512])"
        )
    with pytest.raises(RegressorError, match=r"^features have width 2879;"):  # [V, S, width]
        layout.select(np.zeros((2, 3, 2879), np.float32))


def test_a_mismatched_backbone_is_named_by_both_hashes(tmp_path):
    layout = upstream_layout("r2p1d_HEKE_4", 2880)
    trained = "f" * 64  # sorts after the engine's: a mismatch either way round is refused
    path = save_regressor(
        tmp_path / "r.npz",
        layout,
        weights_of(TorchRegressor(layout.dim)),
        backbone_weights_sha256=trained,
    )
    with pytest.raises(RegressorError) as info:
        load_regressor(path).check_engine("r2p1d_HEKE_4", 2880, "0123456789ab" + "c" * 52)
    assert str(info.value) == (
        f"regressor {path} was trained on features of backbone weights ffffffffffff; "
        "the engine holds weights 0123456789ab"
    )
