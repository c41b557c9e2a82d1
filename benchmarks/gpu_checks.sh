#!/usr/bin/env bash
# Every GPU check of docs/gpu.md in one time-boxed command, for a GPU machine without internet that has Python and torch:
#
#   bash benchmarks/gpu_checks.sh [WHEELHOUSE]        # default ./wheelhouse
#
# 1. Dependencies: when segsr_basicsr's dependencies do not import yet, the wheels of WHEELHOUSE (built with
#    `make wheelhouse PYVER=3.12 EXTRAS=test [INSTALLED=...]` where there is internet) are unpacked with
#    `pip install --no-index --no-deps --target $SITE`; the Python environment itself is not touched.
#    The repository's own source is what runs (PYTHONPATH=repo first).
# 2. The GPU test suite: pytest -m cuda (capped at TEST_SECONDS).
# 3. benchmarks/bench_segsr.py --device cuda, paper config, batch 4, LR 64, against spandrel's HAT, in the order
#    that matters most first: bf16 autocast (+ TF32), a bf16 profile of SeG-SR (where the time goes), fp32 (TF32
#    off) with peak memory and a tiled 1024^2 scene (child processes), TF32. Each part runs with as many rounds as
#    fit its share of what is left of BUDGET seconds; a part that runs out is stopped, its log kept.
#
# Every log is written under RESULTS as it goes ($OUT if set, else gpu_checks; 7 files), so a run stopped from
# outside still leaves them. Environment: PYTHON (python3), SITE (/tmp/segsr_gpu_site), BUDGET (400 s in all),
# TEST_SECONDS (170), TESTS=0 / BENCH=0 (skip a part), DEVICE (cuda; cpu with CONFIG=tiny tries the plumbing on a
# machine without a GPU), CONFIG (paper), SCENE (1024), COMPILE=1 (also torch.compile in the TF32 part).
# Exit status: pytest's (0 = all GPU tests passed; 124 = stopped at TEST_SECONDS).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
WH=${1:-wheelhouse}
RESULTS=${RESULTS:-${OUT:-gpu_checks}}
SITE=${SITE:-/tmp/segsr_gpu_site}
BUDGET=${BUDGET:-400}
DEVICE=${DEVICE:-cuda}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
status=0

left() { echo $((BUDGET - SECONDS)); }
# capped SHARE: seconds for a part that should take at most SHARE and leave the parts after it RESERVE
capped() { local l=$(($(left) - $2)); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }

echo "== machine" | tee "$RESULTS/env.txt"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA',
torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"
    echo "$(nproc) CPUs; budget ${BUDGET} s"
} 2>&1 | tee -a "$RESULTS/env.txt"

echo "== dependencies" | tee -a "$RESULTS/env.txt"
if PYTHONPATH="$REPO" "$PY" -c "import segsr_basicsr, basicsr, open_clip, spandrel" 2>/dev/null; then
    echo "basicsr, open_clip and spandrel import already: nothing installed" | tee -a "$RESULTS/env.txt"
elif ls "$WH"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WH"/*.whl || exit 1
    export PYTHONPATH="$SITE"
    echo "unpacked $(ls "$WH"/*.whl | wc -l) wheels from $WH into $SITE" | tee -a "$RESULTS/env.txt"
else
    echo "segsr_basicsr's dependencies are missing and $WH holds no wheels: build it with" \
         "'make wheelhouse PYVER=<this python> EXTRAS=test' on a machine with internet (docs/gpu.md)" >&2
    exit 1
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import segsr_basicsr, basicsr, open_clip, spandrel, timm, cv2, numpy, torch
print('segsr_basicsr from', segsr_basicsr.__file__, '| CUDA available:', torch.cuda.is_available())
print('open_clip', open_clip.__version__, '| timm', timm.__version__, '| opencv', cv2.__version__, '| numpy',
      numpy.__version__)" 2>&1 | tee -a "$RESULTS/env.txt"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

if [ "${TESTS:-1}" != 0 ]; then
    t=$(capped "${TEST_SECONDS:-170}" 0)
    echo "== pytest -m cuda (at most $t s)"
    timeout -s INT -k 20 "$t" "$PY" -m pytest -m cuda -rfEs -v --durations=8 -p no:cacheprovider --continue-on-collection-errors tests 2>&1 \
        | tee "$RESULTS/pytest_cuda.txt"
    status=${PIPESTATUS[0]}
fi

bench() {  # bench MODE SECONDS bench_segsr-arguments...; MODE fp32 | tf32 | bf16
    local mode=$1 secs=$2
    shift 2
    echo "== bench $mode (at most $secs s): $*"
    [ "$secs" -gt 15 ] || { echo "skipped: too little of the budget left"; return; }
    timeout -s INT -k 15 "$secs" "$PY" - "$mode" "$@" <<'PYEOF'
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
dev = 'cuda' if '--device' not in sys.argv else sys.argv[sys.argv.index('--device') + 1]
with torch.autocast(dev.split(':')[0], dtype=torch.bfloat16) if mode == 'bf16' else contextlib.nullcontext():
    bench_segsr.main()
PYEOF
    echo "(exit $?)"
}

if [ "${BENCH:-1}" != 0 ]; then
    common=(--config "${CONFIG:-paper}" --batch 4 --lr-size 64 --device "$DEVICE" --warmup 3 --repeats 5
            --max-repeats 20 --target-spread 0.03)
    bench bf16 "$(capped 100 150)" "${common[@]}" --no-memory --max-seconds 15 2>&1 | tee "$RESULTS/bench_bf16.txt"
    bench bf16 "$(capped 45 120)" "${common[@]}" --profile --repeats 5 --nets segsr 2>&1 \
        | tee "$RESULTS/profile_bf16.txt"
    bench fp32 "$(capped 150 45)" "${common[@]}" --max-seconds 10 --scaling --scaling-sizes 64 \
        --scene "${SCENE:-1024}" --tile 256 --tile-overlap 32 2>&1 | tee "$RESULTS/bench_fp32.txt"
    bench tf32 "$(capped 90 0)" "${common[@]}" --no-memory --max-seconds 10 \
        $([ "${COMPILE:-0}" = 1 ] && echo --compile) 2>&1 | tee "$RESULTS/bench_tf32.txt"
fi

{
    echo "== summary ($SECONDS s)"
    cat "$RESULTS/env.txt"
    [ -f "$RESULTS/pytest_cuda.txt" ] && tail -n 1 "$RESULTS/pytest_cuda.txt"
    for m in bf16 fp32 tf32; do
        [ -f "$RESULTS/bench_$m.txt" ] || continue
        echo "-- $m"
        grep -E '^(precision|config|params|max |checkpointed|case|forward|train|wall|scene|SUMMARY|== |\(exit)' \
            "$RESULTS/bench_$m.txt"
    done
    [ -f "$RESULTS/profile_bf16.txt" ] && { echo "-- bf16 profile"; sed -n '/^== profile/,/^rest/p' "$RESULTS/profile_bf16.txt"; }
} 2>&1 | tee "$RESULTS/summary.txt"
exit "$status"
