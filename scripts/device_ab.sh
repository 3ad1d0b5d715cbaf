#!/usr/bin/env bash
# One GPU call, an A/B: build this tree and an older commit side by side and run the same command under each, so
# a kernel change is measured against its predecessor on one machine, in one run. Logs in $OUT.
# Usage (device tool, carry [".whl"]):  bash scripts/device_ab.sh OLD_COMMIT python3 scripts/sweep_gemv_split.py
#   The command runs from each tree's root, with that tree first on PYTHONPATH. A script the old tree lacks runs
#   from this tree by its absolute path and still imports the old tree's code:
#     bash scripts/device_ab.sh 768bc30 python3 $PWD/scripts/bench_quantize.py
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
old=${1:?usage: device_ab.sh OLD_COMMIT COMMAND...}
shift
[ $# -gt 0 ] || { echo "usage: device_ab.sh OLD_COMMIT COMMAND..."; exit 2; }
root=$PWD
old_dir=$root/.whl/ab-$old

t0=$(date +%s)
nk_build "$OUT/build_new.log" || { echo "(this tree)"; exit 1; }
rm -rf "$old_dir" && mkdir -p "$old_dir"
if ! git archive "$old" | tar -x -C "$old_dir"; then echo "no commit $old in this clone"; exit 1; fi
if ! (cd "$old_dir" && MAX_JOBS=${MAX_JOBS:-16} $PY setup.py build_ext --inplace >"$OUT/build_old.log" 2>&1); then
  tail -40 "$OUT/build_old.log"; echo "BUILD FAILED: $old"; exit 1
fi
echo "builds: $(( $(date +%s) - t0 )) s"

echo "== new: $(git rev-parse --short HEAD 2>/dev/null)${NK_COMMIT:+ (NK_COMMIT $NK_COMMIT)}" | tee "$OUT/ab_new.log"
PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} "$@" 2>&1 | tee -a "$OUT/ab_new.log"
echo "== old: $old" | tee "$OUT/ab_old.log"
(cd "$old_dir" && PYTHONPATH=$old_dir${PYTHONPATH:+:$PYTHONPATH} "$@" 2>&1) | tee -a "$OUT/ab_old.log"
