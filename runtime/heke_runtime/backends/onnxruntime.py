"""ONNX Runtime backend: CPU by default, its CUDA or TensorRT providers when installed.

``provider="auto"`` takes CUDA when the installed ONNX Runtime build has it, else CPU, and
says which (``device``). The TensorRT execution provider is only used when asked for: it
builds an engine per new input shape, which is slow to start and surprising by default.
Asking for ``cuda`` or ``tensorrt`` on a build or machine without it is an error, never a
quiet CPU run.

ONNX Runtime comes from one of two extras, never both (the two packages write the same
``onnxruntime`` module): ``heke[cpu]`` (onnxruntime) or ``heke[gpu]`` (onnxruntime-gpu, with
the CUDA and cuDNN libraries as pip packages, which :func:`_preload_cuda_libraries` loads).
Without either, opening the backend says which to install.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from heke_runtime.backends.base import BackendError, BackendUnavailableError, BaseBackend
from heke_runtime.sidecar import SidecarError

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]
# ONNX Runtime's integer kernels ran heke-run's real inputs in 16% less time with two
# snippets per call than with one, and no less with four (benchmarks/RESULTS.md, INT8).
INT8_CPU_BATCH = 2
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
INSTALL = "pip install 'heke[cpu]' (or 'heke[gpu]' for NVIDIA GPUs)"
REINSTALL = (
    "pip uninstall -y onnxruntime onnxruntime-gpu, then "
    "pip install 'heke[cpu]' or 'heke[gpu]' (one of them)"
)


def _import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
        if exc.name == "onnxruntime":
            raise BackendUnavailableError(f"no ONNX Runtime installed: {INSTALL}") from None
        raise BackendUnavailableError(
            f"ONNX Runtime is installed but does not import ({exc}); {REINSTALL}"
        ) from None
    if not hasattr(onnxruntime, "InferenceSession"):  # what removing one of the two leaves
        raise BackendUnavailableError(
            "ONNX Runtime is broken (an onnxruntime folder without its library: were "
            f"onnxruntime and onnxruntime-gpu both installed, then one removed?); {REINSTALL}"
        )
    return onnxruntime


def _preload_cuda_libraries(ort: ModuleType) -> None:
    """Load the CUDA and cuDNN libraries that ``heke[gpu]`` installs as pip packages, which the
    system's loader does not search: ONNX Runtime's own ``preload_dlls`` (1.21 and later; a
    no-op on CPU builds). Its messages go to stderr, so stdout keeps only records."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(sys.stderr):
            preload()


def choose_providers(provider: str, available: list[str]) -> list[str]:
    """Execution providers to request, best first; CPU last so unsupported nodes still run."""
    if provider == "auto":
        provider = "cuda" if PROVIDERS["cuda"] in available else "cpu"
    if provider not in PROVIDERS:
        valid = ", ".join(["auto", *PROVIDERS])
        raise BackendError(f"unknown ONNX Runtime provider {provider!r}; valid: {valid}")
    wanted = PROVIDERS[provider]
    if wanted not in available:
        hint = (
            "for NVIDIA GPUs: pip uninstall -y onnxruntime, then "
            "pip install 'heke[gpu]' (onnxruntime-gpu; never both)"
            if provider != "cpu"
            else REINSTALL
        )
        raise BackendUnavailableError(
            f"ONNX Runtime provider {wanted} is not in this build (available: "
            f"{', '.join(available)}); {hint}"
        )
    return [wanted] if provider == "cpu" else [wanted, PROVIDERS["cpu"]]


