#!/usr/bin/env bash
# One GPU call for the end-to-end figures of issues #6 and #7, after device_check.sh built the extension on the
# same warm machine (or builds it here): the 1b training preset with our kernels and with the reference ops
# (no profiler: the profiler slows the host), and the serving bench. Logs and metrics land in $OUT.
#   TRAIN_STEPS  steps per training run (default 12; the first few compile and warm up)
#   SERVE_ARGS   arguments for `python -m bench serve` (default --quick); BENCH_SERVE_* variables pass through
#   SKIP_TRAIN=1 / SKIP_SERVE=1 leave a part out
# Usage (device tool, carry [".whl"]), from the repository root:  NK_COMMIT=<sha> bash scripts/device_e2e.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nk_build_if_missing

if [ "${SKIP_TRAIN:-0}" = 0 ]; then
  steps=${TRAIN_STEPS:-12}
  for backend in kernels reference; do
    # the reference ops hold more activations: the preset's 8 rows run out of the H200's memory there, so they
    # take the same 32K tokens per step as 4 rows x 2 accumulation steps
    rows=""; [ "$backend" = reference ] && rows="--batch-rows 4 --grad-accum 2"
    timeout 200 $PY -m training.pretrain --preset 1b --device cuda --backend "$backend" --steps 1000 $rows \
      --stop-at-step "$steps" --out "/tmp/train-$backend" --no-progress >"$OUT/train_$backend.log" 2>&1
    echo "train 1b [$backend] rc=$?: $(tail -1 "$OUT/train_$backend.log")"
    # the last training rows: tokens/s and MFU of warm steps
    grep '"kind": "train"' "/tmp/train-$backend/metrics.jsonl" 2>/dev/null | tail -3 >"$OUT/train_${backend}_metrics.jsonl"
    $PY - "$OUT/train_${backend}_metrics.jsonl" "$backend" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    print(f"  {sys.argv[2]:9s} step {r['step']:3d}: {r['tokens_per_s']:,.0f} tok/s, MFU {100 * (r['mfu'] or 0):.1f}%,"
          f" {r['tokens']} tokens/step")
EOF
  done
fi

if [ "${SKIP_SERVE:-0}" = 0 ]; then
  timeout 540 $PY -m bench serve ${SERVE_ARGS:---quick} 2>&1 | tee "$OUT/serve.log" | grep -E "^\s+(prefill|decode|serve)|^\|" 
fi
tar czf "$OUT/results.tgz" bench/results 2>/dev/null
exit 0
