"""Torch backend: the reference model run fast, for machines with torch and no TensorRT.

Engines
    ``demo:<model>`` (``demo:r2p1d_HEKE_4``; ``demo:<model>-tiny`` for the tiny test
    configuration) runs seeded demo weights, whose scores are not quality predictions. A
    checkpoint in the authors' format (``.pkl``, ``.pt`` or ``.pth``, ``{'state_dict': ...}``)
    runs their weights; the model is recognised from its keys. There is no sidecar file: the
    backend describes the weights itself (``kind="torch"``).

Numerics
    ``fp32``: the reference model as it is (TF32 turned off on CUDA, so it stays float32).
    ``fp16`` (CUDA): ``heke_export.wrappers.fp16_deploy``, the FP16 engine's contract: BatchNorm
    folded in float32, convolutions in float16, the pooled statistics and heads in float32.
    ``bf16`` (CPU): the same contract with bfloat16 convolutions (oneDNN kernels on CPUs with
    AVX-512 BF16 or AMX). ``auto`` takes fp16 on CUDA, bf16 on such CPUs, else fp32, and
    ``device`` says which; asking for a precision the device cannot run fast is an error.

Speed
    Convolution weights and inputs are channels-last (NDHWC/NHWC: what oneDNN's and cuDNN's
    fast kernels take). On CUDA, cuDNN autotuning is on (scoped to this backend's calls) and
    each input shape is captured once as a CUDA graph (at most ``max_graphs`` kept, sharing
    one memory pool); inputs are staged in pinned host memory and copied on the backend's own
    stream. Batches are padded to the next power of two so that a few graphs serve every
    batch size. Outputs are fresh arrays on every call.

Registration
    This backend needs torch and the reference model, so it lives here, on the export side,
    and joins the runtime's backend table through the ``heke.backends`` entry points
    (``torch``, ``torch-cpu``, ``torch-cuda``; see ``pyproject.toml``): the runtime never
    imports it (docs/ARCHITECTURE.md). :meth:`TorchBackend.claims` tells the runtime which
    engine spellings are this backend's.

torch (and heke_ref, which needs it) is imported only when the backend is built.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from heke_runtime.backends.base import BackendError, BackendUnavailableError, BaseBackend
from heke_runtime.errors import HekeError
from heke_runtime.files import now_utc
from heke_runtime.models import MODELS, model_entry
from heke_runtime.sidecar import Sidecar
from heke_runtime.spec import default_spec

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
DEMO_PREFIX = "demo:"
TINY_SUFFIX = "-tiny"
CHECKPOINT_SUFFIXES = frozenset({".pkl", ".pt", ".pth"})
TORCH_EXTRA = "pip install 'heke[export]' (torch)"
# Which precisions each device runs natively; others would be emulated (slow) or unsupported.
NATIVE: dict[str, tuple[str, ...]] = {"cuda": ("fp16", "fp32"), "cpu": ("bf16", "fp32")}


def is_torch_engine(artifact: str | Path) -> bool:
    """A ``demo:`` spelling or a checkpoint suffix: what this backend runs."""
    text = str(artifact)
    return text.startswith(DEMO_PREFIX) or Path(text).suffix.lower() in CHECKPOINT_SUFFIXES


def is_demo_engine(artifact: str | Path) -> bool:
    """``demo:<model>`` names seeded weights, not a file."""
    return str(artifact).startswith(DEMO_PREFIX)


def parse_demo(spec: str) -> tuple[str, bool]:
    """``demo:r2p1d_HEKE_4-tiny`` -> ``("r2p1d_HEKE_4", True)``."""
    name = spec[len(DEMO_PREFIX) :]
    tiny = name.endswith(TINY_SUFFIX)
    return (name[: -len(TINY_SUFFIX)] if tiny else name), tiny


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_bf16_support(flags: frozenset[str] | None = None) -> str | None:
    """``"AMX"`` or ``"AVX-512 BF16"`` when the CPU computes bfloat16 natively, else None."""
    flags = cpu_flags() if flags is None else flags
    for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16")):
        if flag in flags:
            return label
    return None


def resolve(device: str, precision: str, cuda_available: bool, bf16: str | None) -> tuple[str, str]:
    """The concrete ``(device, precision)`` for the options; refuses what would be slow or
    silently different (CUDA asked on a machine without it, bf16 on a CPU without it)."""
    if device not in DEVICES:
        raise BackendError(f"unknown torch device {device!r}; valid: {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    if device == "cuda" and not cuda_available:
        raise BackendUnavailableError(
            "the torch backend was asked for CUDA but torch sees no CUDA GPU (a CPU build, or "
            "no driver); refusing to run on the CPU instead"
        )
    if precision == "auto":
        precision = "fp16" if device == "cuda" else ("bf16" if bf16 else "fp32")
    if precision not in NATIVE[device]:
        why = "it would be emulated, slower than fp32" if precision == "bf16" else "unsupported"
        valid = ", ".join(NATIVE[device])
        raise BackendError(f"precision {precision} on {device}: {why}; valid here: {valid}")
    if device == "cpu" and precision == "bf16" and not bf16:
        raise BackendError(
            "precision bf16 needs a CPU with AVX-512 BF16 or AMX (this one has neither; "
            "bfloat16 would be emulated, slower than fp32); use precision fp32"
        )
    return device, precision


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the torch backend needs torch ({exc}); install it: {TORCH_EXTRA}"
        ) from None
    return torch


def load_weights(artifact: str, *, trust_checkpoint: bool = False) -> Any:
    """``heke_ref`` Weights for a ``demo:`` spelling or an authors' checkpoint file."""
    _import_torch()
    from heke_ref.checkpoint import demo_weights, load_checkpoint

    if artifact.startswith(DEMO_PREFIX):
        model, tiny = parse_demo(artifact)
        if model not in MODELS:
            valid = ", ".join(f"{DEMO_PREFIX}{m}" for m in MODELS)
            raise BackendError(f"unknown demo engine {artifact!r}; valid: {valid} (+'-tiny')")
        return demo_weights(model, tiny=tiny)
    first, *others = MODELS
    try:
        return load_checkpoint(artifact, first, trust_pickle=trust_checkpoint)
    except HekeError as exc:
        # The strict loader names the other model when the keys are its keys.
        other = next((m for m in others if f"looks like a {m}" in str(exc)), None)
        if other is None:
            raise
        return load_checkpoint(artifact, other, trust_pickle=trust_checkpoint)


