#!/usr/bin/env bash
# One GPU call: build the extension with the machine's torch, run the GPU tests and the benchmarks, and leave
# logs in $OUT. Usage (device tool, carry [".whl"]):  bash scripts/device_check.sh [op ...]
#   PYTEST_TARGETS  test files / folders to run the `cuda` tests of (default: tests)
#   PYTEST_ARGS  extra pytest arguments
#   Run from the repository root (not a copy) on consecutive calls: the ignored build/ folder stays on a warm
#   machine, so the rebuild is incremental; pass NK_COMMIT=<sha> (the device copy may sit in a stale clone).
#   BENCH_ARGS   arguments for `python -m bench` (default: --quick, or the ops given on the command line)
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
echo "tree: ${NK_COMMIT:-not given (pass NK_COMMIT=<sha>)}" | tee -a "$OUT/gpu.txt"

t0=$(date +%s)
# Keep going on a failed build: the Triton kernels and references need no extension; tests that do fail visibly.
nk_build "$OUT/build.log" || echo "(continuing with the tests that do not need _C)"
echo "build: $(( $(date +%s) - t0 )) s"
$PY -c "import json, nemotron_kernels as nk; print(json.dumps(nk.backends(), indent=1))" 2>&1 | tee "$OUT/backends.txt"

$PY -m pytest -q -m cuda ${PYTEST_TARGETS:-tests} ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest_cuda.log" | tail -40
if [ $# -gt 0 ]; then BENCH_ARGS=${BENCH_ARGS:-"$*"}; fi
$PY -m bench ${BENCH_ARGS:---quick} 2>&1 | tee "$OUT/bench.log"
tar czf "$OUT/results.tgz" bench/results 2>/dev/null
exit 0
