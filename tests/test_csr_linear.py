"""csr_linear equals the masked dense layer F.linear(x, weight * mask, bias): outputs and gradients."""
import pytest
import torch
import torch.nn.functional as F

from gsparse.kernels import CSRStructure, SparseKernelUnavailable, csr_linear, csr_supported


def _mask(kind: str, rows: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "empty":
        return torch.zeros(rows, columns, dtype=torch.bool)
    if kind == "full":
        return torch.ones(rows, columns, dtype=torch.bool)
    if kind == "one_per_row":
        mask = torch.zeros(rows, columns, dtype=torch.bool)
        mask[torch.arange(rows), torch.randint(0, columns, (rows,), generator=generator)] = True
        return mask
    if kind == "empty_rows":  # every other row has no active weight
        mask = torch.rand(rows, columns, generator=generator) < 0.5
        mask[::2] = False
        return mask
    return torch.rand(rows, columns, generator=generator) < 0.3


KINDS = ["empty", "full", "one_per_row", "empty_rows", "random"]
SHAPES = [(7, 5), (1, 9), (9, 1), (13, 11)]


def compare_with_masked_dense(mask, leading, product, dtype=torch.float64, atol=1e-12, rtol=None,
                              dense_weight_grad=False, with_bias=True):
    """``product(inputs, weight, bias)`` (a sparse linear kernel) against ``F.linear`` with the masked
    weight: output, input and bias gradients, and the weight gradient (sampled at the mask, or dense
    with ``dense_weight_grad``), on seeded random data; returns the kernel's weight gradient. Also
    used by tests/test_bsr_linear.py. ``rtol`` defaults to ``atol``."""
    rtol = atol if rtol is None else rtol
    generator = torch.Generator().manual_seed(1)
    rows, columns = mask.shape
    weight = (torch.randn(rows, columns, generator=generator, dtype=dtype) * mask).requires_grad_()
    bias = torch.randn(rows, generator=generator, dtype=dtype).requires_grad_() if with_bias else None
    inputs = torch.randn(*leading, columns, generator=generator, dtype=dtype).requires_grad_()
    grad_output = torch.randn(*leading, rows, generator=generator, dtype=dtype)

    output = product(inputs, weight, bias)
    output.backward(grad_output)
    sparse_grads = [inputs.grad, weight.grad] + ([bias.grad] if with_bias else [])
    inputs.grad = weight.grad = None
    if with_bias:
        bias.grad = None

    expected = F.linear(inputs, weight * mask, bias)
    expected.backward(grad_output)
    assert output.shape == expected.shape
    torch.testing.assert_close(output, expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(sparse_grads[0], inputs.grad, atol=atol, rtol=rtol)
    full_weight_grad = (grad_output.reshape(-1, rows).t() @ inputs.detach().reshape(-1, columns))
    torch.testing.assert_close(sparse_grads[1], full_weight_grad if dense_weight_grad else full_weight_grad * mask,
                               atol=atol, rtol=rtol)
    if with_bias:
        torch.testing.assert_close(sparse_grads[2], bias.grad, atol=atol, rtol=rtol)
    return sparse_grads[1]


def _compare(mask, dtype, leading, atol, dense_weight_grad=False, with_bias=True):
    structure = CSRStructure.from_mask(mask)
    return compare_with_masked_dense(
        mask, leading, lambda inputs, weight, bias: csr_linear(inputs, weight, bias, structure,
                                                               dense_weight_grad=dense_weight_grad),
        dtype, atol, dense_weight_grad=dense_weight_grad, with_bias=with_bias)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_masked_dense(kind, shape):
    generator = torch.Generator().manual_seed(0)
    weight_grad = _compare(_mask(kind, *shape, generator), torch.float64, leading=(6,), atol=1e-12)
    assert weight_grad.shape == shape


@pytest.mark.parametrize("kind", KINDS)
def test_float32_3d_inputs_match_masked_dense(kind):
    generator = torch.Generator().manual_seed(2)
    _compare(_mask(kind, 13, 11, generator), torch.float32, leading=(2, 3), atol=1e-5)


def test_1d_input_and_no_bias():
    generator = torch.Generator().manual_seed(3)
    _compare(_mask("random", 5, 4, generator), torch.float64, leading=(), atol=1e-12, with_bias=False)


def test_empty_batch():
    mask = torch.tensor([[True, False], [False, True], [True, True]])
    _compare(mask, torch.float64, leading=(0,), atol=0)


def test_hand_computed_values():
    mask = torch.tensor([[True, True, False], [False, False, True]])
    weight = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    bias = torch.tensor([0.5, -1.0], requires_grad=True)
    inputs = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]], requires_grad=True)
    output = csr_linear(inputs, weight, bias, CSRStructure.from_mask(mask))
    assert output.tolist() == [[3.5, 2.0], [2.5, 2.0]]
    output.backward(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    # dW = dY^T X at active entries: row 0 = [1, 1, 1], row 1 = [4, 0, 2]
    assert weight.grad.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    assert inputs.grad.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 6.0]]
    assert bias.grad.tolist() == [1.0, 2.0]


