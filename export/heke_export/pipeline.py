"""What ``heke-export`` does, as one library call: weights -> ONNX (-> verify) (-> engines)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from heke_export.errors import TensorRTMissingError
from heke_export.int8 import Calibration, int8_from_weights
from heke_export.int8_verify import verify_int8
from heke_export.onnx_export import PRECISIONS, Precision, onnx_from_weights, prepare_output_folder
from heke_export.trt_build import INSTALL_HINT, BuildOptions, import_tensorrt, plan_from_onnx
from heke_export.verify import VerifyReport, verify_onnx
from heke_ref.checkpoint import Weights, demo_weights, load_checkpoint, load_reference_weights
from heke_runtime.errors import CheckpointError
from heke_runtime.models import model_entry

Echo = Callable[[str], None]


def weights_from_file(path: Path, model_name: str, *, trust_pickle: bool = False) -> Weights:
    """An authors' checkpoint (``.pkl``/``.pth``) or a shared reference file (``.npz``)."""
    model_entry(model_name)
    if path.suffix != ".npz":
        return load_checkpoint(path, model_name, trust_pickle=trust_pickle)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return load_reference_weights(path, model_name)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a reference weights file ({exc})") from None


def weights_for(
    model_name: str, path: Path | None, *, tiny: bool = False, trust_pickle: bool = False
) -> Weights:
    """Weights from ``path``, or seeded demo weights when ``path`` is None."""
    model_entry(model_name)
    if path is None:
        return demo_weights(model_name, tiny=tiny)
    return weights_from_file(path, model_name, trust_pickle=trust_pickle)


@dataclass(frozen=True)
class ExportOptions:
    precisions: tuple[Precision, ...] = PRECISIONS
    verify: bool = False
    reference_dir: Path | None = None
    tensorrt: BuildOptions | None = None  # None: no engine
    calibration: Calibration = field(default_factory=Calibration)  # int8 only


@dataclass
class ExportResult:
    onnx: dict[str, Path] = field(default_factory=dict)
    plans: dict[str, Path] = field(default_factory=dict)
    reports: list[VerifyReport] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        """True when every verify report passed (vacuously when none ran)."""
        return all(self.reports)


def _engines(result: ExportResult, options: BuildOptions, echo: Echo) -> None:
    try:
        import_tensorrt()
    except TensorRTMissingError:
        written = ", ".join(str(p) for p in result.onnx.values())
        raise TensorRTMissingError(
            f"TensorRT is not installed, no engine built; {INSTALL_HINT} (ONNX written: {written})"
        ) from None
    for precision, path in result.onnx.items():
        result.plans[precision] = plan_from_onnx(path, options=options, echo=echo)
        echo(f"wrote {result.plans[precision]}")


def _export(
    weights: Weights, out_dir: Path, precision: Precision, options: ExportOptions, echo: Echo
) -> Path:
    if precision == "int8":
        return int8_from_weights(weights, out_dir, options.calibration, echo=echo)
    return onnx_from_weights(weights, out_dir, precision)


def _verify(
    path: Path, weights: Weights, precision: Precision, options: ExportOptions
) -> VerifyReport:
    """INT8 against the FP32 graph on real clips; FP32 and FP16 against heke_ref."""
    if precision == "int8":
        return verify_int8(path, weights)
    return verify_onnx(path, weights, reference_dir=options.reference_dir)


def artifacts_from_weights(
    weights: Weights, out_dir: Path, options: ExportOptions = ExportOptions(), *, echo: Echo = print
) -> ExportResult:
    """Export each precision, verify if asked, then build engines from verified graphs only."""
    prepare_output_folder(out_dir)
    echo(f"exporting {weights.describe()}")
    result = ExportResult()
    for precision in options.precisions:
        result.onnx[precision] = _export(weights, out_dir, precision, options, echo)
        echo(f"wrote {result.onnx[precision]}")
        if options.verify:
            report = _verify(result.onnx[precision], weights, precision, options)
            result.reports.append(report)
            echo(report.text())
    if options.tensorrt is not None and result.verified:
        _engines(result, options.tensorrt, echo)
    return result
