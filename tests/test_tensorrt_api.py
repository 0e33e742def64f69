"""The TensorRT backend without a GPU: every TensorRT/CUDA name it uses exists in the real
bindings (TensorRT 11 lean, cuda-bindings), and its pipelined runner gives the right outputs on
fake ``tensorrt`` and ``cuda.bindings.runtime`` modules.

The fake CUDA runtime is lazy on purpose: copies and kernels queued on a stream run only when
the host waits for them (an event or stream sync) or when another stream waits on an event, so
reading a pinned buffer too early, or overwriting one that a queued copy still reads, gives
wrong outputs here as it would on a GPU.
"""

from __future__ import annotations

import ast
import ctypes
import dataclasses
import importlib
import inspect
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from heke_runtime.backends import tensorrt as trt_backend
from heke_runtime.backends.base import BackendError, InferenceInputError
from heke_runtime.backends.tensorrt import (
    CUDART_NAMES,
    TRT_NAMES,
    TensorRTBackend,
    choose_profile,
    split_batch,
)
from heke_runtime.files import sha256_file
from heke_runtime.sidecar import SidecarError, read_sidecar, write_sidecar
from tests.test_backends import tiny_engine

FEATURES = 360  # the tiny r2p1d's feature width


def fake_model(clips: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake engine computes: per-clip statistics (any per-row function will do)."""
    flat = clips.reshape(clips.shape[0], -1).astype(np.float64)
    heads = np.stack([flat.mean(1), flat.max(1), flat.min(1), flat[:, 0]], axis=1)
    reps = -(-FEATURES // flat.shape[1])
    features = np.tile(flat, (1, reps))[:, :FEATURES]
    return {"heads": heads.astype(np.float32), "features": features.astype(np.float32)}


# --------------------------------------------------------------------------- fake CUDA


class FakeCudart:
    """Enough of ``cuda.bindings.runtime``: real host memory for "device" and pinned buffers
    (ctypes), streams as queues of deferred operations, events as positions in them."""

    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2
    cudaError_t = SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, name: str = "NVIDIA H100 80GB HBM3", cc: tuple[int, int] = (9, 0)):
        self.props = SimpleNamespace(name=name.encode(), major=cc[0], minor=cc[1])
        self.memory: dict[int, ctypes.Array] = {}
        self.streams: dict[int, list] = {}  # handle -> pending operations
        self.events: dict[int, tuple[int, int] | None] = {}  # handle -> (stream, ops seen)
        self.done: dict[int, int] = {}  # stream -> operations executed
        self.log: list[str] = []  # operations in the order they ran
        self.host: list[str] = []  # what the host queued, and when it blocked
        self.mallocs = self.frees = 0

    # plumbing
    def cudaGetErrorName(self, err):
        return 0, b"cudaErrorFake"

    def cudaSetDevice(self, device):
        return (0,)

    def cudaGetDeviceProperties(self, device):
        return 0, self.props

    def _alloc(self, nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        address = ctypes.addressof(buffer)
        self.memory[address] = buffer
        self.mallocs += 1
        return 0, address

    def cudaMalloc(self, nbytes):
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes):
        return self._alloc(nbytes)

    def _free(self, address):
        del self.memory[address]
        self.frees += 1
        return (0,)

    def cudaFree(self, address):
        return self._free(address)

    def cudaFreeHost(self, address):
        return self._free(address)

    # streams and events
    def cudaStreamCreateWithFlags(self, flags):
        handle = 100 + len(self.streams)
        self.streams[handle], self.done[handle] = [], 0
        return 0, handle

    def cudaStreamDestroy(self, stream):
        assert self.done[stream] == len(self.streams[stream]), "destroyed with work pending"
        return (0,)

    def cudaEventCreateWithFlags(self, flags):
        handle = 1000 + len(self.events)
        self.events[handle] = None
        return 0, handle

    def cudaEventDestroy(self, event):
        return (0,)

    def cudaEventRecord(self, event, stream):
        self.events[event] = (stream, len(self.streams[stream]))
        return (0,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        marker = self.events[event]
        self.streams[stream].append(("wait", marker))
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        name = "upload" if kind == 1 else "download"
        self.streams[stream].append(("copy", (dst, src, nbytes, name)))
        self.host.append(name)
        return (0,)

    def enqueue(self, stream, label, work):
        self.streams[stream].append(("kernel", (label, work)))

    def run_until(self, stream, count):
        ops = self.streams[stream]
        while self.done[stream] < count:
            kind, arg = ops[self.done[stream]]
            self.done[stream] += 1
            if kind == "wait" and arg is not None:
                self.run_until(*arg)
            elif kind == "copy":
                dst, src, nbytes, name = arg
                ctypes.memmove(dst, src, nbytes)
                self.log.append(name)
            elif kind == "kernel":
                self.log.append(arg[0])
                arg[1]()

    def cudaEventSynchronize(self, event):
        if self.events[event] is not None:
            self.host.append("wait")
            self.run_until(*self.events[event])
        return (0,)

    def cudaStreamSynchronize(self, stream):
        self.run_until(stream, len(self.streams[stream]))
        return (0,)

    def read(self, address, shape):
        count = int(np.prod(shape))
        raw = ctypes.string_at(address, count * 4)
        return np.frombuffer(raw, dtype=np.float32).reshape(shape).copy()

    def write(self, address, array):
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        ctypes.memmove(address, data, len(data))


# --------------------------------------------------------------------------- fake TensorRT


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.shapes, self.addresses = {}, {}
        self.profile = 0
        self.profile_switches = []

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        self.profile_switches.append(index)
        return True

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.profiles[self.profile][name]
        if not all(lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            raise RuntimeError(f"shape {shape} outside profile {self.profile}")
        self.shapes[name] = tuple(shape)
        return True

    def infer_shapes(self):
        return []

    def get_tensor_shape(self, name):
        batch = self.shapes["clips"][0]
        return (batch, 4) if name == "heads" else (batch, FEATURES)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        cuda = self.engine.cuda
        shape, where = self.shapes["clips"], dict(self.addresses)  # bound now, run later

        def work():
            outputs = fake_model(cuda.read(where["clips"], shape))
            for name, array in outputs.items():
                cuda.write(where[name], array)

        cuda.enqueue(stream, "compute", work)
        return True


class FakeEngine:
    names = ("clips", "heads", "features")

    def __init__(self, cuda, profiles, context_type):
        self.cuda, self.profiles, self.context_type = cuda, profiles, context_type
        self.num_io_tensors = 3
        self.num_optimization_profiles = len(profiles)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "clips" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "FLOAT"

    def get_tensor_profile_shape(self, name, index):
        return self.profiles[index][name]

    def create_execution_context(self):
        return self.context_type(self)


def fake_tensorrt(cuda, profiles, version="11.4.0.106", context_type=FakeContext):
    """A ``tensorrt`` module whose engines run ``context_type`` (the fake model by default)."""

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan):
            return None if plan == b"garbage" else FakeEngine(cuda, profiles, context_type)

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    return SimpleNamespace(
        __version__=version,
        Logger=Logger,
        Runtime=Runtime,
        TensorIOMode=SimpleNamespace(INPUT="INPUT"),
        nptype=lambda dtype: np.float32,
    )


def profile(low_hw, high_hw, max_batch, opt_hw=None):
    opt_hw = opt_hw or high_hw
    shape = lambda b, hw: (b, 3, 8, *hw)  # noqa: E731
    return {"clips": (shape(1, low_hw), shape(max_batch, opt_hw), shape(max_batch, high_hw))}


@pytest.fixture
def plan(tmp_path):
    """A plan file with a sidecar for this (fake) GPU and TensorRT 11.4."""
    path = tmp_path / "model.plan"
    path.write_bytes(b"a plan")
    info = {
        "version": "11.4.0.106",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
    }
    sidecar = dataclasses.replace(
        read_sidecar(tiny_engine("r2p1d_HEKE_4")),
        kind="tensorrt",
        artifact_sha256=sha256_file(path),
        tensorrt=info,
    )
    write_sidecar(path, sidecar)
    return path


@pytest.fixture
def fakes(monkeypatch):
    cuda = FakeCudart()
    profiles = [profile((16, 16), (64, 64), 4), profile((65, 65), (128, 128), 2)]
    trt = fake_tensorrt(cuda, profiles)
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "_import_cudart", lambda: cuda)
    return SimpleNamespace(cuda=cuda, trt=trt, profiles=profiles)


def clips(batch, hw=(32, 48), seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, *hw)).astype(np.float32)


# --------------------------------------------------------------------------- real names


def resolve(module, dotted):
    target = module
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def test_every_tensorrt_name_exists_in_the_real_tensorrt_11_bindings():
    trt = pytest.importorskip(
        "tensorrt_lean_bindings", reason="pip install tensorrt-lean-cu13-bindings (imports on CPU)"
    )
    assert int(trt.__version__.split(".")[0]) >= 11
    missing = []
    for name in TRT_NAMES:
        try:
            resolve(trt, name)
        except AttributeError:
            missing.append(name)
    assert not missing, f"not in TensorRT {trt.__version__}: {missing}"


def test_every_cuda_runtime_name_exists_in_cuda_bindings():
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="pip install cuda-bindings")
    missing = [n for n in CUDART_NAMES if not _has(cudart, n)]
    assert not missing, f"not in cuda.bindings.runtime: {missing}"


def _has(module, dotted):
    try:
        resolve(module, dotted)
    except AttributeError:
        return False
    return True


# What each name (or attribute) in the backend stands for, as a prefix of the listed names.
TRT_ROOTS = {
    "trt": "",
    "self._trt": "",
    "engine": "ICudaEngine.",
    "self._engine": "ICudaEngine.",
    "context": "IExecutionContext.",
    "self._context": "IExecutionContext.",
    "runtime": "Runtime.",
}
CUDART_ROOTS = ("rt", "self.rt", "cuda.rt")


def attribute_chains(tree):
    """Dotted text of every outermost attribute chain (``trt.TensorIOMode.INPUT``)."""
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    return {
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and id(n) not in inner
    }


def used_names(chains, roots):
    found = set()
    for chain in chains:
        for root, prefix in roots.items():
            if chain.startswith(root + "."):
                found.add(prefix + chain[len(root) + 1 :])
    return found


def test_the_name_lists_cover_what_the_code_uses():
    """Every TensorRT and CUDA runtime member the module touches is in TRT_NAMES /
    CUDART_NAMES, so the two tests above check what really runs."""
    chains = attribute_chains(ast.parse(inspect.getsource(trt_backend)))
    used_trt = used_names(chains, TRT_ROOTS)
    used_rt = used_names(chains, dict.fromkeys(CUDART_ROOTS, ""))
    assert used_trt - set(TRT_NAMES) == set()
    assert used_rt - set(CUDART_NAMES) == set()
    assert {
        "ICudaEngine.get_tensor_profile_shape",
        "IExecutionContext.execute_async_v3",
    } <= used_trt
    assert {"TensorIOMode.INPUT", "Runtime.engine_host_code_allowed", "nptype"} <= used_trt
    assert {
        "cudaMallocHost",
        "cudaStreamWaitEvent",
        "cudaMemcpyKind.cudaMemcpyHostToDevice",
    } <= used_rt


# --------------------------------------------------------------------------- runner on fakes


def test_outputs_match_and_copies_of_neighbouring_batches_overlap(plan, fakes):
    batches = [{"clips": clips(4, seed=i)} for i in range(5)]
    with TensorRTBackend(plan) as backend:
        outputs = list(backend.infer_many(iter(batches)))
        assert "TensorRT 11.4.0.106 on NVIDIA H100" in backend.device
    for batch, out in zip(batches, outputs):
        expected = fake_model(batch["clips"])
        np.testing.assert_array_equal(out["heads"], expected["heads"])
        np.testing.assert_array_equal(out["features"], expected["features"])
    host = fakes.cuda.host
    # The host queued batch 1 before it first waited (for batch 0): they overlap on the GPU.
    assert host.count("upload") == 5 and host.index("wait") > host.index("upload", 1)


def test_buffers_are_allocated_once_and_grown_only_for_a_larger_shape(plan, fakes):
    with TensorRTBackend(plan) as backend:
        for batch in (4, 4, 2, 4, 1):
            backend.infer({"clips": clips(batch)})
        allocated = fakes.cuda.mallocs  # 2 slots x 3 tensors x (device + pinned)
        assert allocated == 12
        backend.infer({"clips": clips(4, hw=(64, 64))})
        assert fakes.cuda.mallocs > allocated
    assert fakes.cuda.frees == fakes.cuda.mallocs  # everything freed on exit


def test_each_batch_runs_on_a_profile_that_fits_and_large_batches_are_split(plan, fakes):
    small, large = clips(3, hw=(40, 40), seed=1), clips(5, hw=(96, 100), seed=2)
    with TensorRTBackend(plan) as backend:
        out_large = backend.infer({"clips": large})  # profile 1 takes at most 2: split in 3
        out_small = backend.infer({"clips": small})
        context = backend._context
        with pytest.raises(BackendError, match=r"no optimisation profile .* \[1, 3, 8, 16, 16\]"):
            backend.infer({"clips": clips(1, hw=(8, 8))})
    np.testing.assert_array_equal(out_large["heads"], fake_model(large)["heads"])
    np.testing.assert_array_equal(out_small["features"], fake_model(small)["features"])
    assert context.profile_switches == [1, 0]


def test_profile_choice_prefers_the_nearest_opt():
    profiles = [profile((16, 16), (256, 256), 8, opt_hw=(32, 32)), profile((16, 16), (256, 256), 8)]
    assert choose_profile(profiles, {"clips": (2, 3, 8, 40, 40)}) == 0
    assert choose_profile(profiles, {"clips": (2, 3, 8, 250, 250)}) == 1
    pieces = split_batch({"clips": clips(5)}, 2)
    assert [p["clips"].shape[0] for p in pieces] == [2, 2, 1]


def test_inputs_are_checked_in_infer_many(plan, fakes):
    with TensorRTBackend(plan) as backend, pytest.raises(InferenceInputError, match="float64"):
        list(backend.infer_many([{"clips": clips(1).astype(np.float64)}]))


def test_plans_for_another_gpu_or_version_are_refused_with_the_reason(plan, fakes, monkeypatch):
    monkeypatch.setattr(trt_backend, "_import_cudart", lambda: FakeCudart("NVIDIA A10", (8, 6)))
    with pytest.raises(SidecarError, match=r"cannot run here: .*'NVIDIA A10'.*8\.6"):
        TensorRTBackend(plan).__enter__()
    old = fake_tensorrt(fakes.cuda, fakes.profiles, version="10.9.0")
    monkeypatch.setattr(trt_backend, "_import_tensorrt", lambda: old)
    monkeypatch.setattr(trt_backend, "_import_cudart", lambda: fakes.cuda)
    refusal = r"built with TensorRT 11\.4\.0\.106, this machine has 10\.9"
    with pytest.raises(SidecarError, match=refusal):
        TensorRTBackend(plan).__enter__()


def test_version_compatible_plans_from_an_older_major_need_trust(plan, fakes):
    sidecar = read_sidecar(plan)
    info = {**sidecar.tensorrt, "version": "10.13.0", "version_compatible": True}
    write_sidecar(plan, dataclasses.replace(sidecar, tensorrt=info))
    with pytest.raises(SidecarError, match="trust_host_code=True"):
        TensorRTBackend(plan).__enter__()
    with TensorRTBackend(plan, trust_host_code=True) as backend:
        assert backend.infer({"clips": clips(1)})["heads"].shape == (1, 4)


def test_an_undeserializable_plan_is_an_error(plan, fakes):
    plan.write_bytes(b"garbage")
    write_sidecar(plan, dataclasses.replace(read_sidecar(plan, check_hash=False),
                                            artifact_sha256=sha256_file(plan)))  # fmt: skip
    with pytest.raises(BackendError, match="could not deserialize"):
        TensorRTBackend(plan).__enter__()


def test_the_module_imports_no_framework():
    module = importlib.reload(trt_backend)
    assert "tensorrt" not in module.__dict__ and "cudart" not in module.__dict__
    assert Path(module.__file__).name == "tensorrt.py"
