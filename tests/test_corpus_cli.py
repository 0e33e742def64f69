"""``heke-corpus`` usage errors and the missing-extra message; none of these starts Ray."""

from __future__ import annotations

import sys

import pytest

from heke_corpus.cli import main
from heke_corpus.run import RAY_EXTRA


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def video(tmp_path, monkeypatch):
    """``v.mp4`` in the working folder: an input that exists (never decoded here)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v.mp4").write_bytes(b"not decoded by these tests")


@pytest.fixture
def engine(tmp_path):
    # Usage errors are caught before the engine is opened; any file will do.
    path = tmp_path / "e.onnx"
    path.write_bytes(b"onnx")
    return path


def test_without_ray_the_command_names_the_extra(tmp_path, capsys, monkeypatch, engine):
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)  # import ray -> ImportError
    code, _, err = run(capsys, tmp_path, "-e", engine, "-o", tmp_path / "out")
    assert code == 1
    assert err.count("\n") == 1 and RAY_EXTRA in err and err.startswith("heke-corpus: error:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to score"),
        (("missing.mp4",), "no videos to score"),
        (("v.mp4", "--resume", "--overwrite"), "contradict"),
        (("v.mp4", "--device", "tpu"), "valid: auto, cpu, gpu"),
        (("v.mp4", "--size", "big"), "WIDTHxHEIGHT"),
        (("v.mp4", "--actor-cpus", "0"), "actor_cpus must be above 0"),
        (("v.mp4", "--timeout", "0"), "--timeout 0: expected seconds, more than 0"),
        (("v.mp4", "--run-id", "../x"), "run id"),
        (("--manifest", "m.xlsx"), "unknown format '.xlsx'"),
        (("--manifest", "missing.csv"), "no such file"),
    ],
)
def test_usage_errors_exit_2_on_one_line(tmp_path, capsys, engine, args, message):
    pytest.importorskip("ray", reason="checked after Ray is found (heke[ray])")
    code, _, err = run(capsys, *args, "-e", engine, "-o", tmp_path / "out")
    assert code == 2, err
    assert err.splitlines()[-1].startswith("heke-corpus: error: ") and message in err


def test_a_missing_engine_is_a_usage_error(tmp_path, capsys):
    pytest.importorskip("ray", reason="checked after Ray is found (heke[ray])")
    code, _, err = run(capsys, "v.mp4", "-e", tmp_path / "none.onnx", "-o", tmp_path / "o")
    assert code == 2 and "no such file" in err


def test_an_output_file_is_not_a_folder(tmp_path, capsys, engine):
    pytest.importorskip("ray", reason="checked after Ray is found (heke[ray])")
    target = tmp_path / "out.parquet"
    target.write_bytes(b"")
    code, _, err = run(capsys, "v.mp4", "-e", engine, "-o", target)
    assert code == 2 and "not a folder" in err


def test_an_output_with_results_needs_resume_or_overwrite(tmp_path, capsys):
    pytest.importorskip("ray", reason="checked after Ray is found (heke[ray])")
    from heke_corpus import store
    from heke_runtime.results import failed
    from tests.test_backends import tiny_engine

    out = tmp_path / "out"
    writer = store.PartWriter(out / store.RUNS_DIR / "old", flush_rows=1)
    record = failed("/v/a.mp4", "gone").to_dict()
    writer.add(
        store.rows_table([store.row_from_record(record, video_id="a", label=None, run_id="old")])
    )
    code, _, err = run(capsys, "v.mp4", "-e", tiny_engine("r2p1d_HEKE_4"), "-o", out)
    assert code == 2 and "already holds results; pass --resume" in err


class FakeRay:
    """Just what compute_plan asks of Ray: the cluster's resources."""

    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_plans_put_one_engine_per_gpu_and_cpu_actors_elsewhere():
    from heke_corpus.run import CorpusError, CorpusOptions, compute_plan
    from heke_runtime.scorer import Scorer
    from tests.test_backends import tiny_engine

    scorer = Scorer(tiny_engine("r2p1d_HEKE_4"))
    gpu = compute_plan(FakeRay(CPU=64, GPU=4), scorer, CorpusOptions(), 10**6)
    assert (gpu.device, gpu.backend, gpu.min_actors, gpu.max_actors) == (
        "gpu",
        "onnxruntime-cuda",
        4,
        4,
    )
    assert gpu.actor_gpus == 1 and gpu.rows_per_block == 16  # capped by videos_per_task
    cpu = compute_plan(FakeRay(CPU=8), scorer, CorpusOptions(), 40)
    assert (cpu.device, cpu.backend, cpu.min_actors, cpu.max_actors) == (
        "cpu",
        "onnxruntime-cpu",
        1,
        4,
    )
    assert cpu.actor_gpus == 0 and cpu.rows_per_block == 2  # every CPU gets blocks to do
    fixed = compute_plan(FakeRay(CPU=8, GPU=2), scorer, CorpusOptions(device="cpu", actors=3), 9)
    assert (fixed.device, fixed.min_actors, fixed.max_actors) == ("cpu", 3, 3)
    with pytest.raises(CorpusError, match="no GPUs"):
        compute_plan(FakeRay(CPU=8), scorer, CorpusOptions(device="gpu"), 9)
    with pytest.raises(CorpusError, match="too few"):
        compute_plan(FakeRay(CPU=1), scorer, CorpusOptions(), 9)


