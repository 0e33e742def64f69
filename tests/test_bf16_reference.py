"""The BF16 CPU backend and heke-bench's accuracy reference on the shared reference weights
(full-size R(2+1)D with calibrated BatchNorm), loaded as an authors'-format checkpoint.

BF16 rows (heads and features) and per-video blind scores must be within bounds that tell
videos and rows apart, and keep their ranking (heke_runtime.tolerances, BF16_REFERENCE_*).
The "videos" are 20 crops of the two real snippets of the reference file (two clips each),
small so that the full-size model runs in seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from heke_bench.cli import main as bench_main
from heke_bench.inputs import load_weights
from heke_bench.measure import reference_outputs
from heke_export.torch_backend import TorchBackend, cpu_bf16_support
from heke_ref.checkpoint import load_model, load_reference_weights, save_checkpoint
from heke_runtime.parity import compare_output
from heke_runtime.tolerances import (
    BF16_MIN_SPEARMAN,
    BF16_REFERENCE_BLIND,
    BF16_REFERENCE_FEATURES,
    BF16_REFERENCE_HEADS,
    REFERENCE_VS_UPSTREAM,
)
from tests.conftest import reference_file

CROP = (64, 80)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``(weights, clips, heads, checkpoint path)`` of the shared r2p1d reference file."""
    path = reference_file("upstream_r2p1d_HEKE_4.npz")
    weights = load_reference_weights(path, "r2p1d_HEKE_4")
    with np.load(path) as data:
        clips, heads = data["clips"].astype(np.float32), data["heads"]
    checkpoint = tmp_path_factory.mktemp("reference") / "r2p1d_HEKE_4.pkl"
    save_checkpoint(weights, checkpoint)
    return weights, clips, heads, checkpoint


def crops(clips: np.ndarray, count: int = 20) -> np.ndarray:
    """``[count * 2, 3, 8, *CROP]``: video v is one window of both snippets (rows 2v, 2v+1)."""
    height, width = CROP
    windows = [(y, x) for y in range(0, 81, 16) for x in range(0, 97, 24)][:count]
    return np.concatenate([clips[..., y : y + height, x : x + width] for y, x in windows])


def test_bench_checks_accuracy_against_the_checkpoint_it_is_given(reference):
    _, clips, heads, checkpoint = reference
    weights = load_weights(str(checkpoint))
    assert not weights.demo and weights.source == str(checkpoint)
    got = reference_outputs(weights, {"clips": clips})["heads"]
    np.testing.assert_allclose(got, heads, atol=REFERENCE_VS_UPSTREAM.atol, rtol=0)


def test_bench_refuses_a_checkpoint_with_the_tiny_model(tmp_path, capsys):
    assert bench_main(["--quick", "--checkpoint", "x.pkl", "--out", str(tmp_path)]) == 1
    assert "--checkpoint runs the full-size model" in capsys.readouterr().err


@pytest.mark.skipif(cpu_bf16_support() is None, reason="this CPU has neither AVX-512 BF16 nor AMX")
def test_bf16_rows_and_blind_scores_on_the_reference_weights(reference):
    weights, clips, _, checkpoint = reference
    clips = crops(clips)
    with TorchBackend(checkpoint, device="cpu", precision="bf16") as backend:
        outputs = [backend.infer({"clips": c}) for c in np.split(clips, 4)]
    got = {key: np.concatenate([o[key] for o in outputs]) for key in ("heads", "features")}
    with torch.inference_mode():
        expected = load_model(weights)(torch.from_numpy(clips))
    want = {"heads": expected.heads.numpy(), "features": expected.features.numpy()}
    # Row by row, heads and features: a row out of place or a batch padded wrongly fails.
    for key, tolerance in (("heads", BF16_REFERENCE_HEADS), ("features", BF16_REFERENCE_FEATURES)):
        diff = compare_output(key, got[key], want[key], tolerance)
        assert diff.passed, diff
    blind, truth = (h.reshape(-1, 2, 4).mean(axis=1) for h in (got["heads"], want["heads"]))
    blind, truth = np.c_[blind, blind.mean(1)], np.c_[truth, truth.mean(1)]
    assert np.abs(blind - truth).max() <= BF16_REFERENCE_BLIND.atol
    # Per head, the ranking of the 20 videos (a constant score has none).
    for head in range(blind.shape[1]):
        rho = spearmanr(blind[:, head], truth[:, head]).statistic
        assert rho >= BF16_MIN_SPEARMAN, (head, rho)
