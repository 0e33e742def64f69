"""The BF16 CPU backend and heke-bench's accuracy reference on the shared reference weights
(full-size R(2+1)D with calibrated BatchNorm), loaded as an authors'-format checkpoint.

BF16 per-video blind scores must be within the FP16 tolerance (docs/ARCHITECTURE.md,
"Tolerances"). The "videos" are 20 crops of the two real snippets of the reference file (two
clips each), small so that the full-size model runs in seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heke_bench.cli import main as bench_main
from heke_bench.inputs import load_weights
from heke_bench.measure import reference_outputs
from heke_export.torch_backend import TorchBackend, cpu_bf16_support
from heke_ref.checkpoint import load_model, load_reference_weights, save_checkpoint
from heke_runtime.tolerances import BF16_BLIND_SCORE, REFERENCE_VS_UPSTREAM
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
def test_bf16_blind_scores_on_the_reference_weights(reference):
    weights, clips, _, checkpoint = reference
    clips = crops(clips)
    with TorchBackend(checkpoint, device="cpu", precision="bf16") as backend:
        heads = np.concatenate([backend.infer({"clips": c})["heads"] for c in np.split(clips, 4)])
    with torch.inference_mode():
        expected = load_model(weights)(torch.from_numpy(clips)).heads.numpy()
    blind, want = (h.reshape(-1, 2, 4).mean(axis=1) for h in (heads, expected))
    diff = np.abs(np.c_[blind, blind.mean(1)] - np.c_[want, want.mean(1)])
    assert np.isfinite(heads).all()
    assert diff.max() <= BF16_BLIND_SCORE.atol, diff.max(axis=0)
    # No Spearman assertion: these seeded weights score every crop within ~0.01 of each other,
    # and BF16's ~3e-4 errors swap neighbours (Spearman 0.99-0.999; FP16 would keep the
    # order): a known miss, recorded in benchmarks/RESULTS.md (Throughput, Targets), not a
    # regression.