def test_actors_use_their_own_backends_batch_size_unless_asked():
    # A CPU driver must not fix the batch size of GPU actors; heke-run's default is the
    # backend's, and records equal heke-run's only with the same batches.
    from heke_corpus.run import CorpusOptions, _actor_config, compute_plan
    from heke_runtime.scorer import Scorer
    from tests.test_backends import tiny_engine

    scorer = Scorer(tiny_engine("r2p1d_HEKE_4"))
    plan = compute_plan(FakeRay(CPU=64, GPU=4), scorer, CorpusOptions(), 100)
    for asked in (None, 3):
        config = _actor_config(scorer, plan, "run", CorpusOptions(batch_size=asked))
        assert config["scorer"]["batch_size"] == asked


def test_the_timeout_reaches_the_decode_tasks_as_plain_data():
    pytest.importorskip("pyarrow", reason="the corpus stages need pyarrow (heke[ray])")
    from heke_corpus.run import CorpusOptions, CorpusUsageError, _actor_config, compute_plan
    from heke_runtime.scorer import Scorer
    from tests.test_backends import tiny_engine

    with pytest.raises(CorpusUsageError, match="timeout_s must be more than 0 seconds"):
        CorpusOptions(timeout_s=0)
    scorer = Scorer(tiny_engine("r2p1d_HEKE_4"))
    options = CorpusOptions(timeout_s=2.5)
    plan = compute_plan(FakeRay(CPU=8), scorer, options, 4)
    # build_dataset hands it to prepare_batch; tests/test_corpus_cluster.py runs that for real.
    assert _actor_config(scorer, plan, "run", options)["timeout_s"] == 2.5


# --------------------------------------------------------------------------- what a run prints
# report() and Progress are what heke-corpus prints around run_corpus; a real run needs Ray
# (tests/test_corpus_cluster.py), so these feed them the objects run_corpus hands over.


def summary_of(tmp_path, *, scored, failed, elapsed_s=8.0, missing=()):
    from heke_corpus.run import CorpusSummary

    done = scored + failed
    return CorpusSummary(
        run_id="r1",
        output=tmp_path / "out",
        inputs=done + len(missing),
        skipped=0,
        scored=scored,
        failed=failed,
        duplicates=0,
        records=done,
        missing=tuple(missing),
        elapsed_s=elapsed_s,
    )


def results_of(scored, failed):
    from heke_runtime.results import VideoResult
    from heke_runtime.results import failed as failed_result

    good = [VideoResult(f"/v/ok{i}.mp4", "ok", scores={"ensemble": 2.5}) for i in range(scored)]
    return good + [failed_result(f"/v/bad{i}.mp4", "gone") for i in range(failed)]


def test_report_prints_the_table_and_the_records_line_with_the_rate(tmp_path, capsys):
    from heke_corpus.cli import report
    from heke_runtime.results import format_table

    results = results_of(3, 1)
    report(summary_of(tmp_path, scored=3, failed=1), results)
    out, err = capsys.readouterr()
    assert out == format_table(results) + "\n"
    results_dir = tmp_path / "out" / "results"
    assert err == f"heke-corpus: 4 records in {results_dir} (run r1: 8.0 s, 0.50 videos/s)\n"


@pytest.mark.parametrize(("scored", "failed"), [(101, 0), (0, 101), (60, 60)])
def test_above_100_results_a_totals_line_replaces_the_table(tmp_path, capsys, scored, failed):
    from heke_corpus.cli import Progress, report
    from heke_runtime.results import SCALE_NOTE

    progress = Progress(show_bar=False)
    for result in results_of(scored, failed):
        progress.result(result)
    capsys.readouterr()  # the FAILED lines
    report(summary_of(tmp_path, scored=scored, failed=failed), progress.results)
    out, err = capsys.readouterr()
    assert out == f"{scored} scored, {failed} failed; scale: {SCALE_NOTE}\n"
    assert err.startswith(f"heke-corpus: {scored + failed} records in ")


def test_up_to_100_results_are_kept_and_shown_as_a_table(tmp_path, capsys):
    from heke_corpus.cli import Progress, report
    from heke_runtime.results import format_table

    results = results_of(99, 1)
    progress = Progress(show_bar=False)
    for result in results:
        progress.result(result)
    assert progress.results == results
    capsys.readouterr()
    report(summary_of(tmp_path, scored=99, failed=1), progress.results)
    assert capsys.readouterr().out == format_table(results) + "\n"


