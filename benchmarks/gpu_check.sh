#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and the package registries, install the GPU
# image's packages (benchmarks/gpu-requirements.txt, Dockerfile.gpu's library path) into a
# fresh venv, export a BLIP ITM model of the real base size with random weights, and measure
# CPU, CUDA fp32, CUDA fp16 and TensorRT fp16: pairs/s and latency at batch 1 to 128, fp16
# decision agreement, TensorRT start cold and warm, and the worker's end-to-end rate. Writes
# Markdown (docs/gpu.md to be) naming the GPU, within 8 minutes, whatever fails on the way:
# every stage has a time limit, and a failed stage is a row of the report's stages table.
#
#   bash benchmarks/gpu_check.sh [OUT.md]          # default OUT: ./gpu-check.md
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   # no GPU, no installs: the tests' tiny model
#                                                  # with the project's .venv, to try the script
# Environment: GPU_CHECK_TOTAL_S (default 470), GPU_CHECK_WORK (scratch folder, default a new
# one under /tmp), PYTHON (default python3.11, else python3), TRT_INDEX_URL (the index that
# serves the TensorRT wheels).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-gpu-check.md}")
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/itmguard-gpu-check.XXXXXX)}
TOTAL_S=${GPU_CHECK_TOTAL_S:-470}
DRY=${GPU_CHECK_DRY:-}
TRT_INDEX_URL=${TRT_INDEX_URL:-https://pypi.nvidia.com}
RESULTS=$WORK/results
MODEL=$WORK/model
CACHE=$WORK/tensorrt-cache
START=$SECONDS
REPORT_RESERVE_S=10
mkdir -p "$RESULTS"
: >"$RESULTS/stages.tsv"
cd "$ROOT" || exit 1

left() { echo $((TOTAL_S - (SECONDS - START) - REPORT_RESERVE_S)); }

# stage NAME CAP_S COMMAND...: run COMMAND for at most CAP_S seconds or the time left, its
# output in RESULTS/NAME.log, its exit code and seconds in RESULTS/stages.tsv (124: timed out).
stage() {
    local name=$1 cap=$2 limit began rc
    shift 2
    limit=$(left)
    ((cap < limit)) && limit=$cap
    if ((limit < 5)); then
        echo "not run: the check's $TOTAL_S s were spent" >"$RESULTS/$name.log"
        printf '%s\tskipped\t0\n' "$name" >>"$RESULTS/stages.tsv"
        return 1
    fi
    began=$SECONDS
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=5 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" >>"$RESULTS/stages.tsv"
    echo "   exit $rc after $((SECONDS - began)) s"
    return "$rc"
}

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
PIP_FLAGS=(--quiet --disable-pip-version-check --no-input --no-compile)
if [[ $("$PY" -c 'import sys; print(sys.version_info[:2] == (3, 11))') != True ]]; then
    PIP_FLAGS+=(--ignore-requires-python) # the worker's code runs on the newer Pythons too
fi
mapfile -t PINS < <(grep -v -e '^#' -e '^tensorrt' -e '^$' benchmarks/gpu-requirements.txt)
mapfile -t TRT_PINS < <(grep '^tensorrt' benchmarks/gpu-requirements.txt)

install_runtime() { # the GPU image's packages, as Dockerfile.gpu installs them
    "$PY" -m venv "$WORK/runtime" &&
        "$WORK/runtime/bin/pip" install "${PIP_FLAGS[@]}" ".[gpu]" "${PINS[@]}" &&
        "$WORK/runtime/bin/pip" install "${PIP_FLAGS[@]}" --extra-index-url "$TRT_INDEX_URL" \
            "${TRT_PINS[@]}"
}

install_export() { # torch and the export extra, in their own venv: torch's CUDA 13 wheels
    "$PY" -m venv "$WORK/export" &&  # share file names with the runtime's CUDA 12 ones
        "$WORK/export/bin/pip" install "${PIP_FLAGS[@]}" ".[export,cpu]"
}

if [[ -n $DRY ]]; then
    RUNTIME_PY=$ROOT/.venv/bin/python
    EXPORT_PY=$ROOT/.venv/bin/python
    EXPORT_ARGS=(--tiny)
else
    stage install-runtime 240 bash -c "$(declare -f install_runtime); $(declare -p PY PIP_FLAGS WORK PINS TRT_PINS TRT_INDEX_URL); install_runtime" &
    stage install-export 240 bash -c "$(declare -f install_export); $(declare -p PY PIP_FLAGS WORK); install_export" &
    wait
    RUNTIME_PY=$WORK/runtime/bin/python
    EXPORT_PY=$WORK/export/bin/python
    EXPORT_ARGS=()
fi

nvidia-smi --id=0 --query-gpu=name,compute_cap,driver_version,memory.total \
    --format=csv,noheader >"$RESULTS/gpu.txt" 2>/dev/null || : >"$RESULTS/gpu.txt"

# The runtime finds its libraries where the image does: Dockerfile.gpu's LD_LIBRARY_PATH, with
# the image's site-packages replaced by the venv's (for the runtime's processes only: the
# export's torch brings CUDA 13 libraries of the same names).
RUNTIME_LIBS=${LD_LIBRARY_PATH:-}
if [[ -x $RUNTIME_PY ]]; then
    SITE=$("$RUNTIME_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    IMAGE_LIBS=$(sed -n 's/^ *LD_LIBRARY_PATH=\([^ ]*\).*/\1/p' Dockerfile.gpu | head -n 1)
    RUNTIME_LIBS=${IMAGE_LIBS//\/opt\/venv\/lib\/python3.11\/site-packages/$SITE}${RUNTIME_LIBS:+:$RUNTIME_LIBS}
    "$RUNTIME_PY" -m pip list --format=freeze 2>/dev/null |
        grep -iE '^(onnxruntime|tensorrt|nvidia-(cudnn|cublas|cuda-runtime))' |
        paste -sd ' ' >"$RESULTS/versions.txt"
fi

stage export 150 env PYTHONUNBUFFERED=1 "$EXPORT_PY" -m benchmarks.gpu_export \
    --out "$MODEL" "${EXPORT_ARGS[@]}" && cp "$MODEL/export.json" "$RESULTS/"

bench() { # bench NAME CAP_S ARGS...: one benchmarks.gpu_bench run in a fresh process
    local name=$1 cap=$2
    shift 2
    stage "$name" "$cap" env PYTHONUNBUFFERED=1 LD_LIBRARY_PATH="$RUNTIME_LIBS" \
        "$RUNTIME_PY" -m benchmarks.gpu_bench "$@" \
        --cache "$CACHE" --out "$RESULTS/$name.json"
}

# Most telling first, so that a short budget loses the CPU row rather than TensorRT's.
PARITY=(--parity "$MODEL/parity.npz")
bench cuda-fp32 60 speed --config cuda-fp32 --bundle "$MODEL/fp32" "${PARITY[@]}" --budget-s 20
rm -rf "$CACHE"
bench trt-cold 150 speed --config trt-fp16 --bundle "$MODEL/fp32" --batches 1 --budget-s 2
bench trt-fp16 60 speed --config trt-fp16 --bundle "$MODEL/fp32" "${PARITY[@]}" --budget-s 20
bench cuda-fp16 60 speed --config cuda-fp16 --bundle "$MODEL/fp16" "${PARITY[@]}" --budget-s 20
E2E=cpu
[[ -s $RESULTS/cuda-fp32.json ]] && E2E=cuda-fp32
[[ -s $RESULTS/trt-fp16.json ]] && E2E=trt-fp16
bench e2e 45 e2e --config "$E2E" --bundle "$MODEL/fp32" --batch 64 --budget-s 25
bench cpu 45 speed --config cpu --bundle "$MODEL/fp32" --budget-s 25

"$PY" benchmarks/gpu_report.py "$RESULTS" "$OUT"
echo "results: $RESULTS; took $((SECONDS - START)) s"
