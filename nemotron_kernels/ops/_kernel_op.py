"""`kernel_op`: torch.library.custom_op for our kernel entries, minus the dispatcher on eager calls.

Every kernel entry is a custom op, so torch.compile traces it (schema + fake tensors) and opcheck can test it. In
eager mode, though, a custom op's dispatch (the Python dispatcher, schema handling, a dynamo-disable wrapper) costs
tens of microseconds of host time per call: 25 us for an empty op, ~90 us of rmsnorm's ~140 us wrapper on the CPU
machine. A training step makes hundreds of these calls while the GPU waits (25% idle at the 1B preset on the
H200, bench/NOTES.md), so eager calls run the implementation directly and only a trace goes through the op.
CUDA graphs capture the kernels either way."""
import functools

import torch


class KernelOp:
    """Calls `fn` directly, or the custom op `op` while torch.compile traces."""

    def __init__(self, op, fn):
        self.op, self._fn = op, fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return self.op(*args, **kwargs)
        return self._fn(*args, **kwargs)

    def register_fake(self, fn):
        return self.op.register_fake(fn)


def kernel_op(name: str, mutates_args=()):
    """Decorator: like torch.library.custom_op(name, mutates_args=...), returning a KernelOp."""
    def wrap(fn):
        return KernelOp(torch.library.custom_op(name, mutates_args=mutates_args)(fn), fn)
    return wrap
