#!/usr/bin/env bash
# One GPU call: Nsight Compute on ssd_scan's kernels, ours and mamba_ssm's, forward and backward at B1 L32K
# (Nemotron's H=64, P=64, G=8, N=128, chunk 128): throughput against the card's peaks, occupancy, registers,
# and where warps stall — to see which bound each kernel sits on before rewriting it (issue #3).
# Usage (device tool, carry [".whl"]), from the repository root:  NK_COMMIT=<sha> bash scripts/ncu_ssd.sh
#   NCU_SECTIONS  ncu sections (default: SpeedOfLight Occupancy LaunchStats WarpStateStats)
#   NCU_KERNELS   kernel-name regex (default: every SSD kernel of both)
#   NCU_METRICS   extra --metrics, e.g. 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' (the
#                 stall reasons, in warps per issued instruction)
# Both sides are Triton: no extension build.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
sections=$(ncu_sections SpeedOfLight Occupancy LaunchStats WarpStateStats)
metrics=${NCU_METRICS:+--metrics $NCU_METRICS}
cat >/tmp/ncu_ssd_driver.py <<'PYEOF'
# Two warm-up calls (Triton compiles, autotunes), then the profiled one: the bench's fwd+bwd step of both.
import sys, torch
sys.path.insert(0, ".")
from bench.bench_ssd_scan import _input_maker, _mamba_fwd_bwd, _ours_fwd_bwd, _with_grad
from bench._mamba_ssm import load_mamba_ssm
s = _with_grad(_input_maker(1, 32768, torch.device("cuda"))(0))
ssd_combined, = load_mamba_ssm("ssd_combined")
for i in range(3):
    if i == 2:
        torch.cuda.cudart().cudaProfilerStart()
    for step in (_ours_fwd_bwd, _mamba_fwd_bwd(ssd_combined)):
        step(s)
    torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
PYEOF
ncu --clock-control none --profile-from-start off --kernel-name-base function \
  --kernel-name "regex:${NCU_KERNELS:-_ssd_|_chunk_|_state_passing|_bmm_chunk}" $sections $metrics \
  $PY /tmp/ncu_ssd_driver.py >"$OUT/ncu_ssd.txt" 2>&1
echo "ncu rc=$?"
grep -E "^  _|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Block Limit Reg|Stall|stalled|Warp Cycles Per" \
  "$OUT/ncu_ssd.txt" | head -150
