"""Features files: the heke .npz, the authors' pickle (exact round trip, trusted only), matching
to lists by path, the resumable writer, and blind evaluation from features or results."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from heke_finetune.cli import eval_app
from heke_finetune.datasets import load_list, normalise_scores
from heke_finetune.evaluate import EvaluationError, blind_from_features, blind_from_results
from heke_finetune.features import (
    FeaturesError,
    FeatureSet,
    FeatureWriter,
    align_to_list,
    authors_pickle_bytes,
    features_from_authors_pickle,
    load_features,
    read_authors_pickle,
    save_features,
    write_authors_pickle,
)
from heke_runtime.results import VideoResult

WIDTHS = (64, 128, 256, 512)


def write_list(folder: Path, count: int = 6, name: str = "Demo_list_for_VQA.txt") -> Path:
    rng = np.random.default_rng(count)
    lines = [
        f"{i // 2} {i % 2} ref/r{i // 2}.yuv dis/v{i}.yuv {rng.uniform(10, 80):.4f} 352 288 300"
        for i in range(count)
    ]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def authors_pickle(dataset, snippets: int = 3, seed: int = 0) -> bytes:
    """What the authors' extraction script pickles: per video (f1..f4), and the 'mos'."""
    rng = np.random.default_rng(seed)
    feat = [
        tuple(rng.standard_normal((snippets, 3 * c)).astype(np.float32) for c in WIDTHS)
        for _ in range(len(dataset))
    ]
    y_label = normalise_scores(dataset.raw_scores())  # float32, as their collated labels
    return pickle.dumps({"features": feat, "mos": y_label}, protocol=3)


def feature_set(paths, snippets=3, width=2880, seed=0, heads=True) -> FeatureSet:
    rng = np.random.default_rng(seed)
    count = len(paths)
    return FeatureSet(
        tuple(str(p) for p in paths),
        rng.standard_normal((count, snippets, width)).astype(np.float32),
        rng.standard_normal((count, snippets, 4)).astype(np.float32) if heads else None,
        None,
        {"model": "r2p1d_HEKE_4", "weights_sha256": "a" * 64, "demo_weights": True},
    )


def same_pickled(a, b) -> None:
    assert set(a) == set(b) and len(a["features"]) == len(b["features"])
    for va, vb in zip(a["features"], b["features"]):
        assert len(va) == len(vb)
        for xa, xb in zip(va, vb):
            assert xa.dtype == xb.dtype and xa.shape == xb.shape
            np.testing.assert_array_equal(xa, xb)
    assert a["mos"].dtype == b["mos"].dtype
    np.testing.assert_array_equal(a["mos"], b["mos"])


def test_npz_round_trip_never_unpickles(tmp_path):
    data = feature_set(["/v/a.mp4", "/v/b.mp4"])
    data = FeatureSet(
        data.paths, data.features, data.heads, np.array([1.0, 2.0], np.float32), data.metadata
    )
    back = load_features(save_features(tmp_path / "f.npz", data))
    assert back.paths == data.paths
    np.testing.assert_array_equal(back.features, data.features)
    np.testing.assert_array_equal(back.heads, data.heads)
    np.testing.assert_array_equal(back.labels, data.labels)
    assert back.metadata["weights_sha256"] == "a" * 64 and back.metadata["feature_dim"] == 2880
    bad = tmp_path / "object.npz"
    np.savez(
        bad,
        metadata=np.array([{"x": 1}], dtype=object),
        paths=np.array(["a"]),
        features=np.zeros((1, 1, 1)),
    )
    with pytest.raises(FeaturesError, match=r"object\.npz"):
        load_features(bad)
    with pytest.raises(FeaturesError, match="no such features file"):
        load_features(tmp_path / "absent.npz")


def test_authors_pickle_round_trips_exactly(tmp_path):
    dataset = load_list(write_list(tmp_path))
    original = tmp_path / "Demo.feat_nf-12.pkl"
    original.write_bytes(authors_pickle(dataset))
    data = features_from_authors_pickle(original, dataset, trust_pickle=True)
    assert data.features.shape == (6, 3, 2880) and data.heads is None
    assert data.paths == tuple(str(p) for p in dataset.paths())
    # pickle -> npz -> pickle: the same arrays, dtypes and bytes
    npz = save_features(tmp_path / "f.npz", data)
    again = write_authors_pickle(tmp_path / "again.pkl", load_features(npz), dataset)
    assert again.read_bytes() == original.read_bytes()
    same_pickled(pickle.loads(original.read_bytes()), pickle.loads(again.read_bytes()))
    # npz -> pickle -> npz
    back = features_from_authors_pickle(again, dataset, trust_pickle=True)
    np.testing.assert_array_equal(back.features, data.features)
    np.testing.assert_array_equal(back.labels, data.labels)


