#!/usr/bin/env bash
# One GPU call: why a ValueError raised inside `_C` kills the process (SIGSEGV) on the H200's torch 2.11 while
# TypeError translates (bench/NOTES.md). Prints the compiler, which library binds the ValueError type info, and
# the native backtrace of the crash (no gdb there: scripts/segv_backtrace.c, preloaded, prints each frame's library
# and offset; addr2line names them). Usage (device tool, carry [".whl"]): bash scripts/probe_valueerror.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nk_build_if_missing
g++ --version | head -1; which gdb || echo "no gdb"
cat >/tmp/probe_ve.py <<'PYEOF'
import faulthandler, torch
faulthandler.enable()
from nemotron_kernels import _ext
x, idx = torch.randn(4, 8, device="cuda"), torch.zeros(4, 2, dtype=torch.int32, device="cuda")
try:
    _ext._C.moe_permute(x, idx.long(), 4, 1, None)
except TypeError as e:
    print("TypeError translated:", str(e).splitlines()[0])
try:
    _ext._C.moe_permute(x, idx, 5000, 1, None)
except ValueError as e:
    print("ValueError translated:", str(e).splitlines()[0])
PYEOF
$PY /tmp/probe_ve.py 2>&1 | tail -25; echo "rc=${PIPESTATUS[0]}"
so=$($PY -c "import nemotron_kernels._C as m; print(m.__file__)")
echo "--- typeinfo symbols of ValueError in _C:"; nm -DC "$so" | grep -i "valueerror" | head
echo "--- LD_DEBUG bindings:"; LD_DEBUG=bindings $PY /tmp/probe_ve.py 2>&1 | grep -iE "ValueError|value_error" | sed 's/^ *[0-9]*: *//' | sort | uniq | head -20
echo "--- native stack of the crash:"
gcc -shared -fPIC -O1 -o /tmp/segv_backtrace.so scripts/segv_backtrace.c -ldl
LD_PRELOAD=/tmp/segv_backtrace.so $PY /tmp/probe_ve.py 2>&1 | grep "^FRAME" | while read -r _ i lib off sym; do
  printf '%s %s %s %s\n' "$i" "$(basename "$lib")" "$off" \
    "$(addr2line -f -C -e "$lib" "$off" 2>/dev/null | head -1 | cut -c1-160) [$sym]"
done
if which gdb >/dev/null; then
  gdb -batch -ex run -ex bt -ex "info sharedlibrary" --args $PY /tmp/probe_ve.py 2>&1 | grep -vE "^\[(New|Thread)" | head -60
fi