def test_sampled_weight_grad_is_exactly_zero_at_inactive_entries():
    generator = torch.Generator().manual_seed(4)
    mask = _mask("random", 13, 11, generator)
    weight_grad = _compare(mask, torch.float32, leading=(8,), atol=1e-5)
    assert torch.count_nonzero(weight_grad[~mask]) == 0
    assert torch.count_nonzero(weight_grad[mask]) == int(mask.sum())


def test_dense_weight_grad_is_the_full_product():
    generator = torch.Generator().manual_seed(5)
    mask = _mask("random", 13, 11, generator)
    weight_grad = _compare(mask, torch.float64, leading=(2, 4), atol=1e-12, dense_weight_grad=True)
    assert torch.count_nonzero(weight_grad[~mask]) == int((~mask).sum())


def test_inactive_entries_are_never_read():
    mask = torch.tensor([[True, False], [False, True]])
    weight = torch.tensor([[2.0, float("nan")], [float("inf"), 3.0]], requires_grad=True)
    inputs = torch.tensor([[1.0, 10.0]], requires_grad=True)
    output = csr_linear(inputs, weight, None, CSRStructure.from_mask(mask))
    output.backward(torch.ones_like(output))
    assert output.tolist() == [[2.0, 30.0]]
    assert inputs.grad.tolist() == [[2.0, 3.0]]
    assert weight.grad.tolist() == [[1.0, 0.0], [0.0, 10.0]]


def test_input_gradient_skipped_when_input_needs_none(monkeypatch):
    def no_transpose(self, values):
        raise AssertionError("the input gradient was computed")

    monkeypatch.setattr(CSRStructure, "transposed_matrix", no_transpose)
    mask = torch.tensor([[True, False, True]])
    weight = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    inputs = torch.tensor([[3.0, 4.0, 5.0]])
    csr_linear(inputs, weight, None, CSRStructure.from_mask(mask)).sum().backward()
    assert weight.grad.tolist() == [[3.0, 0.0, 5.0]]
    assert inputs.grad is None


def test_structure_indices_by_hand():
    mask = torch.tensor([[False, True, True], [True, False, False]])
    structure = CSRStructure.from_mask(mask)
    assert structure.shape == (2, 3) and structure.nnz == 3 and structure.density == 0.5
    assert structure.crow_indices.tolist() == [0, 2, 3] and structure.col_indices.tolist() == [1, 2, 0]
    assert structure.flat_indices.tolist() == [1, 2, 3]
    # W.T = [[0, 1], [1, 0], [1, 0]]
    assert structure.t_crow_indices.tolist() == [0, 1, 2, 3] and structure.t_col_indices.tolist() == [1, 0, 0]
    assert structure.t_flat_indices.tolist() == [3, 1, 2] and structure.t_order.tolist() == [2, 0, 1]
    assert structure.crow_indices.dtype == torch.int32 and structure.flat_indices.dtype == torch.int64
    assert CSRStructure.from_mask(mask, torch.int64).col_indices.dtype == torch.int64


