#!/usr/bin/env bash
# GPU check in one command (issue 13): the CUDA tests on a real device, the kernels' and
# occlusion's benchmarks on CUDA, and one JSON of figures: $OUT/gpu-check.json.
#
#   OUT=/some/dir bash scripts/gpu_check.sh      # default OUT: ./gpu-check
#
# Budget: under 8 minutes on one GPU (each step has its own timeout, and the summary is written
# whatever the steps return). Works offline: wheels the machine lacks (PyAV, Captum) are taken
# from ./.whl if present (see /work/.library/device/README.md for how they are fetched), and the
# package is installed from the checkout into a scratch site-packages (python -P keeps the
# checkout's source tree, which lacks fastviz.kernels, off sys.path) without touching the
# machine's own.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
SITE=$(mktemp -d /tmp/fastviz-site.XXXXXX)
export PYTHONUNBUFFERED=1
start=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . \
    || { echo "gpu_check: installing fastviz from the checkout failed" >&2; exit 1; }
# numba-cuda releases before numpy 2.5 call numpy.row_stack, which numpy 2.5 removed.
cat > "$SITE/sitecustomize.py" <<'PY'
import numpy
if not hasattr(numpy, "row_stack"):
    numpy.row_stack = numpy.vstack
PY
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
python3 -P -c "import torch, fastviz; assert torch.cuda.is_available(), 'no CUDA device'; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" \
    || exit 1

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $OUT/NAME.log, record rc
    local name=$1 secs=$2; shift 2
    local t0=$(date +%s)
    timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $(( $(date +%s) - t0 ))" >>"$OUT/steps.txt"
    echo "gpu_check: $name rc=$rc ($(( $(date +%s) - t0 )) s)"
    tail -3 "$OUT/$name.log"
}
: >"$OUT/steps.txt"
# 1. CUDA tests (real device: the kernels' "cuda" backend, incremental occlusion on CUDA)
step tests 200 python3 -P -m pytest -q -p no:cacheprovider tests/kernels tests/test_incremental.py \
    tests/test_occlusion.py tests/test_visual_backprop.py --junitxml="$OUT/tests.xml"
# 2. the kernels' benchmarks on CUDA
step kernels 100 python3 -P -m pytest -q -p no:cacheprovider benchmarks/test_bench_kernel_masking.py \
    benchmarks/test_bench_kernel_scoring.py benchmarks/test_bench_kernel_vbp.py benchmarks/test_bench_kernel_patches.py \
    -k "cuda" --benchmark-max-time=0.2 --benchmark-json="$OUT/kernels.json"
# 3. occlusion: incremental vs full vs Captum vs the plain loop, approximate modes with SSIM
step occlusion 150 python3 -P -m pytest -q -s -p no:cacheprovider benchmarks/test_bench_incremental.py -k "cuda" \
    --benchmark-json="$OUT/incremental.json"
python3 scripts/gpu_summary.py "$OUT" >"$OUT/summary.log" 2>&1 || cat "$OUT/summary.log"
echo "gpu_check: $(( $(date +%s) - start )) s in all; figures in $OUT/gpu-check.json"