def sidecar_for(weights: Any, model: Any, precision: str) -> Sidecar:
    """What a sidecar would say about these weights run by this backend."""
    entry = model_entry(weights.model)
    return Sidecar(
        model=weights.model,
        kind="torch",
        precision=precision,
        artifact_sha256=weights.sha256,
        onnx_sha256="",
        weights_sha256=weights.sha256,
        weights_source=weights.source,
        demo_weights=weights.demo,
        preprocess=default_spec(weights.model),
        inputs=entry.input_dims(),
        outputs=entry.output_dims(int(sum(model.feature_sizes))),
        tiny=weights.tiny,
        created=now_utc(),
    )


def deploy_module(model: Any, model_name: str, inputs: tuple[str, ...], precision: str) -> Any:
    """The module run for ``precision``; fp16/bf16 follow the FP16 engine's contract."""
    torch = _import_torch()
    from heke_export.wrappers import fp16_deploy, fp32_deploy

    shape = model_entry(model_name).trace_inputs_shape()
    examples = tuple(torch.zeros(shape) for _ in inputs)
    if precision == "fp32":
        return fp32_deploy(model)
    if precision == "fp16":
        return fp16_deploy(model, model_name, examples)
    return bf16_deploy(model, model_name, examples)


def bf16_deploy(model: Any, model_name: str, examples: tuple[Any, ...]) -> Any:
    """``fp16_deploy`` with bfloat16 backbones (its folding, its float32 statistics/heads)."""
    import copy

    torch = _import_torch()
    from heke_export import wrappers  # torch at import

    class Bf16Backbone(wrappers.HalfBackbone):
        """``HalfBackbone`` computing in bfloat16 (weights cast once, from float32)."""

        def __init__(self, backbone: Any) -> None:
            torch.nn.Module.__init__(self)
            self.backbone = backbone.to(torch.bfloat16)

        def forward(self, x: Any) -> list[Any]:
            return [stage.float() for stage in self.backbone(x.to(torch.bfloat16))]

    deploy = copy.deepcopy(model).eval()
    for attr, example in zip(model_entry(model_name).backbones, examples):
        backbone = wrappers.fold_batchnorm(getattr(deploy, attr), example)
        setattr(deploy, attr, Bf16Backbone(backbone))
    return wrappers.HeadsAndFeatures(deploy).eval()


