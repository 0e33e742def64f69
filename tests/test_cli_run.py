"""``heke-run`` end to end on generated videos: inputs, records, resume, exit codes, plots,
and a full run with torch made unimportable."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from heke_runtime.cli import main
from heke_runtime.regressor import load_regressor, save_regressor
from heke_runtime.results import CSV_COLUMNS, read_records
from heke_runtime.sidecar import read_sidecar, write_sidecar
from tests.test_backends import random_regressor, tiny_engine
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


def test_resume_skips_failed_inputs_too(tmp_path, capsys, engine, videos):
    # README: --resume skips every input already recorded, failed ones included (a new output
    # retries them), so a rerun never writes a second record for one input.
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video\n")
    out = tmp_path / "r.jsonl"
    assert run(capsys, videos / "a.mp4", broken, "-e", engine, "-o", out)[0] == 1
    make_video(broken, frames=30)  # now decodable: still skipped, its record stands
    code, _, err = run(capsys, videos / "a.mp4", broken, "-e", engine, "-o", out, "--resume")
    assert code == 0 and "2 inputs already done" in err and "nothing to do" in err
    assert [r["status"] for r in read_records(out)] == ["ok", "error"]


def test_size_reads_raw_yuv_as_the_same_frames_in_a_container(tmp_path, capsys, engine):
    lossless = make_video(tmp_path / "clip.mkv", codec="ffv1", frames=30, size=(64, 48))
    raw = tmp_path / "clip.yuv"
    with av.open(str(lossless)) as container:
        raw.write_bytes(b"".join(f.to_ndarray().tobytes() for f in container.decode(video=0)))
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, raw, lossless, "-e", engine, "-o", out, "--size", "64x48")
    assert code == 0, err
    got, want = read_records(out)
    video = got["video"]
    assert (video["width"], video["height"], video["num_frames"]) == (64, 48, 30)
    assert got["snippets"] == want["snippets"]  # the same yuv420p frames, the same numbers


def test_timeout_reaches_the_decoder(tmp_path, capsys, engine):
    # The pipeline looks at running decodes every heke_runtime.pipeline.POLL_S (0.05 s); this
    # one takes ~0.4 s, so a microsecond's limit always fires. Lost on the way to the pipeline,
    # the limit would leave the video scored.
    slow = make_video(tmp_path / "vga.mp4", size=(640, 480), frames=120)
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, slow, "-e", engine, "-o", out, "--timeout", "1e-6", "--workers", 1)
    reason = "decoding took longer than 1e-06 s (--timeout); skipped"
    assert code == 1, err
    assert [(r["status"], r["error"]) for r in read_records(out)] == [("error", reason)]


def test_records_to_stdout_stay_alone_and_cannot_be_resumed(capsys, engine, videos):
    code, out, err = run(capsys, videos, "-e", engine, "-o", "-", "--threads", 0)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]  # nothing else on stdout
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert "2 scored, 0 failed" in err  # the table goes to stderr instead
    assert "already done" not in err  # not resuming: no such line
    assert "scoring" not in err  # stderr is not a terminal: no progress bar
    code, _, err = run(capsys, videos, "-e", engine, "-o", "-", "--resume")
    assert code == 2 and "--resume needs --output FILE" in err


def test_a_long_batch_that_is_not_resumed_says_nothing_of_resuming(tmp_path, capsys, engine):
    # More inputs than CPython caches small ints for: counts compared by value, not identity.
    listing = tmp_path / "many.txt"
    missing = [f"missing-{i}.mp4" for i in range(300)]
    listing.write_text("\n".join([*missing, str(make_video(tmp_path / "a.mp4", frames=40))]))
    out = tmp_path / "r.jsonl"
    code, _, err = run(capsys, f"@{listing}", "-e", engine, "-o", out)
    assert code == 1 and "resuming" not in err
    assert [r["status"] for r in read_records(out)] == ["error"] * 300 + ["ok"]


def test_an_output_that_fails_mid_run_is_one_line(capsys, engine, videos):
    full = Path("/dev/full")  # every write: "No space left on device"
    if not full.exists():
        pytest.skip("needs Linux's /dev/full")
    code, _, err = run(capsys, videos / "a.mp4", "-e", engine, "-o", full)
    assert code == 1
    assert err.splitlines()[-1] == (
        "heke-run: error: /dev/full: cannot write results ([Errno 28] No space left on device)"
    )


def test_the_device_line_names_real_weights_by_their_hash(tmp_path, capsys, engine, videos):
    real = tmp_path / "model.onnx"
    shutil.copyfile(engine, real)
    sidecar = dataclasses.replace(read_sidecar(Path(engine)), demo_weights=False)
    write_sidecar(real, sidecar)
    code, _, err = run(capsys, videos / "a.mp4", "-e", real, "-o", tmp_path / "r.jsonl")
    assert code == 0, err
    assert f", weights {sidecar.weights_sha256[:12]}; running on " in err
    assert "DEMO" not in err


def test_python_m_runs_heke_run():
    done = subprocess.run(
        [sys.executable, "-m", "heke_runtime.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "Usage: heke-run" in done.stdout, done.stderr


def regressor_for(path: Path, weights_sha256: str) -> Path:
    """``random_regressor`` stamped as trained on features of backbone ``weights_sha256``."""
    loaded = load_regressor(random_regressor(path))
    return save_regressor(
        path, loaded.layout, loaded.weights, backbone_weights_sha256=weights_sha256
    )


def test_a_regressor_trained_on_other_backbone_weights_is_refused(tmp_path, capsys, engine, videos):
    weights = read_sidecar(Path(engine)).weights_sha256
    same = regressor_for(tmp_path / "same.npz", weights)
    code, _, err = run(
        capsys, videos / "a.mp4", "-e", engine, "--regressor", same, "-o", tmp_path / "a.csv"
    )
    assert code == 0, err
    other = regressor_for(tmp_path / "other.npz", "f" * 64)
    code, _, err = run(capsys, videos / "a.mp4", "-e", engine, "--regressor", other)
    assert code == 1
    assert err.strip().splitlines() == [
        f"heke-run: error: regressor {other} was trained on features of backbone weights "
        f"ffffffffffff; the engine holds weights {weights[:12]}"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "missing.onnx"], "no such file"),
        (["--size", "64by48"], "WIDTHxHEIGHT"),
        (["--resume"], "--resume needs --output"),
        (["--backend", "openvino"], "unknown backend"),
        # typer's own checks: the option and its bound are named (wording varies by version)
        (["--snippets", "1"], r"Invalid value for '--snippets':.*\b2\b"),
        (["--batch-size", "0"], r"Invalid value for '--batch-size':.*\b1\b"),  # default: backend's
        (["--timeout", "0"], "--timeout 0: expected seconds, more than 0"),
        (["--timeout", "5", "--workers", "0"], "--timeout needs the pipeline"),
        (["--no-such-flag"], "No such option: --no-such-flag"),
        (["--threads", "-1"], r"Invalid value for '--threads':.*\b0\b"),
        (["--workers", "-1"], r"Invalid value for '--workers':.*\b0\b"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, engine, videos, args, message):
    base = [videos / "a.mp4"]
    if "--engine" not in args:
        base += ["--engine", engine]
    code, _, err = run(capsys, *base, *args)
    assert code == 2
    assert re.search(message, err), err


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
    code, out, err = run(capsys, videos, "-e", engine, "--plot", picture)
    assert code == 0, err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"heke-run: timelines drawn to {picture}" in err.splitlines()
    assert "timelines" not in out  # stdout is the table's (or the records')


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs heke[plot]")
def test_a_plot_with_nothing_scored_is_one_line_and_the_records_stand(tmp_path, capsys, engine):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video\n")
    picture, out = tmp_path / "timeline.png", tmp_path / "r.jsonl"
    code, _, err = run(capsys, broken, "-e", engine, "--plot", picture, "-o", out)
    assert code == 1 and not picture.exists()
    assert "heke-run: plot: no scored video to plot" in err.splitlines()
    assert [r["status"] for r in read_records(out)] == ["error"]


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
