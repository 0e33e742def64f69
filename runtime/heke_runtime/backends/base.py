"""The backend interface: a context manager with ``infer`` (Polygraphy's runner pattern).

``__enter__`` loads the artifact and allocates, ``__exit__`` frees. ``infer`` checks input
names, dtypes and shapes against the artifact's sidecar, then calls the backend's ``_infer``.
Backends never import their framework at module level; that happens in ``__enter__``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from heke_runtime.errors import HekeError
from heke_runtime.sidecar import Sidecar, SidecarError, read_sidecar

Dims = Sequence[int | str]


class BackendError(HekeError, RuntimeError):
    """A backend cannot load its artifact or run it."""


class BackendUnavailableError(BackendError, ImportError):
    """The framework a backend needs is not installed (the message names the extra)."""


class InferenceInputError(HekeError, ValueError):
    """Inputs given to ``infer`` do not match what the engine takes."""


def check_inputs(inputs: Mapping[str, np.ndarray], expected: Mapping[str, Dims]) -> None:
    """Names, dtype (float32) and shapes against the sidecar's dims.

    Integer dims must match exactly; a named dim (``batch``, ``height``) may take any positive
    size but must take the same size in every input that names it (``rgb`` and ``dif``).
    """
    names, want = sorted(inputs), sorted(expected)
    if names != want:
        raise InferenceInputError(f"inputs {names} given; the engine takes {want}")
    bound: dict[str, tuple[int, str]] = {}
    for name, dims in expected.items():
        array = inputs[name]
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            kind = getattr(array, "dtype", type(array).__name__)
            raise InferenceInputError(f"input {name!r} is {kind}; the engine takes float32")
        if array.ndim != len(dims):
            raise InferenceInputError(
                f"input {name!r} has shape {array.shape}; the engine takes {_show(dims)}"
            )
        for axis, (size, dim) in enumerate(zip(array.shape, dims)):
            _check_dim(name, axis, size, dim, array.shape, dims, bound)


def _check_dim(
    name: str,
    axis: int,
    size: int,
    dim: int | str,
    shape: tuple[int, ...],
    dims: Dims,
    bound: dict[str, tuple[int, str]],
) -> None:
    if isinstance(dim, int) and dim >= 0:
        if size != dim:
            raise InferenceInputError(
                f"input {name!r} has shape {shape}; the engine takes {_show(dims)} "
                f"(axis {axis} must be {dim})"
            )
        return
    if size < 1:
        raise InferenceInputError(f"input {name!r} has an empty axis {axis}: shape {shape}")
    label = str(dim)
    if label in bound and bound[label][0] != size:
        other_size, other = bound[label]
        raise InferenceInputError(
            f"input {name!r} has {label}={size} but {other!r} has {label}={other_size}"
        )
    bound.setdefault(label, (size, name))


def _show(dims: Dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def check_outputs(outputs: Mapping[str, np.ndarray], expected: Mapping[str, Dims]) -> None:
    missing = sorted(set(expected) - set(outputs))
    if missing:
        raise BackendError(f"the engine did not return outputs {missing}")


def load_sidecar(artifact: Path, kind: str) -> Sidecar:
    """The artifact's sidecar, checked (sha256) and of the kind this backend runs."""
    if not artifact.is_file():
        raise BackendError(f"{artifact}: no such engine file")
    sidecar = read_sidecar(artifact)
    if sidecar.kind != kind:
        raise SidecarError(
            f"{artifact}: the sidecar says this is a {sidecar.kind!r} artifact, "
            f"this backend runs {kind!r} ones (pick another --backend)"
        )
    return sidecar


class BaseBackend:
    """Shared plumbing: sidecar check at construction, validation around ``_infer``.

    Subclasses implement ``_load``, ``_release`` and ``_infer``.
    """

    name = "base"
    kind = ""

    def __init__(self, artifact: str | Path) -> None:
        self.artifact = Path(artifact)
        self.sidecar = load_sidecar(self.artifact, self.kind)
        self._loaded = False

    @property
    def device(self) -> str:
        return self.name

    @property
    def preferred_batch_size(self) -> int | None:
        """Snippets per call this backend suits best, or None for the caller's default."""
        return None

    @property
    def input_names(self) -> list[str]:
        return list(self.sidecar.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.sidecar.outputs)

    def __enter__(self) -> BaseBackend:
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loaded:
            self._release()
            self._loaded = False

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._loaded:
            raise BackendError(f"{self.name}: use the backend in a 'with' block before infer()")
        check_inputs(inputs, self.sidecar.inputs)
        outputs = self._infer(inputs)
        check_outputs(outputs, self.sidecar.outputs)
        return outputs

    def _load(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.artifact)!r}, device={self.device!r})"
