"""ONNX Runtime comes from an extra, ``heke[cpu]`` (onnxruntime) or ``heke[gpu]``
(onnxruntime-gpu), so an install may have none, or a broken one. Then ``heke-run`` with an
``.onnx`` engine says what to install in one line, exit status 1, before it writes anything.

The missing or broken package is simulated, not uninstalled: the installed ``heke-run``
script runs in a child Python whose first meta-path finder answers ``import onnxruntime`` as
Python would for each case: ``ModuleNotFoundError`` with ``name="onnxruntime"`` for a package
that is not installed; a plain ``ImportError`` from inside the package for one whose shared
library does not load; an empty namespace package for the ``onnxruntime`` folder that removing
one of onnxruntime and onnxruntime-gpu leaves behind when both were installed. This machine's
packages stay as they are, and the test runs wherever the suite runs.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from heke_runtime.backends.onnxruntime import _preload_cuda_libraries
from tests.test_backends import tiny_engine
from tests.videos import make_video

RUN_WITH_FINDER = """
import importlib.machinery, runpy, sys

class OnnxRuntimeFinder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] != "onnxruntime":
            return None
        answer = ANSWER
        if isinstance(answer, BaseException):
            raise answer
        return answer

sys.meta_path.insert(0, OnnxRuntimeFinder())
sys.argv = ARGV
runpy.run_path(SCRIPT, run_name="__main__")
"""

NOT_INSTALLED = "ModuleNotFoundError(f'No module named {name!r}', name=name)"
BROKEN = "ImportError('libonnxruntime.so: cannot open shared object file', name=name + '.capi')"
EMPTY_FOLDER = "importlib.machinery.ModuleSpec(name, None, is_package=True)"
REINSTALL = (
    "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'heke[cpu]' or 'heke[gpu]' "
    "(one of them)"
)


def heke_run_with(answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``heke-run ARGS`` with ``import onnxruntime`` answered by ``answer`` (an expression of
    ``name``: an exception to raise, a spec to return, or None to search as usual)."""
    script = Path(sys.executable).parent / "heke-run"
    code = (
        RUN_WITH_FINDER.replace("ANSWER", answer)
        .replace("ARGV", repr(["heke-run", *args]))
        .replace("SCRIPT", repr(str(script)))
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.fixture(scope="module")
def engine() -> str:
    return str(tiny_engine("r2p1d_HEKE_4"))


@pytest.mark.parametrize(
    ("answer", "line"),
    [
        (
            NOT_INSTALLED,
            "heke-run: error: no ONNX Runtime installed: pip install 'heke[cpu]' "
            "(or 'heke[gpu]' for NVIDIA GPUs)",
        ),
        (
            BROKEN,
            "heke-run: error: ONNX Runtime is installed but does not import (libonnxruntime.so: "
            f"cannot open shared object file); {REINSTALL}",
        ),
        (
            EMPTY_FOLDER,
            "heke-run: error: ONNX Runtime is broken (an onnxruntime folder without its "
            "library: were onnxruntime and onnxruntime-gpu both installed, then one removed?); "
            f"{REINSTALL}",
        ),
    ],
    ids=["not-installed", "broken", "empty-folder"],
)
def test_heke_run_says_what_to_install_in_one_line(tmp_path, engine, answer, line):
    video = make_video(tmp_path / "a.mp4", frames=30)
    out = tmp_path / "r.jsonl"
    done = heke_run_with(answer, str(video), "-e", engine, "-o", str(out))
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [line]
    assert done.stdout == ""
    assert not out.exists()  # said at start-up: no output file, no video decoded


def test_the_finder_alone_changes_nothing(tmp_path, engine):
    """The same child with the finder answering None scores the video: each failure above is
    the simulated install's."""
    video = make_video(tmp_path / "a.mp4", frames=30)
    out = tmp_path / "r.jsonl"
    done = heke_run_with("None", str(video), "-e", engine, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.is_file()


def test_gpu_builds_preload_their_pip_cuda_libraries_quietly(capsys):
    """``onnxruntime-gpu[cuda,cudnn]`` brings CUDA as pip packages that only its preload_dlls
    finds; what it prints goes to stderr, so records on stdout stay clean."""
    calls = []

    def preload_dlls():
        calls.append("preload")
        print("Failed to load libcudnn.so.9")

    _preload_cuda_libraries(types.SimpleNamespace(preload_dlls=preload_dlls))  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert calls == ["preload"]
    assert out == "" and err == "Failed to load libcudnn.so.9\n"
    _preload_cuda_libraries(types.SimpleNamespace())  # type: ignore[arg-type]  # ORT < 1.21
