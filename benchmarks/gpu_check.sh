#!/usr/bin/env bash
# GPU check for the throughput work (benchmarks/RESULTS.md): under 8 minutes on one H100/H200
# with no network and no TensorRT.
#   1. Installs the wheels carried in .whl/ (PyAV: the GPU image has torch, onnx,
#      onnxruntime, cuda-bindings, typer, pytest and matplotlib, not PyAV) into a private
#      folder, and makes heke importable from this checkout without building it
#      (benchmarks/gpu_check_site.py: package folders on the path, entry points).
#   2. Runs the GPU-marked tests with HEKE_REQUIRE_GPU=1, so a skipped GPU test fails and a
#      missing module fails naming itself (tests/conftest.py, require), in two parts:
#      - CUDA: every CUDA path of the torch backend row by row against the CPU reference,
#        torch CUDA FP16 vs FP32 on 20 generated videos, CUDA graphs, pinned memory and
#        streams, and the TensorRT runner's pinned buffers, streams and events on the real GPU;
#      - TensorRT (tests/test_export_trt.py: builds a real engine, checks every row). It always
#        runs. Where TensorRT does not import (the GPU machine as lent has none) its test
#        FAILS, naming tensorrt, and the summary says "TensorRT: FAILED (tensorrt does not
#        import here: not run)": a part that did not run is never reported as passed. The
#        CUDA part and the bench run and report either way.
#   3. Runs heke-bench on the GPU and prints every figure.
# Exit status: a sum of bits, so the missing TensorRT does not hide the rest: 0 all passed,
# +1 CUDA tests failed, +2 TensorRT tests failed (always, where TensorRT is missing), +4
# heke-bench failed. On the TensorRT-less GPU machine, 2 means everything else passed.
# Outputs (gpu-tests.log, trt-tests.log, bench.log, bench.json, bench.png) go to $OUT when
# set, else to ./gpu-check-out.
#
# Usage, from the repository root:
#   benchmarks/gpu_check.sh --fetch-wheels   # here, with network: PyAV wheel into .whl/
#   benchmarks/gpu_check.sh                  # there: the check (carry .whl with the tree)
#   GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh   # no GPU: install, collect, quick bench
# PYTHON picks the interpreter (default python3: the GPU image's, which holds torch).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
py="${PYTHON:-python3}"
out="${OUT:-$repo/gpu-check-out}"
site="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/heke-gpu-site}"
dry="${GPU_CHECK_DRY_RUN:-0}"
av_version="18.1.0"  # abi3 wheel: any CPython >= 3.11
trt_files=(tests/test_export_trt.py)  # the TensorRT part: builds and runs a real engine

say() { printf '\n=== %s\n' "$*"; }

fetch_wheels() {
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "av==$av_version"
    # pyproject's per-test time limit needs pytest-timeout (pure Python, any platform)
    "$py" -m pip download --no-deps --only-binary=:all: -d .whl "pytest-timeout==2.4.0"
    ls -l .whl
}

install() {
    say "install: carried wheels into $site; heke from $repo"
    rm -rf "$site" && mkdir -p "$site"
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" .whl/*.whl
    fi
    # One package per top-level folder, named as it is imported (runtime/heke_runtime, ...;
    # heke_ref/ is its own): those folders go on the path, with no build step and no
    # setuptools. gpu_check_site.py adds the entry points and checks every import.
    local folders="$repo:$repo/runtime:$repo/export:$repo/corpus:$repo/finetune:$repo/benchmarks"
    export PYTHONPATH="$site:$folders${PYTHONPATH:+:$PYTHONPATH}"
    "$py" benchmarks/gpu_check_site.py "$site"
}

gpu_pytest() {  # gpu_pytest LOG FILE...: the GPU-marked tests of FILE..., a skip a failure
    local log="$1" require=1
    shift
    [[ "$dry" == 1 ]] && require=0
    HEKE_REQUIRE_GPU=$require "$py" -m pytest -q -m gpu -p no:cacheprovider -rA "$@" 2>&1 \
        | tee "$out/$log"
}

cuda_tests() {
    local files=(tests/test_gpu_*.py)
    mapfile -t marked < <(grep -l "mark.gpu" tests/test_*.py)
    for file in "${marked[@]}"; do
        [[ " ${files[*]} ${trt_files[*]} " == *" $file "* ]] || files+=("$file")
    done
    say "CUDA tests: ${files[*]}"
    gpu_pytest gpu-tests.log "${files[@]}"
}

trt_tests() {
    say "TensorRT tests: ${trt_files[*]}"
    if ! "$py" -c "import tensorrt" 2>/dev/null; then
        echo "tensorrt does not import here: its tests cannot pass (HEKE_REQUIRE_GPU=1: fail)"
    fi
    gpu_pytest trt-tests.log "${trt_files[@]}"
}

bench() {
    say "heke-bench"
    local args=(--out "$out" --workdir "${TMPDIR:-/tmp}/heke-bench-gpu")
    if [[ "$dry" == 1 ]]; then
        args+=(--quick --stages "model,e2e,decode-only")
    else
        # A 2-minute seek video keeps the check short (generating 10 minutes takes ~4).
        args+=(--min-time 5 --long-seconds 120)
    fi
    "$py" -m heke_bench "${args[@]}" 2>&1 | tee "$out/bench.log"
}

report() {  # report NAME STATUS [WHY]: one summary line per part
    local verdict=passed
    [[ "$2" != 0 ]] && verdict="FAILED${3:+ ($3)}"
    printf '%-12s %s\n' "$1:" "$verdict"
}

main() {
    if [[ "${1:-}" == "--fetch-wheels" ]]; then
        fetch_wheels
        return
    fi
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    local start=$SECONDS cuda=0 trt=0 ran=0 why=""
    if [[ "$dry" != 1 ]]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
            --format=csv || true
    fi
    install
    cuda_tests || cuda=$?
    trt_tests || trt=$?
    "$py" -c "import tensorrt" 2>/dev/null || why="tensorrt does not import here: not run"
    bench || ran=$?
    say "summary, in $((SECONDS - start)) s (logs in $out)"
    [[ "$dry" != 1 ]] || echo "dry run: the GPU tests were only collected and skipped"
    report "CUDA tests" "$cuda"
    report "TensorRT" "$trt" "$why"
    report "heke-bench" "$ran"
    return $(((cuda != 0) + 2 * (trt != 0) + 4 * (ran != 0)))
}

main "$@"