def test_heke_features_become_a_pickle_the_authors_code_accepts(tmp_path):
    dataset = load_list(write_list(tmp_path))
    data = feature_set(dataset.paths()[::-1])  # another order: aligned by path
    out = write_authors_pickle(tmp_path / "x.pkl", data, dataset)
    with out.open("rb") as handle:
        loaded = pickle.load(handle)
    score_list = np.array([e.score for e in dataset.entries], dtype="float32")
    score_list = 1 + 8.5 * (score_list - score_list.min()) / (score_list.max() - score_list.min())
    assert np.mean(np.abs(score_list - loaded["mos"])) < 1e-10  # their order check
    np.testing.assert_array_equal(np.concatenate(loaded["features"][0], axis=1), data.features[-1])
    assert [f.shape[1] for f in loaded["features"][0]] == [3 * c for c in WIDTHS]


def test_pickles_need_trust_and_hold_only_arrays(tmp_path):
    dataset = load_list(write_list(tmp_path))
    path = tmp_path / "p.pkl"
    path.write_bytes(authors_pickle(dataset))
    with pytest.raises(FeaturesError, match="can run code"):
        features_from_authors_pickle(path, dataset)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"features": [Evil()], "mos": np.zeros(1)}))
    with pytest.raises(FeaturesError, match=r"asks for (posix|os|nt)\.system"):
        read_authors_pickle(evil, trust_pickle=True)
    assert not marker.exists()


def test_pickle_in_another_order_is_refused(tmp_path):
    dataset = load_list(write_list(tmp_path))
    obj = pickle.loads(authors_pickle(dataset))
    obj["mos"] = obj["mos"][::-1].copy()
    path = tmp_path / "shuffled.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(FeaturesError, match="not the same videos in the same order"):
        features_from_authors_pickle(path, dataset, trust_pickle=True)
    path.write_bytes(pickle.dumps({"features": obj["features"][:2], "mos": obj["mos"][:2]}))
    with pytest.raises(FeaturesError, match="lists 6"):
        features_from_authors_pickle(path, dataset, trust_pickle=True)


def test_resnet_pickles_nest_rgb_and_difference_stages():
    data = feature_set(["/a", "/b"], width=3 * (256 + 512 + 1024 + 2048 + 64 + 128 + 256 + 512))
    data = FeatureSet(data.paths, data.features, None, None, {"model": "resnet_HEKE_4"})
    videos = pickle.loads(authors_pickle_bytes(data, np.zeros(2)))["features"]
    rgb, dif = videos[0]
    assert [a.shape[1] for a in rgb] == [768, 1536, 3072, 6144]
    assert [a.shape[1] for a in dif] == [192, 384, 768, 1536]


def test_features_are_matched_to_lists_by_path(tmp_path):
    dataset = load_list(write_list(tmp_path))
    shuffled = [dataset.paths()[i] for i in (3, 1, 5, 0, 2, 4)]
    aligned = align_to_list(feature_set(shuffled), dataset)
    assert aligned.paths == tuple(str(p) for p in dataset.paths())
    elsewhere = [f"/other/root/{e.path}" for e in dataset.entries]  # made on another machine
    assert len(align_to_list(feature_set(elsewhere), dataset)) == 6
    with pytest.raises(
        FeaturesError, match=r"no entry for 1 of the 6 videos .* dis/v5.yuv \(line 6\)"
    ):
        align_to_list(feature_set(dataset.paths()[:5]), dataset)
    twice = [*elsewhere, "/third/dis/v0.yuv"]
    with pytest.raises(FeaturesError, match="matches 2 feature paths"):
        align_to_list(feature_set(twice), dataset)


