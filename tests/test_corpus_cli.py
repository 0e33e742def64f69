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
