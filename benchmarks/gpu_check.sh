#!/usr/bin/env bash
# GPU check for the throughput work (benchmarks/RESULTS.md): under 8 minutes on one H100/H200
# with no network and no TensorRT.
#   1. Installs the wheels carried in .whl/ (PyAV: the GPU image has torch, onnx,
#      onnxruntime, cuda-bindings, typer, pytest and matplotlib, not PyAV) into a private
#      folder, and makes heke importable from this checkout without building it
#      (benchmarks/gpu_check_site.py: package folders on the path, entry points).
#   2. Runs the GPU-marked tests with HEKE_REQUIRE_GPU=1, so a skipped GPU test fails:
#      torch CUDA FP16 vs FP32 on 20 generated videos, CUDA graphs, pinned memory and streams,
#      and the TensorRT runner's pinned buffers, streams and events on the real GPU.
#      Tests that need TensorRT itself run only where it imports.
#   3. Runs heke-bench on the GPU and prints every figure.
# Outputs (gpu-tests.log, bench.log, bench.json, bench.png) go to $OUT when set, else to
# ./gpu-check-out.
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
needs_tensorrt=(tests/test_export_trt.py)

say() { printf '\n=== %s\n' "$*"; }

fetch_wheels() {
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "av==$av_version"
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

gpu_tests() {
    local files=(tests/test_gpu_*.py) extra=()
    mapfile -t marked < <(grep -l "mark.gpu" tests/test_*.py)
    for file in "${marked[@]}"; do
        [[ " ${files[*]} " == *" $file "* ]] && continue
        if [[ " ${needs_tensorrt[*]} " == *" $file "* ]] && ! "$py" -c "import tensorrt" 2>/dev/null; then
            echo "not run (needs TensorRT, absent here): $file"
            continue
        fi
        extra+=("$file")
    done
    say "GPU tests: ${files[*]} ${extra[*]}"
    local require=1
    [[ "$dry" == 1 ]] && require=0
    HEKE_REQUIRE_GPU=$require "$py" -m pytest -q -m gpu -p no:cacheprovider -rA \
        "${files[@]}" "${extra[@]}" 2>&1 | tee "$out/gpu-tests.log"
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

main() {
    if [[ "${1:-}" == "--fetch-wheels" ]]; then
        fetch_wheels
        return
    fi
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    local start=$SECONDS status=0
    if [[ "$dry" != 1 ]]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
            --format=csv || true
    fi
    install
    gpu_tests || status=$?
    bench || status=$?
    say "done in $((SECONDS - start)) s; status $status (0: tests passed and bench ran)"
    return "$status"
}

main "$@"
