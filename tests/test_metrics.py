"""SROCC/KROCC/PLCC/RMSE are the authors' scipy.stats numbers, behind one input check."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from heke_finetune.metrics import MetricsError, evaluate, krocc, plcc, rmse, srocc
from heke_runtime.errors import HekeError
from heke_runtime.tolerances import METRICS


def cases():
    rng = np.random.default_rng(7)
    for n in (2, 3, 7, 50, 333, 2000):
        x = rng.normal(size=n)
        y = 0.6 * x + rng.normal(size=n)
        yield f"n{n}", x, y
        yield f"n{n}-ties", np.round(x * 2) / 2, np.round(y)
        yield f"n{n}-negative", x, -y + 0.1 * rng.normal(size=n)
    yield "float32-scores", rng.uniform(1, 9.5, 40).astype(np.float32), rng.uniform(1, 9.5, 40)
    yield "all-tied-but-one", np.r_[np.zeros(9), 1.0], np.arange(10.0)


@pytest.mark.parametrize(("name", "x", "y"), list(cases()), ids=[c[0] for c in cases()])
def test_metrics_equal_scipy(name, x, y):
    expected = {
        "srocc": stats.spearmanr(x, y)[0],
        "krocc": stats.kendalltau(x, y)[0],
        "plcc": stats.pearsonr(x, y)[0],
        "rmse": math.sqrt(np.mean((np.asarray(x, float) - np.asarray(y, float)) ** 2)),
    }
    got = evaluate(x, y)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(getattr(got, key)), key
        else:
            assert abs(getattr(got, key) - value) <= METRICS.atol, (key, getattr(got, key), value)
    assert got.count == len(x)


def test_single_functions_agree_with_evaluate():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=30), rng.normal(size=30)
    m = evaluate(x, y)
    assert (srocc(x, y), krocc(x, y), plcc(x, y), rmse(x, y)) == (m.srocc, m.krocc, m.plcc, m.rmse)


def test_constant_input_is_nan_like_scipy():
    x, y = np.ones(5), np.arange(5.0)
    m = evaluate(x, y)
    assert math.isnan(m.srocc) and math.isnan(m.krocc) and math.isnan(m.plcc)
    assert m.rmse == pytest.approx(math.sqrt(np.mean((x - y) ** 2)))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1.0, 2.0], [1.0], "2 predictions for 1 labels"),
        ([1.0], [1.0], "at least 2"),
        ([1.0, float("nan")], [1.0, 2.0], "NaN or Inf"),
    ],
)
def test_bad_inputs_are_one_error_type(x, y, match):
    with pytest.raises(MetricsError, match=match) as info:
        evaluate(np.array(x), np.array(y))
    assert isinstance(info.value, HekeError) and isinstance(info.value, ValueError)


def test_kendall_is_fast_on_large_sets():
    rng = np.random.default_rng(3)
    x = rng.normal(size=20000)
    y = x + rng.normal(size=20000)
    assert abs(krocc(x, y) - stats.kendalltau(x, y)[0]) <= METRICS.atol


def test_metrics_evaluation_and_features_import_without_torch_or_scipy():
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "import heke_finetune.metrics, heke_finetune.evaluate, heke_finetune.features\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        "    heke_finetune.metrics.srocc([1.0, 2.0], [2.0, 1.0])\n"
        "except heke_finetune.metrics.MetricsError as exc:\n"
        "    assert \"pip install 'heke[finetune]'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error without scipy')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
