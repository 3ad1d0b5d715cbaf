#!/usr/bin/env bash
# One GPU call: Nsight Compute on the grouped GEMV (csrc/moe/moe_gemv_kernel.cu), BF16 against weights-only FP8
# (W8), at two decode shapes: Mamba in_proj M=1 (one group, 10304 x 2688) and the routed up at T=1 (6 of 128
# experts, 1856 x 2688, relu²). W8 streams half BF16's bytes at 1.8-2.3 TB/s where BF16 reaches 3.3 (session 12
# sweep): this shows which bound it sits on (issue #4's "FP8 decode streams half the bytes and must show it").
# Then one token's MoE down projection and weighted sum (moe_decode_down, W8).
# Usage (device tool, carry [".whl"]), from the repository root:  NK_COMMIT=<sha> bash scripts/ncu_gemv.sh
#   NCU_SECTIONS  ncu sections (default: SpeedOfLight Occupancy LaunchStats WarpStateStats MemoryWorkloadAnalysis)
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nk_build_if_missing
sections=$(ncu_sections SpeedOfLight Occupancy LaunchStats WarpStateStats MemoryWorkloadAnalysis)
cat >/tmp/ncu_gemv_driver.py <<'PYEOF'
# Two warm-up rounds, then the profiled one: per shape, the BF16 GEMV and the W8 GEMV at the automatic split.
import sys, torch
sys.path.insert(0, ".")
from nemotron_kernels import _ext
from nemotron_kernels.ops.grouped_gemm import quantize_fp8_rowwise
bf16 = torch.bfloat16
calls = []
for groups, touched, n, k, relu2 in ((1, 1, 10304, 2688, False), (128, 6, 1856, 2688, True)):
    w = torch.randn(groups, n, k, device="cuda", dtype=bf16) / k ** 0.5
    wq, ws = quantize_fp8_rowwise(w.view(-1, k))
    wq, ws = wq.view(groups, n, k), ws.view(groups, n)
    counts = torch.zeros(groups, dtype=torch.int64)
    counts[torch.randperm(groups)[:touched]] = 1
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).int().cuda()
    x = torch.randn(touched, k, device="cuda", dtype=bf16)
    calls.append(lambda x=x, w=w, o=offsets, r=relu2: _ext._C.grouped_gemm_nt(x, w, o, r, 2, 0))
    calls.append(lambda x=x, wq=wq, ws=ws, o=offsets, r=relu2: _ext._C.grouped_gemm_w8_nt(x, wq, ws, o, r, 0))
# One token's MoE down + weighted sum (moe_decode_down), W8.
H, I, Is = 2688, 1856, 3712
down = torch.randn(128, H, I, device="cuda", dtype=bf16) / I ** 0.5
dq, ds = quantize_fp8_rowwise(down.view(-1, I))
sd = torch.randn(H, Is, device="cuda", dtype=bf16) / Is ** 0.5
sdq, sds = quantize_fp8_rowwise(sd)
h = torch.randn(6, I, device="cuda", dtype=bf16)
idx = torch.randperm(128)[:6].int().cuda()[None]
wt = torch.rand(1, 6, device="cuda")
hs = torch.randn(1, Is, device="cuda", dtype=bf16)
calls.append(lambda: _ext._C.moe_decode_down(h, idx, wt, dq.view(128, H, I), ds.view(128, H), hs, sdq, sds, 0))
for i in range(3):
    if i == 2:
        torch.cuda.cudart().cudaProfilerStart()
    for call in calls:
        call()
    torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
PYEOF
ncu --clock-control none --profile-from-start off --kernel-name-base function --kernel-name "regex:grouped_gemv|moe_decode_down" \
  $sections $PY /tmp/ncu_gemv_driver.py >"$OUT/ncu_gemv.txt" 2>&1
echo "ncu rc=$?"
grep -E "^  void .*(grouped_gemv|moe_decode_down)|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Stall|Issued Warp|Eligible|Active Warps Per|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|Grid Size|Waves" \
  "$OUT/ncu_gemv.txt" | head -160
