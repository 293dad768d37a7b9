"""ONNX: torch.onnx.export(model, (x,), dynamo=True) of quadnet's models, run by onnxruntime.

The exporter decomposes quadnet's ops into ATen ops (python/quadnet/_decompositions.py: each op's
own ATen composition), so the ONNX graph holds standard operators only and the runtime needs
nothing of quadnet."""
import onnxruntime
import pytest
import torch

import quadnet


def _polynomial_convnet():
    return torch.nn.Sequential(
        quadnet.nn.PolynomialConvBlock(1, 4, 3, rank=3, padding=1, norm=True, pool=2),
        quadnet.nn.PolynomialConvBlock(4, 6, 3, rank=4, padding=1, norm=True, pool=2),
        torch.nn.Flatten(), torch.nn.Linear(6 * 7 * 7, 10))


MODELS = {
    "QuadraticLayer": (lambda: quadnet.nn.QuadraticLayer(20, 3, 4), (16, 20)),
    "DeepPolynomialNet": (lambda: quadnet.nn.DeepPolynomialNet([20, 12, 3], ranks=[5, 4], norm=True), (16, 20)),
    "polynomial convnet": (_polynomial_convnet, (4, 1, 28, 28)),
}


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_with_a_dynamic_batch_matches_eager_in_onnxruntime(name, tmp_path):
    make, shape = MODELS[name]
    model = make().eval()
    program = torch.onnx.export(model, (torch.randn(*shape),), dynamo=True,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    domains = {node.domain for node in program.model_proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # standard operators only: no quadnet at run time
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows in (shape[0], 3, 1):  # the batch size is dynamic in the ONNX graph
        x = torch.randn(rows, *shape[1:])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-5)


def test_the_decompositions_are_the_ops_own_compositions():
    """Each registered decomposition computes what the op computes (its CompositeExplicitAutograd
    kernel), including on the CPU where quadratic_features has a tiled kernel of its own."""
    from torch._decomp import decomposition_table
    h, S = torch.randn(300, 6, dtype=torch.float64), torch.randn(4, 6, 6, dtype=torch.float64)
    op = torch.ops.quadnet.quadratic_features.default
    torch.testing.assert_close(decomposition_table[op](h, S), op(h, S))
    x, W = torch.randn(7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    S3 = torch.randn(2, 3, 3, dtype=torch.float64)
    op = torch.ops.quadnet.quadratic_form.default
    torch.testing.assert_close(decomposition_table[op](x, W, S3), op(x, W, S3))
