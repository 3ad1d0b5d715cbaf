"""Plain-PyTorch references: the ONE ground truth that tests, benchmark baselines and CPU fallbacks import.
Every reference runs in any floating dtype, float64 included, on any device."""
from .causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref
from .gated_rmsnorm import gated_rmsnorm_ref
from .gqa_attention import gqa_attention_ref, quantize_fp8_ref
from .gqa_decode import gqa_decode_ref
from .grouped_gemm import grouped_gemm_ref
from .moe_experts import moe_experts_ref
from .moe_permute import moe_permute_ref, moe_unpermute_ref
from .moe_router import moe_router_ref
from .rmsnorm import rmsnorm_ref
from .ssd_scan import ssd_recurrence_ref, ssd_scan_ref
from .ssd_state_update import ssd_state_update_ref

__all__ = ["causal_conv1d_ref", "causal_conv1d_update_ref", "gated_rmsnorm_ref", "gqa_attention_ref",
           "gqa_decode_ref", "grouped_gemm_ref", "moe_experts_ref", "moe_permute_ref", "moe_router_ref",
           "moe_unpermute_ref", "quantize_fp8_ref", "rmsnorm_ref", "ssd_recurrence_ref", "ssd_scan_ref", "ssd_state_update_ref"]
