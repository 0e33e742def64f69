"""The authors' regressor protocol on small made-up features (fast; no videos).

The features carry the label (plus noise and a per-content offset), so a regressor that is
trained correctly must rank held-out contents well.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from heke_finetune.cli import finetune_app
from heke_finetune.datasets import load_list
from heke_finetune.features import FeatureSet, save_features
from heke_finetune.metrics import evaluate
from heke_finetune.splits import (
    Split,
    SplitError,
    authors_test_sets,
    content_splits,
    ivc_ic_test_sets,
    training_split,
    validation_part,
)
from heke_finetune.train import (
    FinetuneError,
    Part,
    RegressorNet,
    TrainConfig,
    cross_dataset,
    export_regressor,
    fit,
    intra_dataset,
    prepare,
    train_regressor,
)
from heke_runtime.regressor import RegressorError, load_regressor
from heke_runtime.tolerances import REGRESSOR

TINY_WIDTH = 3 * (8 + 16 + 32 + 64)  # the tiny r2p1d's features


def make_dataset(folder: Path, contents=6, per_content=5, seed=0, name="toy", mos=False, noise=0.3):
    """A list in the authors' format and matching informative features (``noise``: the
    spread of each snippet's noise, the label's weight being about 1)."""
    rng = np.random.default_rng(seed)
    lines, rows = [], []
    signal = rng.standard_normal(TINY_WIDTH).astype(np.float32)
    for c in range(contents):
        offset = rng.standard_normal(TINY_WIDTH).astype(np.float32) * 0.3
        for d in range(per_content):
            score = rng.uniform(0, 100)
            lines.append(f"{c} {d} ref/r{c}.yuv dis/v{c}_{d}.yuv {score:.4f} 64 48 60")
            quality = (100 - score) if mos else score
            snippets = signal * quality / 25 + offset + rng.standard_normal((4, TINY_WIDTH)) * noise
            rows.append(snippets.astype(np.float32))
    header = "# direction: mos\n" if mos else ""
    listed = folder / f"{name}_list_for_VQA.txt"
    listed.write_text(header + "\n".join(lines) + "\n")
    dataset = load_list(listed)
    meta = {"model": "r2p1d_HEKE_4", "weights_sha256": "w" * 64, "demo_weights": False}
    data = FeatureSet(tuple(str(p) for p in dataset.paths()), np.stack(rows), None, None, meta)
    return dataset, data


QUICK = TrainConfig(epochs=25, lr=1e-3)


# --------------------------------------------------------------------------- splits


def test_pairs_of_references_in_the_authors_order():
    for name, count in (("LIVE", 10), ("CSIQ", 12), ("IVPL", 10), ("EPFL-PoliMI", 12)):
        sets, how = authors_test_sets(count, dataset=name)
        assert sets == list(itertools.combinations(range(count), 2)), name
        assert "every 2 of" in how


def test_ivc_ic_fixed_scheme_matches_the_design():
    expected = (
        [tuple(range(i, i + 12)) for i in range(0, 49, 3)]
        + [tuple(range(i, i + 24, 2)) for i in range(0, 37, 3)]
        + [tuple(range(i + 1, i + 36, 3)) for i in range(2, 25, 2)]
        + [tuple(range(i + 3, i + 48, 4)) for i in range(0, 13, 2)]
        + [tuple(range(3, 60, 5))]
    )
    assert ivc_ic_test_sets() == expected and len(expected) == 50
    assert all(len(s) == 12 and max(s) < 60 for s in expected)
    splits, _ = content_splits(60, dataset="IVC-IC")
    assert [s.test for s in splits] == expected


def test_validation_is_drawn_from_training_contents_only():
    splits, _ = content_splits(10, dataset="LIVE", seed=12318)
    for split in splits:
        parts = [set(split.train), set(split.validation), set(split.test)]
        assert sum(map(len, parts)) == 10 and set().union(*parts) == set(range(10))
        assert len(split.test) == 2 and len(split.validation) == 2 and len(split.train) == 6
    again, _ = content_splits(10, dataset="LIVE", seed=12318)
    assert again == splits
    oracle, _ = content_splits(10, dataset="LIVE", validation=False)
    assert all(s.validation == () and len(s.train) == 8 for s in oracle)


def test_too_few_contents_and_wrong_counts_are_refused():
    with pytest.raises(SplitError, match="2 distinct content"):
        content_splits(2)
    for count in (9, 11):
        with pytest.raises(SplitError, match="LIVE has 10 reference contents"):
            content_splits(count, dataset="LIVE")
    with pytest.raises(SplitError, match="at least 2"):
        training_split(1)
    with pytest.raises(SplitError, match=r"needs at least 3 \(1 test and 1 training\)$"):
        authors_test_sets(2)
    sampled, how = authors_test_sets(40, seed=1)
    assert len(sampled) == 100 and len(set(sampled)) == 100 and "random" in how
    assert all(len(set(test)) == 8 for test in sampled)  # round(0.2*40) distinct contents
    many, _ = authors_test_sets(40, seed=1, max_splits=300)  # past CPython's cached ints
    assert len(set(many)) == 300 and many[:100] == sampled
    with pytest.raises(SplitError, match="leave none to train on"):
        validation_part((5,), seed=0, index=0)


def test_max_splits_takes_the_first_splits_and_says_so():
    every, how = content_splits(10, dataset="LIVE")
    assert len(every) == 45 and "first" not in how
    first, how = content_splits(10, dataset="LIVE", max_splits=3)
    assert first == every[:3] and how.endswith("; the first 3 of them")
    for cap in (45, 100):  # as many as there are, or more: all of them, nothing cut
        same, how = content_splits(10, dataset="LIVE", max_splits=cap)
        assert same == every and "first" not in how


def test_the_same_seed_draws_the_same_contents_in_every_version():
    # Pinned: a published number must be reproducible with a later heke.
    assert content_splits(10, dataset="LIVE")[0][0] == Split(0, (3, 4, 5, 6, 7, 8), (2, 9), (0, 1))
    assert training_split(10) == Split(0, (1, 2, 3, 4, 5, 6, 7, 8), (0, 9), ())
    assert training_split(2) == Split(0, (1,), (0,), ())  # the fewest that leave one to train
    assert training_split(5, validation=False) == Split(0, (0, 1, 2, 3, 4), (), ())


# --------------------------------------------------------------------------- training


def test_protocol_learns_and_is_deterministic(tmp_path):
    dataset, data = make_dataset(tmp_path)
    state = torch.random.get_rng_state()
    first = intra_dataset(data, dataset, QUICK)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    second = intra_dataset(data, dataset, QUICK)
    assert [o.metrics for o in first.outcomes] == [o.metrics for o in second.outcomes]
    summary = first.summaries()["toy"]
    assert summary["splits"] == 6 and summary["srocc_median"] > 0.7, summary
    other = intra_dataset(data, dataset, TrainConfig(epochs=25, lr=1e-3, seed=1))
    assert [o.metrics for o in other.outcomes] != [o.metrics for o in first.outcomes]
    report = first.to_dict()
    assert report["summary"]["toy"]["srocc_q1"] <= report["summary"]["toy"]["srocc_q3"]
    assert json.dumps(report)


def test_each_split_trains_on_its_training_contents_only(tmp_path):
    # The same training, rebuilt here from the split's content ids: equal numbers only if
    # intra_dataset fed exactly those videos (no test or validation video leaked in).
    dataset, data = make_dataset(tmp_path)
    config = TrainConfig(epochs=6, lr=1e-3)
    report = intra_dataset(data, dataset, config, max_splits=3)
    prepared = prepare(data, dataset, config)
    for outcome in report.outcomes:
        split = outcome.split
        assert not set(split.test) & (set(split.train) | set(split.validation))

        def videos(contents: tuple[int, ...]) -> np.ndarray:
            return np.flatnonzero([c in contents for c in prepared.contents])

        result = train_regressor(
            prepared.part(videos(split.train)),
            config,
            batch_size=report.batch_size,
            validation=prepared.part(videos(split.validation)),
            tests={"toy": prepared.part(videos(split.test))},
        )
        assert outcome.metrics == result.tests["toy"]
        assert outcome.validation == result.validation


def noisy_split(tmp_path):
    """Train, validation and test parts of 8 noisy contents: per-epoch SROCCs go up and down,
    so choosing by validation, by test or the last epoch give different epochs."""
    dataset, data = make_dataset(tmp_path, contents=8, noise=3.0)
    prepared = prepare(data, dataset, QUICK)
    split = content_splits(8, dataset="toy", seed=QUICK.seed)[0][0]
    return (prepared.part(rows) for rows in split.rows(prepared.contents))


def typed(text: str) -> str:
    """``text`` as a command line or a file gives it: equal, but not the same object."""
    return "".join(list(text))


def test_validation_selection_never_looks_at_the_test_set(tmp_path):
    train, val, test = noisy_split(tmp_path)
    config = TrainConfig(epochs=25, lr=1e-3, select_epoch=typed("validation"))
    result = train_regressor(train, config, batch_size=5, validation=val, tests={"toy": test})
    by_validation = [e.validation_srocc for e in result.log]
    chosen = int(np.argmax(by_validation))  # the first of equals, as upstream keeps it
    assert result.selected_epoch == result.test_epochs["toy"] == chosen
    assert result.tests["toy"].srocc == pytest.approx(result.log[chosen].test_srocc["toy"])
    # The model handed back is that epoch's, not the last one's.
    assert result.net is not None and result.validation is not None
    with torch.no_grad():
        again = result.net(torch.from_numpy(val.x)).numpy().astype(np.float64)
    assert evaluate(again, val.y).plcc == pytest.approx(result.validation.plcc)
    # Else this data could not tell the rules apart:
    assert min(by_validation[chosen:]) < by_validation[chosen]  # not just the last improvement
    assert max(e.test_srocc["toy"] for e in result.log) > result.tests["toy"].srocc


def test_oracle_test_reports_the_best_epoch_on_the_test_set(tmp_path):
    train, _, test = noisy_split(tmp_path)
    config = TrainConfig(epochs=25, lr=1e-3, select_epoch=typed("oracle-test"))
    result = train_regressor(train, config, batch_size=5, tests={"toy": test})
    by_test = [e.test_srocc["toy"] for e in result.log]
    best = int(np.argmax(by_test))  # the first of equals
    assert result.test_epochs["toy"] == result.selected_epoch == best
    assert result.tests["toy"].srocc == pytest.approx(max(by_test))
    assert by_test.count(max(by_test)) > 1  # else this data could not tell first from last
    assert max(by_test) > by_test[-1]  # nor best from last


def test_a_batch_as_large_as_the_training_set_trains_every_epoch(tmp_path):
    train, _, _ = noisy_split(tmp_path)
    config = TrainConfig(epochs=3, lr=1e-3, select_epoch="last")  # no test set needed
    result = train_regressor(train, config, batch_size=len(train))
    losses = [e.loss for e in result.log]
    assert np.isfinite(losses).all() and len(set(losses)) == 3  # one step in each epoch


@pytest.mark.parametrize("batch", [5, 13])  # 25 rows: no partial batch; a 12-row one
def test_each_epoch_steps_on_full_shuffled_batches_only(tmp_path, batch):
    # The loop the module docstring describes, written out: one permutation an epoch from
    # the run's generator, full batches only (upstream's drop_last=True).
    train, _, _ = noisy_split(tmp_path)
    assert len(train) == 25
    config = TrainConfig(epochs=3, lr=1e-3, select_epoch="last")
    result = train_regressor(train, config, batch_size=batch)
    generator = torch.Generator().manual_seed(config.seed)
    net = RegressorNet(train.x.shape[-1], generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.float32))
    for _ in range(config.epochs):
        order = torch.randperm(len(train), generator=generator)
        for rows in order[: len(train) // batch * batch].split(batch):
            optimizer.zero_grad()
            nn.SmoothL1Loss()(net(x[rows]), y[rows]).backward()
            optimizer.step()
    assert result.net is not None
    for got, want in zip(result.net.state_dict().values(), net.state_dict().values()):
        assert torch.equal(got, want)


def test_last_keeps_and_reports_the_final_epoch_of_the_authors_300(tmp_path):
    train, _, test = noisy_split(tmp_path)
    config = TrainConfig(select_epoch=typed("last"))  # 300 epochs: past CPython's small ints
    result = train_regressor(train, config, batch_size=5, tests={"toy": test})
    assert result.selected_epoch == result.test_epochs["toy"] == 299 and len(result.log) == 300
    assert result.tests["toy"].srocc == pytest.approx(result.log[-1].test_srocc["toy"])
    alone = train_regressor(train, config, batch_size=5)  # no test set: the same epoch
    assert alone.selected_epoch == 299


def test_a_test_set_without_a_ranking_fails_oracle_test_on_one_line(tmp_path):
    train, _, test = noisy_split(tmp_path)
    flat = Part(test.x, np.full_like(test.y, 5.0))  # every label equal: SROCC is NaN
    config = TrainConfig(epochs=3, select_epoch="oracle-test")
    with pytest.raises(FinetuneError, match=r"^no epoch gave a defined SROCC on flat$"):
        train_regressor(train, config, batch_size=5, tests={"flat": flat})


def test_epoch_selection_on_validation_needs_two_videos(tmp_path):
    train, val, _ = noisy_split(tmp_path)
    two = Part(val.x[:2], val.y[:2])
    config = TrainConfig(epochs=4, lr=1e-3, select_epoch=typed("validation"))
    result = train_regressor(train, config, batch_size=5, validation=two)
    by_validation = [e.validation_srocc for e in result.log]
    assert result.validation is not None
    assert result.selected_epoch == int(np.argmax(by_validation))  # with no test set too
    for too_few in (None, Part(val.x[:1], val.y[:1])):
        with pytest.raises(FinetuneError, match="at least 2 validation videos"):
            train_regressor(train, config, batch_size=5, validation=too_few)


def test_oracle_test_is_never_worse_than_the_last_epoch(tmp_path):
    dataset, data = make_dataset(tmp_path)
    oracle = intra_dataset(
        data, dataset, TrainConfig(epochs=15, lr=1e-3, select_epoch="oracle-test")
    )
    last = intra_dataset(data, dataset, TrainConfig(epochs=15, lr=1e-3, select_epoch="last"))
    for a, b in zip(oracle.outcomes, last.outcomes):
        assert a.split.train == b.split.train  # both train on every non-test content
        assert a.metrics.srocc >= b.metrics.srocc
    assert "optimistic" in oracle.text()


def test_mos_lists_train_on_reversed_targets(tmp_path):
    dataset, data = make_dataset(tmp_path, mos=True)
    prepared = prepare(data, dataset, QUICK)
    assert prepared.direction == "mos"
    np.testing.assert_array_equal(prepared.y, dataset.targets("mos"))
    assert intra_dataset(data, dataset, QUICK).summaries()["toy"]["srocc_median"] > 0.7


def test_feature_switches_select_the_layout(tmp_path):
    dataset, data = make_dataset(tmp_path)
    config = TrainConfig(epochs=2, stages=("f2", "f4"), poolings=("max",))
    prepared = prepare(data, dataset, config)
    assert prepared.x.shape[-1] == 16 + 64


def test_bad_training_setups_are_one_line_errors(tmp_path):
    dataset, data = make_dataset(tmp_path)
    with pytest.raises(FinetuneError, match="drop the last partial batch"):
        intra_dataset(data, dataset, TrainConfig(epochs=1, batch_size=100))
    with pytest.raises(FinetuneError, match="valid: validation, oracle-test, last"):
        TrainConfig(select_epoch="best")  # type: ignore[arg-type]
    with pytest.raises(FinetuneError, match="needs a test set"):
        prepared = prepare(data, dataset, QUICK)
        train_regressor(
            prepared.part(np.arange(10)), TrainConfig(select_epoch="oracle-test"), batch_size=5
        )


# --------------------------------------------------------------------------- cross-dataset, export


def test_cross_dataset_trains_on_a_and_tests_on_b(tmp_path):
    a, data_a = make_dataset(tmp_path, name="A", seed=1)
    b, data_b = make_dataset(tmp_path, name="B", seed=1, contents=3)
    report, result, _ = cross_dataset((data_a, a), [(data_b, b)], QUICK)
    assert [o.test for o in report.outcomes] == ["B"]
    assert report.splits == "all 6 contents of A, 1 of them for validation"
    assert report.outcomes[0].metrics.srocc > 0.7 and result.net is not None
    wide = FeatureSet(
        data_b.paths, np.zeros((15, 4, 2880), np.float32), None, None, data_b.metadata
    )
    with pytest.raises(FinetuneError, match="width 2880"):
        cross_dataset((data_a, a), [(wide, b)], QUICK)


def test_exported_regressor_runs_in_numpy_like_torch(tmp_path):
    dataset, data = make_dataset(tmp_path, mos=True)
    result, prepared, split = fit(data, dataset, QUICK)
    path = export_regressor(tmp_path / "reg.npz", result, prepared, QUICK, split, batch_size=5)
    regressor = load_regressor(path)
    with torch.no_grad():
        expected = result.net(torch.from_numpy(prepared.x)).numpy()
    actual = np.array([regressor.predict(f) for f in prepared.features.features])
    assert np.max(np.abs(actual - expected)) <= REGRESSOR.atol
    meta = regressor.metadata
    assert meta["backbone_weights_sha256"] == "w" * 64
    assert meta["label"]["list_direction"] == "mos" and meta["label"]["reversed"] is True
    assert meta["training"]["validation_contents"] and meta["protocol"]["seed"] == 12318
    assert meta["layout"]["grouped"] == ["f4"] and regressor.layout.feature_dim == TINY_WIDTH
    regressor.check_engine("r2p1d_HEKE_4", TINY_WIDTH, "w" * 64)
    with pytest.raises(RegressorError, match="expects 360 features") as info:
        regressor.check_engine("r2p1d_HEKE_4", 2880)
    assert "\n" not in str(info.value)


def test_test_selected_models_are_not_exported(tmp_path):
    dataset, data = make_dataset(tmp_path)
    with pytest.raises(FinetuneError, match="no test set"):
        fit(data, dataset, TrainConfig(select_epoch="oracle-test"))
    last, _, _ = fit(data, dataset, TrainConfig(epochs=2, select_epoch=typed("last")))
    assert last.selected_epoch == 1  # a final fit may keep its last epoch
    a, data_a = make_dataset(tmp_path, name="A")
    _, result, prepared = cross_dataset(
        (data_a, a), [(data, dataset)], TrainConfig(epochs=3, select_epoch="oracle-test")
    )
    split = training_split(6, validation=False)
    with pytest.raises(FinetuneError, match="not exported"):
        export_regressor(tmp_path / "r.npz", result, prepared, QUICK, split, batch_size=5)
    assert not (tmp_path / "r.npz").exists()


# --------------------------------------------------------------------------- command line


def test_finetune_commands(tmp_path):
    dataset, data = make_dataset(tmp_path)
    listed, features = Path(dataset.source), save_features(tmp_path / "f.npz", data)
    runner = CliRunner()
    quick = ["--epochs", "3", "--lr", "1e-3"]
    report = tmp_path / "report.json"
    ok = runner.invoke(
        finetune_app,
        ["intra", str(features), str(listed), *quick, "--max-splits", "2", "--report", str(report)],
    )
    assert ok.exit_code == 0, ok.output
    written = json.loads(report.read_text())
    assert "split 1: test 1" in ok.output and written["kind"] == "intra"
    # The default picks the epoch on validation contents; the test set is only reported.
    assert written["config"]["select_epoch"] == "validation" and "optimistic" not in ok.output
    assert all(o["validation"] is not None for o in written["outcomes"])
    out = tmp_path / "reg.npz"
    fitted = runner.invoke(
        finetune_app, ["fit", str(features), str(listed), *quick, "-o", str(out)]
    )
    assert fitted.exit_code == 0, fitted.output
    assert load_regressor(out).layout.feature_dim == TINY_WIDTH
    bad_option = runner.invoke(
        finetune_app, ["intra", str(features), str(listed), "--stages", "f9"]
    )
    assert bad_option.exit_code == 2 and "--stages 'f9': choose from" in bad_option.output
    subset = tmp_path / "subset.npz"
    save_features(subset, data.take(range(20)))
    report.unlink()
    mismatch = runner.invoke(
        finetune_app, ["intra", str(subset), str(listed), *quick, "--report", str(report)]
    )
    assert mismatch.exit_code == 1 and not report.exists()
    assert (
        mismatch.output.count("\n") == 1 and "no entry for 10 of the 30 videos" in mismatch.output
    )
    oracle = runner.invoke(
        finetune_app,
        [
            "fit",
            str(features),
            str(listed),
            "--select-epoch",
            "oracle-test",
            "-o",
            str(tmp_path / "o.npz"),
        ],
    )
    assert oracle.exit_code == 1 and not (tmp_path / "o.npz").exists()


def test_too_few_contents_is_a_one_line_error(tmp_path):
    dataset, data = make_dataset(tmp_path, contents=2)
    features = save_features(tmp_path / "f.npz", data)
    report = tmp_path / "r.json"
    args = ["intra", str(features), dataset.source, "--epochs", "1", "--report", str(report)]
    result = CliRunner().invoke(finetune_app, args)
    assert result.exit_code == 1 and not report.exists()
    assert result.output.strip().splitlines() == [
        "heke-finetune: error: 2 distinct content(s): a content-wise 80/20 split holds out "
        "round(0.2*n) contents and needs at least 3 (1 test, 1 validation and 1 training)"
    ]