def to_channels_last(module: Any) -> Any:
    """Convolution weights in channels-last order (5-D: NDHWC, 4-D: NHWC)."""
    torch = _import_torch()
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, (torch.nn.Conv3d, torch.nn.Conv2d)) and weight is not None:
            fmt = torch.channels_last_3d if weight.dim() == 5 else torch.channels_last
            weight.data = weight.data.contiguous(memory_format=fmt)
    return module


def channels_last(tensor: Any) -> Any:
    torch = _import_torch()
    fmt = torch.channels_last_3d if tensor.dim() == 5 else torch.channels_last
    return tensor.contiguous(memory_format=fmt)


@dataclass
class CapturedShape:
    """One CUDA graph and the static tensors it reads and writes."""

    graph: Any
    inputs: dict[str, Any]  # device, channels-last
    staged: dict[str, Any]  # pinned host copies of the inputs
    outputs: tuple[Any, Any]  # device heads, features
    pinned: tuple[Any, Any]  # pinned host heads, features


class TorchBackend(BaseBackend):
    """Runs the reference model with torch (see the module docstring for engines and numerics).

    ``threads`` sets torch's CPU threads (a process-wide torch setting; 0 or None: torch's
    default, the physical cores). ``cuda_graphs``
    captures each input shape once (CUDA only). ``trust_checkpoint`` fully unpickles an
    authors' file that ``weights_only`` loading refuses; only for files you trust.
    """

    name = "torch"
    kind = "torch"
    ARTIFACTS = ".pkl, .pt, .pth, or demo:<model>"  # what claims() accepts, for messages
    claims = staticmethod(is_torch_engine)
    fileless = staticmethod(is_demo_engine)

    def __init__(
        self,
        artifact: str | Path,
        *,
        device: Device = "auto",
        precision: Precision = "auto",
        threads: int | None = None,
        device_id: int = 0,
        trust_checkpoint: bool = False,
        cuda_graphs: bool = True,
        max_graphs: int = 8,
    ) -> None:
        # No BaseBackend.__init__: there is no sidecar file, the weights describe themselves.
        torch = _import_torch()
        self.artifact = Path(str(artifact))
        if threads is not None and threads < 0:
            raise BackendError(f"threads must be >= 0 (0 = torch's default), got {threads}")
        if max_graphs < 1:
            raise BackendError(f"max_graphs must be at least 1, got {max_graphs}")
        self.device_kind, self.precision = resolve(
            device, precision, bool(torch.cuda.is_available()), cpu_bf16_support()
        )
        self.device_id, self.threads = device_id, threads
        self.cuda_graphs, self.max_graphs = cuda_graphs, max_graphs
        self.weights = load_weights(str(artifact), trust_checkpoint=trust_checkpoint)
        from heke_ref.checkpoint import load_model

        self._reference = load_model(self.weights)
        self.sidecar = sidecar_for(self.weights, self._reference, self.precision)
        self._loaded = False
        self._module: Any = None
        self._torch_device: Any = None
        self._stream: Any = None
        self._pool: Any = None
        self._graphs: OrderedDict[tuple[Any, ...], CapturedShape] = OrderedDict()

    @property
    def preferred_batch_size(self) -> int | None:
        """1 on CPU, as for ONNX Runtime: 1080p at batch 4 peaks at 2.0 GB against 1.25 GB,
        for no gain in speed (benchmarks/RESULTS.md, memory); None (the caller's default) on
        CUDA."""
        return 1 if self.device_kind == "cpu" else None

    @property
    def device(self) -> str:
        torch = _import_torch()
        where = "CPU"
        if self.device_kind == "cuda":
            where = f"CUDA {torch.cuda.get_device_name(self.device_id)}"
        kind = {
            "fp32": "float32",
            "fp16": "float16 convolutions, float32 statistics and heads",
            "bf16": f"bfloat16 convolutions ({cpu_bf16_support()}), float32 statistics and heads",
        }[self.precision]
        graphs = ", CUDA graphs" if self.device_kind == "cuda" and self.cuda_graphs else ""
        return f"torch {torch.__version__} {where}: {kind}, channels-last{graphs}"

    # ------------------------------------------------------------------ load / release

    def _load(self) -> None:
        torch = _import_torch()
        if self.threads:
            torch.set_num_threads(self.threads)
        inputs = tuple(self.sidecar.inputs)
        module = deploy_module(self._reference, self.sidecar.model, inputs, self.precision)
        self._torch_device = torch.device(self.device_kind, self.device_id)
        self._module = to_channels_last(module.to(self._torch_device)).eval()
        if self.device_kind == "cuda":
            self._stream = torch.cuda.Stream(self._torch_device)
            self._pool = torch.cuda.graph_pool_handle()

    def _release(self) -> None:
        self._graphs.clear()
        self._module = self._stream = self._pool = None
        if self.device_kind == "cuda":
            _import_torch().cuda.empty_cache()

    # ------------------------------------------------------------------ running

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _import_torch()
        with torch.inference_mode(), self._flags():
            if self.device_kind == "cpu":
                return self._run_cpu(inputs)
            with torch.cuda.device(self._torch_device):
                return self._run_cuda(inputs)

    def _flags(self) -> Any:
        """cuDNN autotuning, and no TF32 in float32 (scoped: no global setting changes)."""
        torch = _import_torch()
        return torch.backends.cudnn.flags(
            enabled=True, benchmark=True, deterministic=False, allow_tf32=False
        )

    def _ordered(self, inputs: Mapping[str, Any]) -> list[Any]:
        return [inputs[name] for name in self.sidecar.inputs]

    def _run_cpu(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _import_torch()
        tensors = [channels_last(torch.from_numpy(np.asarray(a))) for a in self._ordered(inputs)]
        heads, features = self._module(*tensors)
        return {"heads": _numpy(heads), "features": _numpy(features)}

    def _run_cuda(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _import_torch()
        count = next(iter(inputs.values())).shape[0]
        padded = padded_batch(count)
        shape = self._captured({n: (padded, *a.shape[1:]) for n, a in inputs.items()})
        for name, array in inputs.items():
            staged = shape.staged[name].numpy()
            staged[:count] = array  # host copy into pinned memory
            staged[count:] = 0.0  # padding rows: computed, then dropped
        with torch.cuda.stream(self._stream):
            for name, staged in shape.staged.items():
                shape.inputs[name].copy_(staged, non_blocking=True)
            if shape.graph is not None:
                shape.graph.replay()
                outputs = shape.outputs
            else:
                outputs = self._module(*self._ordered(shape.inputs))
            for pinned, output in zip(shape.pinned, outputs):
                pinned.copy_(output, non_blocking=True)
        self._stream.synchronize()
        heads, features = (p.numpy()[:count].copy() for p in shape.pinned)
        return {"heads": heads, "features": features}

    def _captured(self, shapes: Mapping[str, tuple[int, ...]]) -> CapturedShape:
        """The graph for these input shapes: from the cache, or captured now."""
        key = tuple(sorted(shapes.items()))
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        captured = self._capture(shapes)
        self._graphs[key] = captured
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return captured

    def _capture(self, shapes: Mapping[str, tuple[int, ...]]) -> CapturedShape:
        torch = _import_torch()
        device = self._torch_device
        static = {n: channels_last(torch.zeros(s, device=device)) for n, s in shapes.items()}
        staged = {n: torch.zeros(s, pin_memory=True) for n, s in shapes.items()}
        ordered = self._ordered(static)
        with torch.cuda.stream(self._stream):
            for _ in range(3):  # autotunes cuDNN and warms the allocator before capture
                outputs = self._module(*ordered)
        self._stream.synchronize()
        graph = None
        if self.cuda_graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
                outputs = self._module(*ordered)
        pinned = tuple(torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outputs)
        return CapturedShape(
            graph, static, staged, (outputs[0], outputs[1]), (pinned[0], pinned[1])
        )

    @property
    def captured_shapes(self) -> list[tuple[Any, ...]]:
        """Input shapes with a captured graph, least recently used first (CUDA only)."""
        return list(self._graphs)


def padded_batch(count: int) -> int:
    """Batches run padded to a power of two, so a few graphs serve every batch size (rows
    are independent in eval mode: padding changes no real row's result)."""
    return 1 << max(count - 1, 0).bit_length()


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().astype(np.float32, copy=False)


def torch_cpu(artifact: str | Path, **options: Any) -> TorchBackend:
    """The ``torch-cpu`` backend: :class:`TorchBackend` held to the CPU."""
    return TorchBackend(artifact, device="cpu", **options)


def torch_cuda(artifact: str | Path, **options: Any) -> TorchBackend:
    """The ``torch-cuda`` backend: :class:`TorchBackend` held to CUDA (refused without it)."""
    return TorchBackend(artifact, device="cuda", **options)
