#!/usr/bin/env bash
# The checks that need a GPU, as one command: the GPU tests, then SQG forecast speed on the
# device against sqgturb's algorithm on the CPU, and ViT training speed of the kit's model
# against the paper code's model, both on the device; each in one run with its baseline.
#
#   OUT=device_checks bash benchmarks/device_checks.sh          # a machine with a CUDA/ROCm GPU
#   DEVICE=cpu QUICK=1 OUT=tmp bash benchmarks/device_checks.sh  # the same steps on the CPU, tiny
#
# Environment: PYTHON (default python3: the interpreter that holds a GPU build of torch),
# DEVICE (default cuda), OUT (default device_checks: logs and JSON summaries land there),
# QUICK=1 (tiny sizes: the rehearsal the test suite runs). Sized to end well inside 10
# minutes (not yet timed on a GPU; the longest part should be the NumPy baseline at
# N = 256 on the host). Every step runs even when an earlier one fails; the exit status is
# 0 only when all passed, 2 when the device is not there.
set -uo pipefail
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-device_checks}
QUICK=${QUICK:-0}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the steps run from the repository root
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1

"$PY" - "$DEVICE" <<'PYEOF' || exit 2
import sys
import torch
device = torch.device(sys.argv[1])
if device.type != "cpu" and not torch.cuda.is_available():
    sys.exit(f"device_checks: DEVICE={sys.argv[1]} but torch {torch.__version__} sees no GPU; "
             "DEVICE=cpu QUICK=1 rehearses the steps on the CPU")
name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
print(f"device_checks: torch {torch.__version__} on {device} ({name})")
PYEOF

failed=()
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, report
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "   ok ($((SECONDS - start)) s)"
    else
        echo "   FAILED (exit $rc, $((SECONDS - start)) s): the end of $OUT/$name.log"
        tail -n 25 "$OUT/$name.log"
        failed+=("$name")
    fi
}

if [ "$DEVICE" = cpu ]; then
    # the rehearsal: the device-parametrised tests' CPU cases of one module
    step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_metrics.py \
        tests/models/test_sqg.py -k "device and cpu"
else
    # every test marked gpu or parametrised over devices, on the GPU, from the modules
    # that hold such tests (a module whose imports the device's image lacks shows in the
    # log as a collection error; the others still run)
    mapfile -t modules < <(grep -rlE "available_devices|mark\.gpu|def test_[a-z0-9_]*\([^)]*\bdevice\b" \
        tests --include='test_*.py' | sort)
    step tests "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
        -k "cuda or gpu" "${modules[@]}"
fi
if [ "$QUICK" = 1 ]; then
    sqg=(--sizes 16 --members 4 --hours 0.2 --repeats 1)
    vit=(--preset tiny --batch 2 --rounds 1 --steps 1 --warmup 1)
else
    sqg=(--sizes 64,128,256 --members 20 --hours 3 --repeats 3)
    vit=(--rounds 3 --steps 5 --warmup 2 --fused-adamw)
fi
step bench_models "$PY" benchmarks/bench_models.py --device "$DEVICE" --threads 1 "${sqg[@]}" \
    --json "$OUT/bench_models.json"
step bench_vit "$PY" benchmarks/bench_vit.py --device "$DEVICE" --threads 1 "${vit[@]}" \
    --json "$OUT/bench_vit.json"

if [ ${#failed[@]} -gt 0 ]; then
    echo "device_checks: FAILED: ${failed[*]} (logs in $OUT)"
    exit 1
fi
echo "device_checks: all passed (logs and summaries in $OUT)"