class OnnxRuntimeBackend(BaseBackend):
    """Runs a ``.onnx`` graph with ONNX Runtime. Outputs are fresh arrays on every call."""

    name = "onnxruntime"
    kind = "onnx"

    def __init__(
        self,
        artifact: str | Path,
        *,
        provider: Provider = "auto",
        threads: int | None = None,
        device_id: int = 0,
    ) -> None:
        super().__init__(artifact)
        _import_onnxruntime()  # none installed: say so when the backend is opened, not later
        if provider != "auto" and provider not in PROVIDERS:
            valid = ", ".join(["auto", *PROVIDERS])
            raise BackendError(f"unknown ONNX Runtime provider {provider!r}; valid: {valid}")
        if threads is not None and threads < 0:
            raise BackendError(f"threads must be >= 0 (0 = all cores), got {threads}")
        self.provider = provider
        self.threads = threads
        self.device_id = device_id
        self._session: Any = None
        self._active = ""

    @property
    def device(self) -> str:
        if not self._active:
            return f"ONNX Runtime ({self.provider}, not loaded)"
        note = ""
        if self.sidecar.precision == "fp16" and self._active == PROVIDERS["cpu"]:
            note = " (fp16 graph: the CPU provider computes it in float32)"
        return f"ONNX Runtime {self._active}{note}"

    def _load(self) -> None:
        ort = _import_onnxruntime()
        requested = self._requested_providers()
        if requested[0] != PROVIDERS["cpu"]:
            _preload_cuda_libraries(ort)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; the runtime reports what matters
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        if requested[0] == PROVIDERS["cpu"]:
            # The memory pattern plans one block for all activations of an input shape up
            # front: 3.2 GB for four 270x480 r2p1d snippets, 1.9 GB without it, and no
            # measurable slowdown: the arena still reuses freed blocks
            # (benchmarks/RESULTS.md, memory).
            options.enable_mem_pattern = False
        provider_options = [self._provider_options(p) for p in requested]
        try:
            session = ort.InferenceSession(
                str(self.artifact),
                sess_options=options,
                providers=requested,
                provider_options=provider_options,
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"{self.artifact}: ONNX Runtime cannot load it ({reason})") from None
        active = session.get_providers()[0]
        if active != requested[0]:
            # ORT drops a GPU provider that fails to initialise and carries on with CPU.
            raise BackendError(
                f"{requested[0]} was requested but ONNX Runtime started {active} "
                "(no usable GPU or CUDA libraries?); refusing to run on CPU instead"
            )
        self._check_io(session)
        self._session = session
        self._active = active

    @property
    def preferred_batch_size(self) -> int | None:
        """On the CPU provider 1, where a batch of snippets costs memory and saves no time
        (benchmarks/RESULTS.md, memory), and INT8_CPU_BATCH for INT8 graphs; None (the
        caller's default) on GPUs."""
        try:
            first = self._requested_providers()[0]
        except BackendError:
            return None  # loading will say why
        if first != PROVIDERS["cpu"]:
            return None
        return INT8_CPU_BATCH if self.sidecar.precision == "int8" else 1

    def _requested_providers(self) -> list[str]:
        """The providers to ask for, best first, from ``provider`` and this ORT build."""
        available = list(_import_onnxruntime().get_available_providers())
        return choose_providers(self.provider, available)

    def _provider_options(self, provider: str) -> dict[str, str]:
        if provider in (PROVIDERS["cuda"], PROVIDERS["tensorrt"]):
            return {"device_id": str(self.device_id)}
        return {}

    def _check_io(self, session: Any) -> None:
        inputs = sorted(i.name for i in session.get_inputs())
        outputs = {o.name for o in session.get_outputs()}
        if inputs != sorted(self.sidecar.inputs) or not set(self.sidecar.outputs) <= outputs:
            raise SidecarError(
                f"{self.artifact}: graph inputs {inputs} / outputs {sorted(outputs)} differ from "
                f"the sidecar's {sorted(self.sidecar.inputs)} / {sorted(self.sidecar.outputs)}"
            )

    def _release(self) -> None:
        self._session = None
        self._active = ""

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.sidecar.outputs)
        feeds = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        results = self._session.run(names, feeds)
        return dict(zip(names, results))
