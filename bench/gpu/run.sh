#!/usr/bin/env bash
# The prepared GPU check (docs/benchmarks.md, "The GPU check"): on a machine with PyTorch
# installed and no network, in under 8 minutes,
#   1. the tests marked gpu (pytest -m gpu, over the test files that have such tests);
#   2. the HTTP benchmark on the device (gpufair bench serve --http --device cuda): the gpufair
#      daemon with one stream vs N streams per session group, beside the naive server, and the
#      isolation run; results in bench/results/serve-gpu.{md,json,png}, the pytest summary and
#      the device appended to the .md.
#
#   bench/gpu/run.sh [--device cuda|cpu] [--streams N] [--quick] [--out DIR]
#
# --device cpu runs the same steps on the CPU (the test suite's smoke test: only the device
# changes the day a GPU is there). --quick shortens the benchmark (its --quick).
#
# Python: $PYTHON (default python3). When it cannot import what the check needs, a virtualenv
# var/gpu-venv is made with --system-site-packages (so the machine's torch is used) and the
# wheels of bench/gpu/wheels/ are installed into it offline; `make gpu-wheels` makes them (for
# CPython 3.11 on x86_64 Linux, the lock's platform) and they travel with the tree.
set -euo pipefail

DEVICE=cuda
STREAMS=4
QUICK=""
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/bench/results"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --streams) STREAMS="$2"; shift 2 ;;
        --quick) QUICK="--quick"; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/gpu/run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "bench/gpu/run.sh: --device cuda or cpu" >&2; exit 2 ;; esac

cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
NEEDS="import torch, numpy, pydantic, pydantic_settings, fastapi, uvicorn, starlette, httpx, pytest, hypothesis, prometheus_client"
began=$(date +%s)
say() { echo "[gpu-check $(( $(date +%s) - began ))s] $*"; }

if ! "$PY" -c "$NEEDS" 2>/dev/null; then
    WHEELS="$ROOT/bench/gpu/wheels"
    if [ ! -f "$WHEELS/requirements.txt" ]; then
        echo "bench/gpu/run.sh: $PY lacks packages and $WHEELS is missing: run 'make gpu-wheels' and carry it" >&2
        exit 1
    fi
    if ! "$PY" -c "import torch" 2>/dev/null; then
        echo "bench/gpu/run.sh: $PY cannot import torch; the check uses the machine's PyTorch" >&2
        exit 1
    fi
    say "installing bench/gpu/wheels into var/gpu-venv (offline)"
    "$PY" -m venv --system-site-packages "$ROOT/var/gpu-venv"
    if ! "$ROOT/var/gpu-venv/bin/pip" install --quiet --no-index --find-links "$WHEELS" \
        --require-hashes --no-deps -r "$WHEELS/requirements.txt"; then
        echo "bench/gpu/run.sh: the wheels did not install; they are for CPython 3.11 on x86_64" \
             "Linux and this is $("$PY" -V 2>&1): set PYTHON to a 3.11 with torch" >&2
        exit 1
    fi
    PY="$ROOT/var/gpu-venv/bin/python"
    "$PY" -c "$NEEDS"
fi

if [ "$DEVICE" = cuda ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "bench/gpu/run.sh: torch sees no CUDA device (use --device cpu to try the steps)" >&2
        exit 1
    fi
    DEVICE_NAME="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0), '-', round(torch.cuda.get_device_properties(0).total_memory / 2**30), 'GiB')")"
else
    DEVICE_NAME="CPU ($(nproc) cores)"
fi
say "device: $DEVICE_NAME; torch $("$PY" -c 'import torch; print(torch.__version__)')"

mkdir -p "$OUT"
GPU_TESTS=$(grep -rl --include='test_*.py' "mark.gpu" tests | sort)
say "pytest -m gpu: $(echo $GPU_TESTS)"
set +e
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS > "$OUT/gpu-pytest.log" 2>&1
PYTEST_STATUS=$?
set -e
PYTEST_SUMMARY="$(tail -n 1 "$OUT/gpu-pytest.log")"
say "pytest -m gpu: exit $PYTEST_STATUS: $PYTEST_SUMMARY"

CORES=$(nproc)
CLIENTS=$(( CORES >= 8 ? 4 : 1 ))
BENCH=(bench serve --http --device "$DEVICE" --streams "1,$STREAMS" --systems gpufair,naive
       --cores "$CORES" --clients "$CLIENTS" --repeats 1 --name gpu --out "$OUT")
if [ -n "$QUICK" ]; then BENCH+=(--quick); else BENCH+=(--isolation-s 10); fi
say "gpufair ${BENCH[*]}"
timeout 420 "$PY" -m gpufair.cli "${BENCH[@]}"

{
    echo
    echo "## The GPU check"
    echo
    echo "Device: $DEVICE_NAME. Command: \`bench/gpu/run.sh --device $DEVICE --streams $STREAMS${QUICK:+ $QUICK}\` ($(( $(date +%s) - began )) s in all)."
    echo
    echo "\`pytest -m gpu $(echo $GPU_TESTS)\`: exit $PYTEST_STATUS, $PYTEST_SUMMARY"
} >> "$OUT/serve-gpu.md"
say "wrote $OUT/serve-gpu.md"
exit "$PYTEST_STATUS"
