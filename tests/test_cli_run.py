"""``heke-run`` end to end on generated videos: inputs, records, resume, exit codes, plots,
and a full run with torch made unimportable."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from heke_runtime.cli import main
from heke_runtime.results import CSV_COLUMNS, read_records
from heke_runtime.sidecar import read_sidecar, write_sidecar
from tests.test_backends import tiny_engine
from tests.videos import make_video


@pytest.fixture
def engine():
    return str(tiny_engine("r2p1d_HEKE_4"))


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    make_video(folder / "a.mp4", frames=30)
    make_video(folder / "sub" / "b.mkv", codec="libx264", frames=30, size=(48, 32))
    (folder / "notes.md").write_text("not a video, not by extension either")
    return folder


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_glob_and_list_inputs_stream_json_lines(tmp_path, capsys, engine, videos):
    extra = make_video(tmp_path / "c.mp4", frames=30)
    listing = tmp_path / "list.txt"
    listing.write_text("# one path per line, relative to the list\n\nc.mp4\n")
    out = tmp_path / "results.jsonl"
    code, stdout, err = run(
        capsys, videos, str(tmp_path / "videos" / "*.mp4"), f"@{listing}", "-e", engine, "-o", out
    )
    assert code == 0, err
    records = read_records(out)
    names = [r["path"].rsplit("/", 1)[-1] for r in records]
    assert names == ["a.mp4", "b.mkv", "c.mp4"]  # the glob's a.mp4 is not scored twice
    assert records[2]["path"] == str(extra)
    assert all(r["status"] == "ok" and r["demo_weights"] for r in records)
    assert set(records[0]["scores"]) == {"gmsd", "st_gmsd", "st_rred", "ms_ssim", "ensemble"}
    assert "CPUExecutionProvider" in err and "DEMO weights" in err
    assert "3 scored, 0 failed" in stdout and "ensemble" in stdout.splitlines()[0]


def test_bad_inputs_fail_alone_and_exit_1(tmp_path, capsys, engine, videos):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("hello, I am text\n")
    raw = tmp_path / "clip.yuv"
    raw.write_bytes(bytes(64 * 48 * 3 // 2 * 30))
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    bad = [tmp_path / "missing.mp4", empty, text, nothing, raw]
    out = tmp_path / "r.csv"
    code, _, err = run(capsys, videos / "a.mp4", *bad, videos / "sub", "-e", engine, "-o", out)
    assert code == 1
    records = read_records(out)
    assert [r["status"] for r in records] == ["ok", *["error"] * 5, "ok"]
    failures = [line for line in err.splitlines() if "FAILED" in line]
    assert len(failures) == 5
    for path, line in zip(bad, failures):
        assert line.startswith(f"heke-run: FAILED {path}: ")
    reasons = [r["error"] for r in records[1:6]]
    for needle, reason in zip(["no such", "empty", "not a video", "no video files", "--size"],
                              reasons):  # fmt: skip
        assert needle in reason
    assert out.read_text().splitlines()[0].split(",") == list(CSV_COLUMNS)


def test_resume_skips_what_is_done_and_appends(tmp_path, capsys, engine, videos):
    out = tmp_path / "r.jsonl"
    assert run(capsys, videos / "a.mp4", "-e", engine, "-o", out)[0] == 0
    code, _, err = run(capsys, videos / "a.mp4", "-e", engine, "-o", out)
    assert code == 2 and "--resume" in err  # never clobbers earlier results by accident
    code, stdout, err = run(capsys, videos, "-e", engine, "-o", out, "--resume")
    assert code == 0 and "1 inputs already done" in err and "1 scored" in stdout
    assert [r["path"].rsplit("/", 1)[-1] for r in read_records(out)] == ["a.mp4", "b.mkv"]
    code, _, err = run(capsys, videos, "-e", engine, "-o", out, "--resume")
    assert code == 0 and "nothing to do" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "missing.onnx"], "no such file"),
        (["--size", "64by48"], "WIDTHxHEIGHT"),
        (["--resume"], "--resume needs --output"),
        (["--backend", "openvino"], "unknown backend"),
        (["--snippets", "1"], ""),  # typer's own range check
        (["--batch-size", "0"], ""),  # its default is the backend's, its range still 1 up
        (["--timeout", "0"], "--timeout 0: expected seconds, more than 0"),
        (["--timeout", "5", "--workers", "0"], "--timeout needs the pipeline"),
        (["--no-such-flag"], ""),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, engine, videos, args, message):
    base = [videos / "a.mp4"]
    if "--engine" not in args:
        base += ["--engine", engine]
    code, _, err = run(capsys, *base, *args)
    assert code == 2
    assert message in err


def test_a_timeout_that_does_not_fire_changes_nothing(tmp_path, capsys, engine, videos):
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, videos, "-e", engine, "-o", out, "--timeout", "30", "--workers", 2)
    assert code == 0, err
    assert [r["status"] for r in read_records(out)] == ["ok", "ok"]


def test_nothing_to_score_is_a_usage_error(tmp_path, capsys, engine):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, tmp_path / "empty", "-e", engine)
    assert code == 2 and "no video files" in err and "no videos to score" in err
    assert run(capsys, "-e", engine)[0] == 2  # no inputs at all


def test_engine_whose_sidecar_does_not_match_is_one_line(tmp_path, capsys, engine, videos):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(Path(engine).read_bytes())
    sidecar = read_sidecar(tiny_engine("r2p1d_HEKE_4"))
    write_sidecar(broken, dataclasses.replace(sidecar, artifact_sha256="0" * 64))
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, videos / "a.mp4", "-e", broken, "-o", out)
    assert code == 1
    assert err.count("\n") == 1 and "sidecar does not match" in err
    assert not out.exists()  # nothing was scored, so nothing to resume from later


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs heke[plot]")
def test_plot_draws_a_png(tmp_path, capsys, engine, videos):
    picture = tmp_path / "timeline.png"
    code, _, err = run(capsys, videos, "-e", engine, "--plot", picture)
    assert code == 0, err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BLOCK = """
import sys
class Block:
    def __init__(self, names): self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.names:
            raise ImportError(name + ' is blocked for this test')
sys.meta_path.insert(0, Block(NAMES))
"""


def run_blocked(names, code):
    script = BLOCK.replace("NAMES", repr(set(names))) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_full_run_without_torch(tmp_path, engine, videos):
    out = tmp_path / "r.jsonl"
    code = f"""
import heke_runtime
from heke_runtime.cli import main
status = main([{str(videos)!r}, '-e', {engine!r}, '-o', {str(out)!r}])
assert 'torch' not in sys.modules
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit('torch was importable')
sys.exit(status)
"""
    done = run_blocked(["torch"], code)
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in read_records(out)] == ["ok", "ok"]


def test_plot_without_matplotlib_names_the_extra(tmp_path, engine, videos):
    code = f"""
from heke_runtime.cli import main
sys.exit(main([{str(videos)!r}, '-e', {engine!r}, '--plot', {str(tmp_path / "p.png")!r}]))
"""
    done = run_blocked(["matplotlib"], code)
    assert done.returncode == 2 and "heke[plot]" in done.stderr
    assert "scored" not in done.stdout  # refused before any video was scored
