"""Backends by name, loaded lazily, and the choice of one for an engine file.

:data:`BACKENDS` maps a name to ``module:attr`` (a backend class, or a factory returning one)
plus fixed options; nothing is imported until a backend is opened. The runtime's own are
ONNX Runtime and TensorRT. Other packages add backends through the ``heke.backends``
entry-point group (name = ``module:attr``): that is how the torch backend, which needs torch
and the reference model, joins from ``heke_export`` while this package never imports either
(docs/ARCHITECTURE.md).

The backend of an engine comes from its suffix (``.onnx``, ``.plan``, ``.engine``); a plugin
class may run other spellings: its static ``claims(artifact) -> bool`` says so, its
``ARTIFACTS`` string names them in messages, and ``fileless(artifact) -> bool`` marks those
that name no file (the torch backend claims the authors' ``.pkl``/``.pt``/``.pth``
checkpoints and ``demo:<model>``, which is fileless).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from heke_runtime.backends.base import (
    BackendError,
    BackendUnavailableError,
    BaseBackend,
    InferenceInputError,
)

BackendFactory = Callable[..., BaseBackend]
ENTRY_POINT_GROUP = "heke.backends"

BY_SUFFIX: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
}


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend lives (``module:attr``) and the options its name fixes."""

    name: str
    target: str
    options: Mapping[str, Any] = field(default_factory=dict)
    plugin: bool = False

    def load(self) -> BackendFactory:
        """The backend class or factory, with this name's options bound (imports it)."""
        module, _, attr = self.target.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise BackendUnavailableError(
                f"backend {self.name!r} ({self.target}) cannot be loaded: {exc}"
            ) from None
        return partial(factory, **self.options) if self.options else factory

    def claims(self, artifact: str) -> bool:
        """A plugin's own word that it runs ``artifact`` (never for built-in backends)."""
        return self._plugin_says("claims", artifact)

    def fileless(self, artifact: str) -> bool:
        """A plugin's own word that ``artifact`` names no file (``demo:<model>``)."""
        return self._plugin_says("fileless", artifact)

    def _plugin_says(self, question: str, artifact: str) -> bool:
        if not self.plugin:
            return False
        try:
            answer = getattr(self.load(), question, None)
        except BackendUnavailableError:
            return False  # a broken plugin claims nothing; naming it with --backend says why
        return bool(answer is not None and answer(artifact))

    def artifacts(self) -> str:
        """What a plugin runs beyond the suffix table, for messages ('' if it does not say)."""
        try:
            return str(getattr(self.load(), "ARTIFACTS", ""))
        except BackendUnavailableError:
            return ""


_ONNXRUNTIME = "heke_runtime.backends.onnxruntime:OnnxRuntimeBackend"
BUILTIN: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry("onnxruntime", _ONNXRUNTIME, {"provider": "auto"}),
    "onnxruntime-cpu": BackendEntry("onnxruntime-cpu", _ONNXRUNTIME, {"provider": "cpu"}),
    "onnxruntime-cuda": BackendEntry("onnxruntime-cuda", _ONNXRUNTIME, {"provider": "cuda"}),
    "onnxruntime-tensorrt": BackendEntry(
        "onnxruntime-tensorrt", _ONNXRUNTIME, {"provider": "tensorrt"}
    ),
    "tensorrt": BackendEntry("tensorrt", "heke_runtime.backends.tensorrt:TensorRTBackend"),
}


class BackendRegistry(Mapping[str, BackendEntry]):
    """The built-in backends, then the ``heke.backends`` entry points (read on first use).

    A plugin cannot replace a built-in name; plugins are listed in the order Python's package
    metadata gives them.
    """

    def __init__(self, builtin: Mapping[str, BackendEntry]) -> None:
        self._builtin = dict(builtin)
        self._entries: dict[str, BackendEntry] | None = None

    def _all(self) -> dict[str, BackendEntry]:
        if self._entries is None:
            entries = dict(self._builtin)
            for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                entries.setdefault(point.name, BackendEntry(point.name, point.value, plugin=True))
            self._entries = entries
        return self._entries

    def __getitem__(self, name: str) -> BackendEntry:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def plugins(self) -> list[BackendEntry]:
        return [entry for entry in self._all().values() if entry.plugin]


BACKENDS = BackendRegistry(BUILTIN)


def known_backend(name: str) -> str:
    """``name`` if it is a registered backend; else the error lists the valid ones."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    return name


def backend_name_for(artifact: str | Path, backend: str | None = None) -> str:
    """``backend`` when given (checked), else the one the engine implies."""
    if backend is not None:
        return known_backend(backend)
    suffix = Path(str(artifact)).suffix.lower()
    if suffix in BY_SUFFIX:
        return BY_SUFFIX[suffix]
    claimed = next((e.name for e in BACKENDS.plugins() if e.claims(str(artifact))), None)
    if claimed is not None:
        return claimed
    known = ", ".join([*BY_SUFFIX, *filter(None, (e.artifacts() for e in BACKENDS.plugins()))])
    raise BackendError(
        f"{artifact}: cannot tell the backend from the suffix {suffix or '(none)'!r} "
        f"(known: {known}); pass a backend ({', '.join(BACKENDS)})"
    )


def open_backend(artifact: str | Path, backend: str | None = None, **options: Any) -> BaseBackend:
    """An unentered backend for ``artifact`` (its sidecar already checked); use ``with``.

    ``backend`` is a name already chosen (see :func:`backend_name_for`), or None to choose
    it from the artifact here; only the chosen backend's module is imported.
    """
    name = backend_name_for(artifact) if backend is None else known_backend(backend)
    return BACKENDS[name].load()(Path(artifact), **options)


__all__ = [
    "BACKENDS",
    "BUILTIN",
    "BY_SUFFIX",
    "ENTRY_POINT_GROUP",
    "BackendEntry",
    "BackendError",
    "BackendRegistry",
    "BackendUnavailableError",
    "BaseBackend",
    "InferenceInputError",
    "backend_name_for",
    "known_backend",
    "open_backend",
]
