"""`derived(t, tag, key, make)`: a value computed from a tensor, kept on that tensor for the next call.

The model passes one cu_seqlens tensor to every layer of a step (23 Mamba layers in Nano); what the ops derive from
it (ssd_scan's chunk table: ~35 small kernels; causal_conv1d's token -> sequence map) is the same each time. The
value lives on the tensor object itself, so it goes with it; it is made again when the tensor changed in place
(its version counter), for another key or CUDA stream, and never kept during CUDA-graph capture (graph memory)."""
import torch


def derived(t: torch.Tensor, tag: str, key: tuple, make):
    stream = torch.cuda.current_stream(t.device) if t.is_cuda else None
    if stream is not None and torch.cuda.is_current_stream_capturing():
        return make()
    full_key = (t._version, stream, *key)
    attr = f"_nk_{tag}"
    kept = getattr(t, attr, None)
    if kept is None or kept[0] != full_key:
        kept = (full_key, make())
        setattr(t, attr, kept)
    return kept[1]
