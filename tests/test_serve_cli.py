"""``heke-serve``'s command line without a server: usage errors (exit 2, one line naming the
option) and the defaults its help promises (the README's Serving section)."""

from __future__ import annotations

import re
import socket
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
    *("--max-queue", "1", "--max-upload-mb", "0", "--port", "0", "--job-ttl", "1"),
    *("--drain-timeout", "0", "--replica-gpus", "0", "--batch-delay-ms", "0", "--max-batch", "1"),
)


def test_usage_errors_exit_2_with_one_line(capsys, engine, tmp_path):
    empty, nope = tmp_path / "token", tmp_path / "nope"
    empty.write_text("\n")
    cases = [
        (["-e", tmp_path / "missing.onnx"], "--engine"),
        (["-e", engine, "--timeout", "0"], "--timeout 0: expected seconds, more than 0"),
        (["-e", engine, "--on-damage", "skip"], "--on-damage must be 'fail' or 'conceal'"),
        (["-e", engine, "--hdr", "pq"], "--hdr must be 'tonemap' or 'as-is'"),
        (["-e", engine, "--token-file", empty], "the file is empty"),
        (["-e", engine, "--token-file", nope], f"--token-file {nope}: No such file or directory\n"),
        (["-e", engine, "--allow-path", empty], "not a folder"),
        # The least values are taken: parsing passes them, and the body's own check speaks.
        (["-e", engine, *LEAST, "--timeout", "0"], "--timeout 0: expected seconds, more than 0"),
        (["-e", engine, "--port", "65535", "--timeout", "0"], "--timeout 0: expected seconds"),
    ]
    # Each bound refused by the parser, named in the line; "--timeout 0" after it makes a bound
    # that lets the value through fail at once, on the body's check (another line), instead of
    # starting a server.
    bounds = [
        *(("--port", "65536"), ("--port", "-1"), ("--batch-delay-ms", "-1")),
        *(("--max-batch", "0"), ("--replicas", "0"), ("--max-jobs", "0"), ("--threads", "-1")),
        *(("--decode-workers", "0"), ("--max-queue", "0"), ("--max-upload-mb", "-1")),
        *(("--job-ttl", "0"), ("--drain-timeout", "-1"), ("--replica-gpus", "-0.5")),
    ]
    cases += [(["-e", engine, *bound, "--timeout", "0"], bound[0]) for bound in bounds]
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
    limits = ServiceLimits(max_batch=4)  # the Python API's defaults: the command's
    assert (limits.timeout_s, limits.batch_delay_s) == (600.0, 0.005)
    assert "[default: None]" not in text  # options without one say what happens instead


def test_ray_without_ray_serve_names_the_extra(capsys, engine, monkeypatch):
    # Ray Serve is installed here: its import is made to fail as a missing package's does.
    import ray

    monkeypatch.setitem(sys.modules, "ray.serve", None)
    monkeypatch.delattr(ray, "serve", raising=False)
    code, _, err = run(capsys, "-e", engine, "--ray")
    assert code == 2
    assert "--ray needs Ray Serve (" in err and SERVE_RAY_EXTRA in err
    assert len(err.strip().splitlines()) == 1


def test_a_port_in_use_and_an_engine_that_does_not_open_are_one_line(capsys, engine, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "-e", engine, "--port", port)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"heke-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("not an engine")
    code, _, err = run(capsys, "-e", notes)
    assert code == 1
    assert err.startswith(f"heke-serve: error: {notes}: cannot tell the backend from the suffix")
    assert len(err.strip().splitlines()) == 1
