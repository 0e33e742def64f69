"""``heke-serve``'s command line without a server: usage errors (exit 2, one line naming the
option) and the defaults its help promises (the README's Serving section)."""

from __future__ import annotations

import re
import sys

import pytest

from heke_serve.cli import main
from heke_serve.ray_serve import SERVE_RAY_EXTRA
from heke_serve.service import ServiceLimits
from tests.test_backends import tiny_engine


@pytest.fixture(scope="module")
def engine() -> str:
    return str(tiny_engine("r2p1d_HEKE_4"))


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


LEAST = (
    *("--max-jobs", "1", "--replicas", "1", "--threads", "0", "--decode-workers", "1"),
    *("--max-queue", "1", "--max-upload-mb", "0"),
)


def test_usage_errors_exit_2_with_one_line(capsys, engine, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n")
    cases = [
        (["-e", tmp_path / "missing.onnx"], "--engine"),
        (["-e", engine, "--timeout", "0"], "--timeout 0: expected seconds, more than 0"),
        (["-e", engine, "--on-damage", "skip"], "--on-damage must be 'fail' or 'conceal'"),
        (["-e", engine, "--hdr", "pq"], "--hdr must be 'tonemap' or 'as-is'"),
        (["-e", engine, "--token-file", empty], "the file is empty"),
        (["-e", engine, "--token-file", tmp_path / "nope"], "--token-file"),
        (["-e", engine, "--allow-path", empty], "not a folder"),
        (["-e", engine, "--port", "70000"], "--port"),
        (["-e", engine, "--batch-delay-ms", "-1"], "--batch-delay-ms"),
        (["-e", engine, "--max-batch", "0"], "--max-batch"),
        (["-e", engine, "--replicas", "0"], "--replicas"),
        (["-e", engine, "--max-jobs", "0"], "--max-jobs"),
        (["-e", engine, "--threads", "-1"], "--threads"),
        (["-e", engine, "--decode-workers", "0"], "--decode-workers"),
        (["-e", engine, "--max-queue", "0"], "--max-queue"),
        (["-e", engine, "--max-upload-mb", "-1"], "--max-upload-mb"),
        # The least values are taken: parsing passes them, and the body's own check speaks.
        (["-e", engine, *LEAST, "--timeout", "0"], "--timeout 0: expected seconds, more than 0"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, *args)
        assert code == 2, (args, err)
        assert message in err, (args, err)


def test_help_states_the_defaults(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    text = re.sub(r"\s+", " ", out)
    for option, default in [
        ("--host", "127.0.0.1"),  # loopback unless the user says otherwise
        ("--port", "8000"),
        ("--batch-delay-ms", "5.0"),
        ("--max-upload-mb", "2048.0"),
        ("--timeout", "600.0"),
        ("--max-jobs", "1000"),
        ("--job-ttl", "3600.0"),
        ("--drain-timeout", "60.0"),
        ("--replicas", "2"),
        ("--on-damage", "fail"),
        ("--hdr", "tonemap"),
    ]:
        found = re.search(re.escape(option) + r" .*?\[default: ([^;\]]+)", text)
        assert found and found.group(1).strip() == default, (option, found and found.group(1))
    assert ServiceLimits(max_batch=4).timeout_s == 600.0  # the Python API's default: the same


def test_ray_without_ray_serve_names_the_extra(capsys, engine, monkeypatch):
    # Ray Serve is installed here: its import is made to fail as a missing package's does.
    import ray

    monkeypatch.setitem(sys.modules, "ray.serve", None)
    monkeypatch.delattr(ray, "serve", raising=False)
    code, _, err = run(capsys, "-e", engine, "--ray")
    assert code == 2
    assert "--ray needs Ray Serve (" in err and SERVE_RAY_EXTRA in err
    assert len(err.strip().splitlines()) == 1
