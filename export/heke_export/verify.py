"""``--verify``: run exported graphs on fixed inputs and compare with ``heke_ref``.

FP32 graphs run through the runtime's own ONNX Runtime backend on the CPU (the runner
``heke-run`` uses, not a private session) and must match ``heke_ref`` within ``ONNX_FP32`` on heads
and features. The reference runs in float64: at full size with trained-scale activations
(stage 4 reaches ~100) torch float32 is itself up to ~8e-5 off the exact result on small
features, and so is ONNX Runtime, so two float32 runs can differ by more than 1e-4 although
each is within it; float64 measures the exported graph's own error.

FP16 graphs run in :mod:`heke_export.fp16_oracle` (float16 kept as float16) on small inputs,
one large enough that ``T*H*W`` of r2p1d's stage 1 exceeds 65504. Their blind scores (mean
of each head over the batch, and the mean of the four) must be within ``FP16_BLIND_SCORE`` of
``heke_ref`` float32, with no NaN/Inf in any output.

When the weights are a shared reference file, the authors' stored outputs are checked too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from heke_export.fp16_oracle import fp16_evaluator
from heke_ref.checkpoint import Weights, load_model
from heke_runtime.backends import open_backend
from heke_runtime.errors import CheckpointError
from heke_runtime.files import sha256_file
from heke_runtime.models import model_entry
from heke_runtime.parity import ParityResult, compare
from heke_runtime.scores import blind_scores
from heke_runtime.sidecar import Sidecar, read_sidecar
from heke_runtime.spec import IMAGENET_MEAN, IMAGENET_STD
from heke_runtime.tolerances import FP16_BLIND_SCORE, ONNX_FP32, Tolerance

Arrays = dict[str, np.ndarray]
Sizes = tuple[tuple[int, int, int], ...]
# (batch, height, width) of generated inputs; 135x240 is odd on purpose.
FP32_SIZES: Sizes = ((1, 135, 240), (7, 48, 64), (1, 90, 160))
# Small for the float16 evaluator; 144x256 makes stage 1 of r2p1d 8*72*128 = 73728 > 65504.
FP16_SIZES: Sizes = ((1, 45, 80), (7, 32, 48), (1, 144, 256))


@dataclass(frozen=True)
class VerifyCase:
    label: str
    inputs: Arrays
    upstream: Arrays | None = None  # the authors' outputs, when the weights are theirs


@dataclass
class VerifyReport:
    label: str
    results: list[ParityResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(self.results) and not self.problems

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        failed = sum(not r for r in self.results) + len(self.problems)
        return f"{verdict} | verify {self.label} | {len(self.results)} comparisons, {failed} failed"

    def text(self) -> str:
        return "\n".join([*self.lines, self.summary()])


def default_reference_dir() -> Path:
    """``shared/reference`` beside the repository checkout (absent in an installed wheel)."""
    return Path(__file__).resolve().parents[3] / "shared" / "reference"


def _frame_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth image-like pixels in [0, 1]: blocky low-res noise plus a little fine noise."""
    *lead, height, width = shape
    coarse = rng.random((*lead, height // 8 + 1, width // 8 + 1))
    up = coarse.repeat(8, axis=-2).repeat(8, axis=-1)[..., :height, :width]
    return np.clip(up + 0.05 * rng.standard_normal(shape), 0.0, 1.0)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    shape = (1, 3) + (1,) * (pixels.ndim - 2)
    mean = np.asarray(IMAGENET_MEAN).reshape(shape)
    std = np.asarray(IMAGENET_STD).reshape(shape)
    return ((pixels - mean) / std).astype(np.float32)


def generated_inputs(model_name: str, batch: int, height: int, width: int, seed: int = 0) -> Arrays:
    """Seeded frame-like model inputs: clips of one image with small motion (snippet
    models), or a frame and its difference with a slightly changed one (pair models)."""
    rng = np.random.default_rng(seed)
    entry = model_entry(model_name)
    if entry.plan == "snippets":
        frames = entry.frames_per_snippet
        base = _frame_like(rng, (batch, 3, 1, height, width))
        motion = 0.1 * (_frame_like(rng, (batch, 3, frames, height, width)) - 0.5)
        return {entry.inputs[0]: _normalise(np.clip(base + motion, 0.0, 1.0))}
    first = _frame_like(rng, (batch, 3, height, width))
    later = np.clip(first + 0.1 * (_frame_like(rng, first.shape) - 0.5), 0.0, 1.0)
    rgb = _normalise(first)
    return dict(zip(entry.inputs, (rgb, _normalise(later) - rgb)))


def _upstream_outputs(data: np.lib.npyio.NpzFile, model_name: str) -> Arrays:
    """The authors' stored outputs: the stage arrays are stored under the stage names."""
    stages = model_entry(model_name).stages
    return {"heads": data["heads"], "features": np.concatenate([data[s] for s in stages], axis=1)}


def reference_case(weights: Weights, reference_dir: Path | None) -> VerifyCase | None:
    """The shared reference inputs, with the authors' outputs if these are their weights."""
    path = (reference_dir or default_reference_dir()) / f"upstream_{weights.model}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        inputs = {name: data[name].astype(np.float32) for name in model_entry(weights.model).inputs}
        same_weights = sha256_file(path) == weights.sha256
        upstream = _upstream_outputs(data, weights.model) if same_weights else None
    shape = "x".join(map(str, next(iter(inputs.values())).shape))
    return VerifyCase(f"shared reference {shape}", inputs, upstream)


def verify_cases(weights: Weights, sizes: Sizes, reference_dir: Path | None) -> list[VerifyCase]:
    cases = [reference_case(weights, reference_dir)]
    for seed, (batch, height, width) in enumerate(sizes):
        inputs = generated_inputs(weights.model, batch, height, width, seed)
        cases.append(VerifyCase(f"generated {batch}x{height}x{width}", inputs))
    return [c for c in cases if c is not None]


def torch_outputs(model: torch.nn.Module, inputs: Arrays) -> Arrays:
    """``heke_ref`` outputs, computed in the model's dtype (float32 or float64)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = model(*(torch.from_numpy(a).to(dtype) for a in inputs.values()))
    return {"heads": out.heads.numpy(), "features": out.features.numpy()}


def blind_vector(heads: np.ndarray) -> np.ndarray:
    """The blind scores of a batch taken as one video's snippets (the runtime's rule,
    :func:`heke_runtime.scores.blind_scores`), as one vector: four heads, then the ensemble."""
    return np.array([float(value) for value in blind_scores(heads).values()])


def compare_rows(
    label: str, actual: Arrays, expected: Arrays, tolerances: Mapping[str, Tolerance]
) -> VerifyReport:
    """Each row of each output named in ``tolerances`` against the same row of ``expected``,
    one result per row and output: a row that is off (a padding row let in, rows out of
    order, a stale batch) is named, where a batch mean (:func:`blind_vector`) would hide it."""
    report = VerifyReport(label)
    for name, tol in tolerances.items():
        got, want = actual[name], expected[name]
        if len(got) != len(want):
            _problem(report, f"{label} | {name}: {len(got)} rows; the reference has {len(want)}")
            continue
        for row in range(len(want)):
            result = compare(
                f"{label} | {name} row {row}", {name: got[row]}, {name: want[row]}, tol
            )
            _add(report, result)
    return report


Runner = Callable[[Arrays], Arrays]


def _runtime_runner(path: Path, stack: contextlib.ExitStack) -> Runner:
    """The graph run by the runtime's own ONNX Runtime backend on the CPU (what heke-run
    runs), as Polygraphy compares through real runners rather than a private session."""
    backend = stack.enter_context(open_backend(path, "onnxruntime-cpu"))
    return backend.infer


def _fp16_runner(path: Path) -> Runner:
    evaluator = fp16_evaluator(onnx.load(path))
    return lambda inputs: dict(zip(evaluator.output_names, evaluator.run(None, inputs)))


def _add(report: VerifyReport, result: ParityResult) -> None:
    report.results.append(result)
    report.lines.append(result.report())


def _problem(report: VerifyReport, text: str) -> None:
    report.problems.append(text)
    report.lines.append(f"  FAILED | {text}")


def _check_fp32(report: VerifyReport, case: VerifyCase, actual: Arrays, expected: Arrays) -> None:
    _add(
        report,
        compare(f"onnx fp32 vs heke_ref float64 | {case.label}", actual, expected, ONNX_FP32),
    )
    if case.upstream is not None:
        label = f"onnx fp32 vs authors' outputs | {case.label}"
        _add(report, compare(label, actual, case.upstream, ONNX_FP32))


def _check_fp16(report: VerifyReport, case: VerifyCase, actual: Arrays, expected: Arrays) -> None:
    for name, value in actual.items():
        if not np.isfinite(value).all():
            _problem(report, f"{case.label}: {name} has NaN/Inf")
    scores = {"blind_scores": blind_vector(actual["heads"])}
    wanted = {"blind_scores": blind_vector(expected["heads"])}
    label = f"onnx fp16 vs heke_ref fp32 blind scores | {case.label}"
    _add(report, compare(label, scores, wanted, FP16_BLIND_SCORE))
    worst = {k: float(np.abs(actual[k].astype(np.float64) - expected[k]).max()) for k in expected}
    info = " ".join(f"{k}={v:.3g}" for k, v in worst.items())
    report.lines.append(f"  (info) {case.label}: max abs diff {info} (no tolerance; informative)")


def _notes(
    report: VerifyReport,
    sidecar: Sidecar,
    weights: Weights,
    cases: list[VerifyCase],
    reference_dir: Path | None,
) -> None:
    if sidecar.weights_sha256 != weights.sha256:
        report.lines.append("  (note) these weights are not the ones the graph was exported from")
    if not any(c.label.startswith("shared") for c in cases):
        where = reference_dir or default_reference_dir()
        report.lines.append(f"  (note) no shared reference inputs in {where}; generated only")


def verify_onnx(
    path: Path,
    weights: Weights,
    *,
    reference_dir: Path | None = None,
    sizes: Sizes | None = None,
) -> VerifyReport:
    """Verify an exported graph (precision read from its sidecar) against ``heke_ref``.

    ``sizes``: (batch, height, width) of the generated inputs; by default ``FP32_SIZES`` or
    ``FP16_SIZES``. The shared reference inputs are added when found.
    """
    sidecar = read_sidecar(path)
    if sidecar.model != weights.model:
        raise CheckpointError(f"{path.name} is {sidecar.model}; the weights are {weights.model}")
    fp32 = sidecar.precision == "fp32"
    model = load_model(weights).double() if fp32 else load_model(weights)
    engine = "ONNX Runtime CPU" if fp32 else "float16 reference evaluator"
    report = VerifyReport(f"{path.name} ({engine})")
    cases = verify_cases(weights, sizes or (FP32_SIZES if fp32 else FP16_SIZES), reference_dir)
    _notes(report, sidecar, weights, cases, reference_dir)
    with contextlib.ExitStack() as stack:
        runner = _runtime_runner(path, stack) if fp32 else _fp16_runner(path)
        for case in cases:
            expected = torch_outputs(model, case.inputs)
            (_check_fp32 if fp32 else _check_fp16)(report, case, runner(case.inputs), expected)
    return report
