"""kernel_op: eager calls run the implementation without the custom-op dispatcher; torch.compile still sees the
registered custom op (schema + fake), and torch.ops has it for opcheck."""
import torch

from nemotron_kernels.ops._kernel_op import KernelOp, kernel_op


@kernel_op("nemotron_kernels_test::scale_by_two", mutates_args=())
def scale_by_two(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@scale_by_two.register_fake
def _(x):
    return torch.empty_like(x)


def test_eager_call_runs_the_implementation_directly(monkeypatch):
    x = torch.randn(5)
    assert isinstance(scale_by_two, KernelOp) and scale_by_two.__name__ == "scale_by_two"

    def no_dispatch(*args, **kwargs):
        raise AssertionError("the eager call went through the custom op")

    monkeypatch.setattr(scale_by_two, "op", no_dispatch)
    assert torch.equal(scale_by_two(x), x * 2)


def test_compile_traces_the_custom_op():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(5)
    compiled = torch.compile(lambda t: scale_by_two(t) + 1, backend=backend, fullgraph=True)
    assert torch.equal(compiled(x), x * 2 + 1)
    targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert any("nemotron_kernels_test.scale_by_two" in t for t in targets), targets


def test_registered_for_opcheck():
    torch.library.opcheck(torch.ops.nemotron_kernels_test.scale_by_two.default, (torch.randn(4),),
                          test_utils=("test_schema", "test_faketensor"))
