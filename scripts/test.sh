#!/usr/bin/env bash
# The whole test suite on a fresh machine: makes .venv, installs heke with its dev extras,
# then runs ruff (lint + format check), mypy, the import contracts of docs/ARCHITECTURE.md
# (import-linter) and pytest (slow tests included).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HEKE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# Pinned first: on the project's CPU machines this is the local CPU build; a bare `torch`
# requirement would pull a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
"$venv/bin/lint-imports"
"$venv/bin/python" -m pytest "$@"