def test_writer_resumes_and_writes_nothing_half_done(tmp_path):
    out = tmp_path / "f.npz"
    meta = {"model": "r2p1d_HEKE_4", "num_snippets": 3, "weights_sha256": "a"}
    rng = np.random.default_rng(0)
    rows = {f"/v/{i}.mp4": rng.standard_normal((3, 360)).astype(np.float32) for i in range(4)}
    with FeatureWriter(out, meta) as writer:
        for path in list(rows)[:2]:
            writer.add(path, np.zeros((3, 4)), rows[path])
    assert not out.exists()  # interrupted: only the .partial folder
    with pytest.raises(FeaturesError, match="--resume"):
        FeatureWriter(out, meta).__enter__()
    with pytest.raises(FeaturesError, match="weights_sha256='a'"):
        FeatureWriter(out, {**meta, "weights_sha256": "b"}, resume=True).__enter__()
    with FeatureWriter(out, meta, resume=True) as writer:
        assert writer.has("/v/0.mp4") and not writer.has("/v/2.mp4")
        for path in list(rows)[2:]:
            writer.add(path, np.ones((3, 4)), rows[path])
        writer.fail("/v/bad.mp4", "cannot decode")
        data = writer.finish(list(rows))
    assert data.paths == tuple(rows) and not out.with_name("f.npz.partial").exists()
    back = load_features(out)
    np.testing.assert_array_equal(back.features[3], rows["/v/3.mp4"])
    assert back.metadata["failed"] == [{"path": "/v/bad.mp4", "error": "cannot decode"}]


def test_blind_evaluation_from_features_and_results(tmp_path):
    dataset = load_list(write_list(tmp_path, count=8))
    targets = dataset.targets()
    data = feature_set(dataset.paths(), snippets=2)
    heads = np.repeat(targets[:, None, None], 2, axis=1) * np.array([1.0, 0.5, 2.0, -1.0])
    data = FeatureSet(data.paths, data.features, heads.astype(np.float32), None, data.metadata)
    report = blind_from_features(data, dataset)
    assert list(report.metrics) == ["gmsd", "st_gmsd", "st_rred", "ms_ssim", "ensemble"]
    assert report.metrics["gmsd"].srocc == pytest.approx(1.0)
    assert report.metrics["ms_ssim"].srocc == pytest.approx(-1.0)
    assert report.demo_weights and "not quality predictions" in report.table()
    results = [
        VideoResult(
            str(p),
            "ok",
            scores={
                "gmsd": float(t),
                "st_gmsd": 1.0 * i,
                "st_rred": 0.0,
                "ms_ssim": 0.0,
                "ensemble": float(t),
                "regressor": float(t),
            },
        )
        for i, (p, t) in enumerate(zip(dataset.paths(), targets))
    ]
    from_results = blind_from_results(results, dataset)
    assert from_results.metrics["regressor"].srocc == pytest.approx(1.0)
    results[3] = VideoResult(results[3].path, "error", error="cannot decode")
    with pytest.raises(EvaluationError, match="1 listed videos failed"):
        blind_from_results(results, dataset)
    with pytest.raises(FeaturesError, match="no head outputs"):
        blind_from_features(feature_set(dataset.paths(), heads=False), dataset)


def test_heke_eval_command(tmp_path):
    listed = write_list(tmp_path, count=8)
    dataset = load_list(listed)
    data = feature_set(dataset.paths())
    features = save_features(tmp_path / "f.npz", data)
    runner = CliRunner()
    ok = runner.invoke(
        eval_app, [str(listed), "--features", str(features), "--report", str(tmp_path / "r.json")]
    )
    assert ok.exit_code == 0, ok.output
    assert "ensemble" in ok.output and (tmp_path / "r.json").is_file()
    usage = runner.invoke(eval_app, [str(listed)])
    assert usage.exit_code == 2 and "exactly one of" in usage.output
    broken = tmp_path / "broken.txt"
    broken.write_text(listed.read_text() + "0 0 r.yuv x.yuv many 352 288 300\n")
    bad = runner.invoke(eval_app, [str(broken), "--features", str(features)])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == [
        f"heke-eval: error: {broken}:9: score 'many' is not a number"
    ]
    partial = save_features(tmp_path / "p.npz", feature_set(dataset.paths()[:7]))
    missing = runner.invoke(eval_app, [str(listed), "--features", str(partial)])
    assert missing.exit_code == 1 and "no entry for 1 of the 8 videos" in missing.output