def test_a_run_with_nothing_left_says_so_on_stderr_without_a_rate(tmp_path, capsys):
    from heke_corpus.cli import report

    report(summary_of(tmp_path, scored=0, failed=0, elapsed_s=1.25), [])
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "heke-corpus: nothing to do: every input is already in the output",
        f"heke-corpus: 0 records in {tmp_path / 'out' / 'results'} (run r1: 1.2 s)",
    ]


def test_inputs_without_a_record_are_an_error_line_naming_the_first_five(tmp_path, capsys):
    from heke_corpus.cli import report

    missing = [f"id{i}" for i in range(7)]
    report(summary_of(tmp_path, scored=1, failed=0, missing=missing), results_of(1, 0))
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "heke-corpus: error: 7 inputs have no record (id0, id1, id2, id3, id4); "
        "rerun with --resume to score them"
    )
    report(summary_of(tmp_path, scored=1, failed=0), results_of(1, 0))
    assert "no record" not in capsys.readouterr().err


def test_progress_lines_go_to_stderr_and_the_bar_only_when_asked(capsys):
    from heke_corpus.cli import Progress
    from heke_corpus.run import RunInfo
    from heke_runtime.results import failed

    info = RunInfo("r1", "e.onnx: what runs", 9, 4, 3, 2, "http://127.0.0.1:8265")
    progress = Progress(show_bar=False)
    progress.start(info)
    progress.result(failed("/v/a.mp4", "gone"))
    progress.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "heke-corpus: e.onnx: what runs",
        "heke-corpus: Ray dashboard: http://127.0.0.1:8265",
        "heke-corpus: resuming: 3 inputs already done",
        "heke-corpus: 2 repeated inputs scored once",
        "heke-corpus: FAILED /v/a.mp4: gone",
    ]
    plain = RunInfo("r2", "e.onnx: what runs", 1, 1, 0, 0, None)
    shown = Progress(show_bar=True)  # not a terminal here: click prints the label once
    shown.start(plain)
    shown.close()
    assert capsys.readouterr() == ("", "heke-corpus: e.onnx: what runs\nscoring\n")


def test_inputs_that_are_no_videos_are_named_on_stderr(capsys):
    code, out, err = run(capsys, "missing.mp4", "-e", "e.onnx", "-o", "out")
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith("heke-corpus: missing.mp4: ")
    assert err.splitlines()[-1] == "heke-corpus: error: no videos to score"


# --------------------------------------------------------------------------- option parsing


def parse(*args):
    """The options as heke-corpus's parser reads them (the command itself is not run)."""
    import typer

    from heke_corpus.cli import app

    command = typer.main.get_command(app)
    return command.make_context("heke-corpus", ["v.mp4", "-e", "e.onnx", "-o", "o", *args])


def test_the_cli_defaults_are_run_corpus_defaults():
    # heke-corpus with no options and run_corpus(options=None) must run the same way.
    from heke_corpus.run import CorpusOptions

    params = parse().params
    defaults = CorpusOptions()
    same = ["resume", "overwrite", "jsonl", "device", "actors", "actor_cpus", "decode_cpus"]
    same += ["videos_per_task", "batch_size", "max_retries", "flush_rows"]
    renamed = {"flush_seconds": "flush_s", "snippets": "num_snippets", "timeout": "timeout_s"}
    for option, field in {**dict(zip(same, same, strict=True)), **renamed}.items():
        assert params[option] == getattr(defaults, field), option


@pytest.mark.parametrize(
    ("option", "lowest"),
    [
        ("--snippets", 2),
        ("--actors", 1),
        ("--videos-per-task", 1),
        ("--batch-size", 1),
        ("--max-retries", -1),  # -1: retry forever
        ("--flush-rows", 1),
    ],
)
def test_option_ranges(option, lowest):
    import typer

    key = option.removeprefix("--").replace("-", "_")
    assert parse(option, str(lowest)).params[key] == lowest
    with pytest.raises(typer.BadParameter, match=f"greater than or equal to {lowest}$"):
        parse(option, str(lowest - 1))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--on-damage", "skip"], "--on-damage 'skip': expected one of fail, conceal"),
        (["--hdr", "dim"], "--hdr 'dim': expected one of tonemap, as-is"),
        (["--pix-fmt", "nv12"], "--pix-fmt nv12: heke reads raw planar formats only"),
    ],
)
def test_decode_options_are_checked_as_heke_runs(tmp_path, capsys, option, message):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    engine = tmp_path / "e.onnx"
    engine.write_bytes(b"x")
    code = main([str(video), "-e", str(engine), "-o", str(tmp_path / "out"), *option])
    assert code == 2 and message in capsys.readouterr().err
