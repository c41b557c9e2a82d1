#!/usr/bin/env bash
# Every GPU check of docs/gpu.md in one command, for a GPU machine without internet that has Python and torch:
#
#   bash benchmarks/gpu_checks.sh [WHEELHOUSE]        # default ./wheelhouse
#
# 1. Dependencies: when segsr_basicsr's dependencies do not import yet, the wheels of WHEELHOUSE (built with
#    `make wheelhouse PYVER=3.12 EXTRAS=test [INSTALLED=...]` where there is internet) are unpacked with
#    `pip install --no-index --no-deps --target $SITE`; the Python environment itself is not touched.
#    The repository's own source is what runs (PYTHONPATH=repo first).
# 2. The GPU test suite: pytest -m cuda.
# 3. benchmarks/bench_segsr.py --device cuda, paper config, batch 4, LR 64, against spandrel's HAT, three
#    precisions: fp32 (TF32 off), TF32, bf16 autocast (+ TF32). Peak memory and the tiled 1024^2 scene are
#    measured in the fp32 run only (they run in child processes, which use PyTorch's default precision).
#
# Environment: PYTHON (python3), RESULTS (results folder: $OUT if set, else gpu_checks), SITE (where wheels are
# unpacked: /tmp/segsr_gpu_site), TESTS=0 / BENCH=0 (skip a part, e.g. to fit two 10-minute runs),
# REPEATS (10), COMPILE=1 (also torch.compile in the TF32 run). Exit status: pytest's (0 = all GPU tests passed).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
WH=${1:-wheelhouse}
RESULTS=${RESULTS:-${OUT:-gpu_checks}}
SITE=${SITE:-/tmp/segsr_gpu_site}
REPEATS=${REPEATS:-10}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
status=0

echo "== machine" | tee "$RESULTS/env.txt"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA',
torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"
    nproc
} 2>&1 | tee -a "$RESULTS/env.txt"

echo "== dependencies"
if "$PY" -c "import basicsr, open_clip, spandrel" 2>/dev/null; then
    echo "basicsr, open_clip and spandrel import already: nothing installed"
elif ls "$WH"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WH"/*.whl || exit 1
    export PYTHONPATH="$SITE"
    echo "unpacked $(ls "$WH"/*.whl | wc -l) wheels from $WH into $SITE"
else
    echo "segsr_basicsr's dependencies are missing and $WH holds no wheels: build it with" \
         "'make wheelhouse PYVER=<this python> EXTRAS=test' on a machine with internet (docs/gpu.md)" >&2
    exit 1
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import segsr_basicsr, basicsr, open_clip, spandrel, torch
print('segsr_basicsr from', segsr_basicsr.__file__, '| CUDA available:', torch.cuda.is_available())" || exit 1

if [ "${TESTS:-1}" != 0 ]; then
    echo "== pytest -m cuda"
    "$PY" -m pytest -m cuda -rs -v -p no:cacheprovider tests 2>&1 | tee "$RESULTS/pytest_cuda.txt"
    status=${PIPESTATUS[0]}
fi

bench() {  # bench MODE bench_segsr-arguments...; MODE fp32 | tf32 | bf16
    local mode=$1
    shift
    "$PY" - "$mode" "$@" <<'PYEOF'
import contextlib
import sys

import torch

mode = sys.argv[1]
sys.argv = ['benchmarks/bench_segsr.py'] + sys.argv[2:]
tf32 = mode != 'fp32'
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
sys.path.insert(0, 'benchmarks')
import bench_segsr  # noqa: E402

print(f'precision: {mode} (TF32 matmuls/convolutions {"on" if tf32 else "off"}'
      f'{", bf16 autocast over every net" if mode == "bf16" else ""})', flush=True)
with torch.autocast('cuda', dtype=torch.bfloat16) if mode == 'bf16' else contextlib.nullcontext():
    bench_segsr.main()
PYEOF
}

if [ "${BENCH:-1}" != 0 ]; then
    common=(--config paper --batch 4 --lr-size 64 --device cuda --warmup 3 --repeats "$REPEATS")
    echo "== bench fp32 (+ peak memory, tiled 1024^2 scene)"
    bench fp32 "${common[@]}" --scaling --scaling-sizes 64 --scene 1024 --tile 256 --tile-overlap 32 2>&1 \
        | tee "$RESULTS/bench_fp32.txt"
    echo "== bench tf32"
    bench tf32 "${common[@]}" --no-memory $([ "${COMPILE:-0}" = 1 ] && echo --compile) 2>&1 \
        | tee "$RESULTS/bench_tf32.txt"
    echo "== bench bf16"
    bench bf16 "${common[@]}" --no-memory 2>&1 | tee "$RESULTS/bench_bf16.txt"
fi

{
    echo "== summary"
    cat "$RESULTS/env.txt"
    [ -f "$RESULTS/pytest_cuda.txt" ] && tail -n 1 "$RESULTS/pytest_cuda.txt"
    for m in fp32 tf32 bf16; do
        [ -f "$RESULTS/bench_$m.txt" ] || continue
        echo "-- $m"
        grep -E '^(precision|config|params|max |checkpointed|case|forward|train|wall|scene|== )' "$RESULTS/bench_$m.txt"
    done
} 2>&1 | tee "$RESULTS/summary.txt"
exit "$status"
