"""Scale-out with torch.distributed: FSDP2 (`fully_shard`) for the dense weights and expert parallelism (EP) for the
MoE layers, NCCL on GPUs and gloo on CPU, launched with torchrun. Every collective is a torch.distributed call.

Layout of W ranks with expert-parallel size ep (W % ep == 0, E % ep == 0):
  * mesh "dp" [W]: every rank reads different data; dense weights are sharded over all W ranks (FSDP2);
  * mesh ("edp", "ep") [W / ep, ep]: rank r holds experts [(r % ep) * E/ep, ...) of every MoE layer; copies of
    the same experts (the "edp" dimension) are sharded among themselves by FSDP2;
  * a MoE layer routes its local tokens, sends each (token, expert) row to the expert's rank with an
    all-to-all, runs the local experts, and sends the outputs back (autograd-aware all-to-all).
All gradient reductions are sums (divide factor 1): each rank's loss is its token-loss sum divided by the global
token count, so the summed gradient is the gradient of the global mean loss.

Shape legend: T local tokens, H hidden, E experts, El = E / ep local experts, k experts per token, R rows received.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU.
    device: "auto" (cuda:LOCAL_RANK if CUDA is available, else cpu), "cpu" or "cuda"."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but no CUDA GPU is visible")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev)


def init_single_process_group(device: torch.device) -> None:
    """A one-rank process group (FSDP2 mixed precision on a single GPU uses the same code path as W > 1)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)


# ---------------------------------------------------------------------------------------------- expert parallelism
class LocalExperts(nn.Module):
    """This rank's slice of a MoE layer's routed experts (a module with a forward, so FSDP2 can manage it)."""

    def __init__(self, up_proj: torch.Tensor, down_proj: torch.Tensor):
        super().__init__()
        self.up_proj = nn.Parameter(up_proj)      # [El, I, H]
        self.down_proj = nn.Parameter(down_proj)  # [El, H, I]

    def forward(self, x: torch.Tensor, local_idx: torch.Tensor, ops) -> torch.Tensor:
        """x [R, H] rows, local_idx [R] expert of each row in [0, El) -> [R, H] expert outputs (unweighted)."""
        ones = torch.ones(x.shape[0], 1, device=x.device, dtype=torch.float32)
        return ops.moe_experts(x, local_idx[:, None].to(torch.int32), ones, self.up_proj, self.down_proj)


class ExpertParallelMoE(nn.Module):
    """Drop-in replacement of a model MoE mixer whose routed experts are split over the ranks of `ep_group`.
    Keeps the MoE's attribute names (gate, experts, shared_experts) so state-dict keys stay the model's."""

    def __init__(self, moe: nn.Module, ep_group, ep_rank: int, ep_size: int):
        super().__init__()
        self.layer_idx, self.top_k, self.scale = moe.layer_idx, moe.top_k, moe.scale
        self.n_group, self.topk_group = moe.n_group, moe.topk_group
        self.gate, self.shared_experts = moe.gate, moe.shared_experts
        E = moe.experts.up_proj.shape[0]
        if E % ep_size:
            raise ValueError(f"expert-parallel size {ep_size} must divide the number of experts {E}")
        self.num_experts, self.num_local = E, E // ep_size
        self.ep_group, self.ep_rank, self.ep_size = ep_group, ep_rank, ep_size
        lo = ep_rank * self.num_local
        self.experts = LocalExperts(moe.experts.up_proj.detach()[lo:lo + self.num_local].clone(),
                                    moe.experts.down_proj.detach()[lo:lo + self.num_local].clone())

    def forward(self, x: torch.Tensor, meta) -> torch.Tensor:
        from torch.distributed._functional_collectives import all_to_all_single_autograd

        ops, k, El = meta.ops, self.top_k, self.num_local
        x2 = x.reshape(-1, x.shape[-1])                                                   # [T, H]
        topk_idx, topk_weight, counts = ops.moe_router(
            x2, self.gate.weight, self.gate.e_score_correction_bias, k, self.scale, self.n_group,
            self.topk_group)                                                              # [T, k], [T, k], [E]
        # dispatch: (token, choice) rows sorted by expert, hence by destination rank
        order = torch.argsort(topk_idx.reshape(-1).long(), stable=True)                  # [T*k]
        token_of_row = order // k                                                         # [T*k]
        send_per_expert = counts.to(torch.int64)                                          # [E]
        recv_per_expert = torch.empty_like(send_per_expert)                               # [ep * El] source-major
        dist.all_to_all_single(recv_per_expert, send_per_expert, group=self.ep_group)
        send_splits = send_per_expert.view(self.ep_size, El).sum(1).tolist()              # host sync (sizes)
        recv_matrix = recv_per_expert.view(self.ep_size, El)                              # [ep, El]
        recv_splits = recv_matrix.sum(1).tolist()
        x_recv = all_to_all_single_autograd(x2[token_of_row], recv_splits, send_splits, self.ep_group)  # [R, H]
        local_idx = torch.repeat_interleave(torch.arange(El, device=x.device).repeat(self.ep_size),
                                            recv_matrix.reshape(-1), output_size=sum(recv_splits))  # [R]
        y_recv = self.experts(x_recv, local_idx, ops)                                     # [R, H]
        y_rows = all_to_all_single_autograd(y_recv, send_splits, recv_splits, self.ep_group)  # [T*k, H]
        # combine in fp32 (as the reference moe_experts), then the shared expert
        w_rows = topk_weight.reshape(-1)[order].to(torch.float32)                         # [T*k]
        routed = torch.zeros(x2.shape, device=x.device, dtype=torch.float32).index_add(
            0, token_of_row, y_rows.float() * w_rows[:, None])                             # [T, H]
        y = routed.to(x.dtype) + self.shared_experts(x2, meta)
        meta.record_routing(x2, self.gate.weight, counts, topk_idx)
        return y.view_as(x)