@pytest.mark.parametrize("kind", KINDS)
def test_flat_indices_round_trip(kind):
    generator = torch.Generator().manual_seed(6)
    mask = _mask(kind, 13, 11, generator)
    weight = torch.randn(13, 11, generator=generator)
    structure = CSRStructure.from_mask(mask)
    values = structure.gather(weight)
    assert structure.nnz == int(mask.sum())
    assert torch.equal(structure.scatter(values), weight * mask)
    assert torch.equal(structure.matrix(values).to_dense(), weight * mask)
    assert torch.equal(structure.transposed_matrix(values).to_dense(), (weight * mask).t())
    assert torch.equal(structure.t_flat_indices, structure.flat_indices[structure.t_order])


def test_int64_indices_give_the_same_result():
    generator = torch.Generator().manual_seed(7)
    mask = _mask("random", 9, 8, generator)
    weight, inputs = torch.randn(9, 8, generator=generator), torch.randn(4, 8, generator=generator)
    expected = csr_linear(inputs, weight, None, CSRStructure.from_mask(mask))
    assert torch.equal(csr_linear(inputs, weight, None, CSRStructure.from_mask(mask, torch.int64)), expected)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(8)
    mask = _mask("random", 4, 5, generator)
    structure = CSRStructure.from_mask(mask)
    weight = (torch.randn(4, 5, generator=generator, dtype=torch.float64) * mask).requires_grad_()
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    # entries outside the mask are not read, so their numerical gradient is 0, as the sampled one
    assert torch.autograd.gradcheck(lambda x, w, b: csr_linear(x, w, b, structure), (inputs, weight, bias))


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="2-D"):
        CSRStructure.from_mask(torch.ones(2, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        csr_linear(torch.ones(1, 3), torch.ones(3, 2), None, CSRStructure.from_mask(torch.ones(2, 3, dtype=torch.bool)))


def test_bfloat16_on_cpu_falls_back_or_matches():
    mask = torch.tensor([[True, False, True], [False, True, True]])
    weight = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.5]], dtype=torch.bfloat16)
    inputs = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.bfloat16)
    structure = CSRStructure.from_mask(mask)
    if not csr_supported(torch.bfloat16, "cpu"):
        with pytest.raises(SparseKernelUnavailable, match="bfloat16"):
            csr_linear(inputs, weight, None, structure)
    else:
        assert csr_linear(inputs, weight, None, structure).float().tolist() == [[9.0, 8.0]]
    assert csr_supported(torch.float32, "cpu") and csr_supported(torch.float64, "cpu")
    assert not csr_supported(torch.int64, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_masked_dense(dtype):
    if not csr_supported(dtype, "cuda"):
        pytest.skip(f"torch has no CUDA CSR kernel for {dtype}")
    generator = torch.Generator().manual_seed(9)
    mask = _mask("random", 64, 48, generator).cuda()
    weight = (torch.randn(64, 48, generator=generator).cuda().to(dtype) * mask).requires_grad_()
    inputs = torch.randn(32, 48, generator=generator).cuda().to(dtype).requires_grad_()
    output = csr_linear(inputs, weight, None, CSRStructure.from_mask(mask))
    output.float().sum().backward()
    sparse_grads = inputs.grad, weight.grad
    inputs.grad = weight.grad = None
    expected = F.linear(inputs, weight * mask)
    expected.float().sum().backward()
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(output.float(), expected.float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(sparse_grads[0].float(), inputs.grad.float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(sparse_grads[1].float(), (weight.grad * mask).float(), atol=tolerance, rtol=tolerance)
