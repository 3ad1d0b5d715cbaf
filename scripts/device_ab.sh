#!/usr/bin/env bash
# One GPU call, an A/B: build this tree and an older commit side by side and run the same command under each, so
# a kernel change is measured against its predecessor on one machine, in one run. Logs in $OUT.
# The GPU machine's copy of .git can be older than this checkout (session 13: `git archive` found no f92cd0e
# there), so extract the old tree here first, into .whl/ (carried, ignored by git):
#   bash scripts/device_ab.sh --prepare OLD_COMMIT                     # CPU machine
# then (device tool, carry [".whl"]):
#   bash scripts/device_ab.sh OLD_COMMIT python3 scripts/sweep_gemv_split.py
#   The command runs from each tree's root, with that tree first on PYTHONPATH. A script the old tree lacks runs
#   from this tree by its absolute path and still imports the old tree's code:
#     bash scripts/device_ab.sh 768bc30 python3 $PWD/scripts/bench_quantize.py
# Without a prepared tree the old commit is taken from the machine's .git, if it has it.
# Several old commits, comma-separated (each prepared): the command runs under this tree, then each of them in
# order (an A/B/C/D of a patch chain in one call); each old side runs with NK_COMMIT set to its own commit.
# AB_BUILD=0 skips both extension builds (~140 s): for A/Bs of Triton kernels (the SSD scan, attention), whose
# benchmarks import the package without its C++ extension.
set -uo pipefail
if [ "${1:-}" = "--prepare" ]; then
  old=${2:?usage: device_ab.sh --prepare OLD_COMMIT}
  dir=.whl/ab-$old
  rm -rf "$dir" && mkdir -p "$dir" && git archive "$old" | tar -x -C "$dir" || exit 1
  echo "prepared $dir ($(du -sh "$dir" | cut -f1)); carry [\".whl\"] on the device call"
  exit 0
fi
source "$(dirname "$0")/device_env.sh"
olds=${1:?usage: device_ab.sh OLD_COMMIT[,OLD_COMMIT...] COMMAND...}
shift
[ $# -gt 0 ] || { echo "usage: device_ab.sh OLD_COMMIT[,OLD_COMMIT...] COMMAND..."; exit 2; }
root=$PWD
IFS=, read -r -a old_list <<<"$olds"

t0=$(date +%s)
if [ "${AB_BUILD:-1}" != 0 ]; then
  nk_build "$OUT/build_new.log" || { echo "(this tree)"; exit 1; }
fi
for old in "${old_list[@]}"; do
  old_dir=$root/.whl/ab-$old
  if [ ! -f "$old_dir/setup.py" ]; then
    rm -rf "$old_dir" && mkdir -p "$old_dir"
    if ! git archive "$old" 2>/dev/null | tar -x -C "$old_dir" 2>/dev/null; then
      echo "no commit $old in this machine's clone: run 'bash scripts/device_ab.sh --prepare $old' on the CPU machine"
      exit 1
    fi
  fi
  if [ "${AB_BUILD:-1}" != 0 ] && ! (cd "$old_dir" && MAX_JOBS=${MAX_JOBS:-16} $PY setup.py build_ext --inplace \
                                     >"$OUT/build_old-$old.log" 2>&1); then
    tail -40 "$OUT/build_old-$old.log"; echo "BUILD FAILED: $old"; exit 1
  fi
done
echo "builds: $(( $(date +%s) - t0 )) s"

echo "== new: $(git rev-parse --short HEAD 2>/dev/null)${NK_COMMIT:+ (NK_COMMIT $NK_COMMIT)}" | tee "$OUT/ab_new.log"
PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} "$@" 2>&1 | tee -a "$OUT/ab_new.log"
for old in "${old_list[@]}"; do
  old_dir=$root/.whl/ab-$old
  log=$OUT/ab_old.log
  [ ${#old_list[@]} -gt 1 ] && log=$OUT/ab_old-$old.log
  echo "== old: $old" | tee "$log"
  (cd "$old_dir" && NK_COMMIT=$old PYTHONPATH=$old_dir${PYTHONPATH:+:$PYTHONPATH} "$@" 2>&1) | tee -a "$log"
done