# ---------------------------------------------------------------------------------------------- meshes + FSDP2
@dataclass
class Parallelism:
    """What `parallelize` did; the loop and the checkpoints need it."""
    info: DistInfo
    ep_size: int = 1
    fsdp: bool = False
    ep_group: object = None
    ep_rank: int = 0
    expert_param_names: tuple[str, ...] = ()   # model state-dict names of EP-split expert weights
    replicated_params: tuple = ()              # kept whole on every rank (fp32 routers under BF16 FSDP)

    @torch.no_grad()
    def sync_replicated_grads(self) -> None:
        """Sums the gradients of the replicated parameters over the ranks (FSDP2 does not manage them)."""
        if self.info.world_size > 1:
            for p in self.replicated_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def parallelize(train_module: nn.Module, model: nn.Module, info: DistInfo, *, ep_size: int = 1,
                param_dtype: torch.dtype | None = None, fsdp: bool | None = None,
                activation_checkpointing: bool = False) -> Parallelism:
    """Applies, in this order: expert parallelism (MoE mixers -> ExpertParallelMoE), activation checkpointing
    (each block recomputed in backward; composable, parameter names unchanged), FSDP2 (the local experts on the
    "edp" mesh, each block, then `train_module` as the root holding embeddings, final norm and lm_head).

    train_module: the module whose forward runs the model and the loss (root FSDP unit); model: the NemotronH
    inside it. param_dtype: FSDP2 compute dtype of the parameters (e.g. bfloat16; masters stay fp32), None = the
    parameters' own. fsdp: default on when distributed or when param_dtype is given."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    W = info.world_size
    if ep_size < 1 or W % ep_size:
        raise ValueError(f"expert-parallel size {ep_size} must divide the world size {W}")
    fsdp = (W > 1 or param_dtype is not None) if fsdp is None else fsdp
    if not fsdp:
        if ep_size > 1:
            raise ValueError("expert parallelism needs the distributed path (fsdp)")
        if activation_checkpointing:
            for block in model.layers:
                checkpoint(block)
        return Parallelism(info)
    if not dist.is_initialized():
        init_single_process_group(info.device)
    dev_type = info.device.type
    dp_mesh = init_device_mesh(dev_type, (W,), mesh_dim_names=("dp",))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    result = Parallelism(info, ep_size=ep_size, fsdp=True)

    # 1. expert parallelism
    edp_mesh = None
    if ep_size > 1:
        mesh2 = init_device_mesh(dev_type, (W // ep_size, ep_size), mesh_dim_names=("edp", "ep"))
        edp_mesh, result.ep_group = mesh2["edp"], mesh2["ep"].get_group()
        result.ep_rank = mesh2["ep"].get_local_rank()
        names = []
        for i, block in enumerate(model.layers):
            if block.kind == "E":
                block.mixer = ExpertParallelMoE(block.mixer, result.ep_group, result.ep_rank, ep_size)
                names += [f"layers.{i}.mixer.experts.up_proj", f"layers.{i}.mixer.experts.down_proj"]
        result.expert_param_names = tuple(names)
    # 2. activation checkpointing
    if activation_checkpointing:
        for block in model.layers:
            checkpoint(block)
    # 3. FSDP2: local experts (over edp), blocks (over dp), then the root. With a low-precision param_dtype the
    #    router weights stay out of FSDP (whole fp32 copies on every rank, gradients summed by
    #    sync_replicated_grads), so routing runs on fp32 weights as the checkpoint stores them.
    if param_dtype is not None and param_dtype.itemsize < 4:
        result.replicated_params = tuple(b.mixer.gate.weight for b in model.layers if b.kind == "E")
    ignored = set(result.replicated_params) or None
    #    On one rank there is nothing to free by resharding after the forward: the blocks keep their compute-dtype
    #    copies until their backward instead of casting / gathering every parameter a second time.
    reshard = W > 1
    for block in model.layers:
        if ep_size > 1 and block.kind == "E":
            fully_shard(block.mixer.experts, mesh=edp_mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, ignored_params=ignored, reshard_after_forward=reshard)
    fully_shard(train_module, mesh=dp_mesh, mp_policy=mp, ignored_params=ignored)
    for m in train_module.modules():
        if isinstance(m, FSDPModule):  # plain sums (no PREMUL_SUM, which gloo lacks; no extra scaling on NCCL)
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return result


# ---------------------------------------------------------------------------------------------- helpers
def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def clip_grad_norm_(params, max_norm: float, par: Parallelism) -> torch.Tensor:
    """Scales gradients so their global L2 norm is at most max_norm (max_norm <= 0: no clipping); returns the norm
    before clipping, an fp32 scalar on the device. With FSDP2 / EP every sharded gradient element lives on exactly
    one rank, so their norm is the all-reduced sum of the local squared norms; replicated ones count once."""
    replicated = {id(p) for p in par.replicated_params}
    sharded = [_local(p.grad) for p in params if p.grad is not None and id(p) not in replicated]
    whole = [p.grad for p in params if p.grad is not None and id(p) in replicated]
    grads = sharded + whole
    if not grads:
        return torch.zeros((), device=par.info.device)

    def sum_sq(ts):
        if not ts:
            return torch.zeros((), device=par.info.device)
        return torch.stack([n.float() for n in torch._foreach_norm(ts, 2.0)]).square().sum()

    total_sq = sum_sq(sharded)
    if par.fsdp and par.info.world_size > 1:
        dist.all_reduce(total_sq, op=dist.ReduceOp.SUM)
    total = (total_sq + sum_sq(whole)).sqrt()         # replicated gradients are equal on every rank: count once
    if max_norm > 0:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, coef)
    return total


def all_reduce_sum(t: torch.Tensor, par: Parallelism) -> torch.Tensor:
    if par.fsdp and par.info.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def full_state_dict(model: nn.Module, par: Parallelism) -> dict[str, torch.Tensor] | None:
    """The model's state dict with whole tensors on CPU, in the unparallelised model's layout, on rank 0
    (None on the other ranks). Collective: every rank must call it."""
    from torch.distributed.tensor import DTensor

    out = {} if par.info.is_main else None
    for name, t in model.state_dict().items():
        if isinstance(t, DTensor):
            t = t.full_tensor()
        if name in par.expert_param_names:
            pieces = [torch.empty_like(t) for _ in range(par.ep_size)]
            dist.all_gather(pieces, t.contiguous(), group=par.ep_group)
            t = torch.cat(pieces, 0)
        if out is not None:
            out[name] = t.detach().to("cpu", copy=True)
    return out
