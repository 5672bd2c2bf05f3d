"""BSR execution of block-sparse layers (``structure: block``): bsr_linear equals the masked dense layer,
sparse execution runs it, and falls back to CSR where torch has no BSR kernel."""
import importlib

import pytest
import torch

import gsparse
from gsparse.kernels import (BSRStructure, CSRStructure, ExecutionChoice, SparseKernelUnavailable, bsr_blocksize,
                             bsr_linear, bsr_supported, choice, choose_execution, clear_choice_cache, csr_linear)
from gsparse.kernels import execution as execution_module
from tests.test_csr_linear import compare_with_masked_dense

bsr_module = importlib.import_module("gsparse.kernels.bsr_linear")  # the package's bsr_linear is the function


def _block_mask(kind, grid, block, generator):
    if kind == "empty":
        active = torch.zeros(grid, dtype=torch.bool)
    elif kind == "full":
        active = torch.ones(grid, dtype=torch.bool)
    else:
        active = torch.rand(grid, generator=generator) < 0.4
        active[0, 0], active[-1, -1] = True, False  # some of each, whatever the seed
    return active.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)


def _kernel_block(block):
    kernel = bsr_blocksize(block, torch.float64)
    assert kernel is not None and block[0] % kernel[0] == 0 and block[1] % kernel[1] == 0
    return kernel


def _compare(mask, block, leading, dense_weight_grad=False, with_bias=True, dtype=torch.float64, atol=1e-12):
    blocks, structure = BSRStructure.from_mask(mask, _kernel_block(block)), CSRStructure.from_mask(mask)
    return compare_with_masked_dense(
        mask, leading, lambda inputs, weight, bias: bsr_linear(inputs, weight, bias, blocks, structure,
                                                               dense_weight_grad),
        dtype, atol, rtol=0.0, dense_weight_grad=dense_weight_grad, with_bias=with_bias)


@pytest.mark.parametrize("block", [(4, 4), (2, 8), (8, 8)])
@pytest.mark.parametrize("grid", [(3, 5), (5, 3), (1, 1)])
@pytest.mark.parametrize("kind", ["random", "empty", "full"])
def test_float64_equals_masked_dense(block, grid, kind):
    generator = torch.Generator().manual_seed(0)
    mask = _block_mask(kind, grid, block, generator)
    weight_grad = _compare(mask, block, leading=(2, 3))  # 3-D input
    assert torch.count_nonzero(weight_grad[~mask]) == 0  # sampled: nothing computed off the mask


@pytest.mark.parametrize("block", [(4, 4), (2, 8)])
def test_dense_weight_grad_no_bias_and_1d_input(block):
    generator = torch.Generator().manual_seed(2)
    mask = _block_mask("random", (3, 5), block, generator)
    weight_grad = _compare(mask, block, leading=(7,), dense_weight_grad=True)
    assert torch.count_nonzero(weight_grad[~mask]) == int((~mask).sum())
    _compare(mask, block, leading=(), with_bias=False)


def test_hand_computed_values():
    # 2x2 blocks of a 4x4 weight: blocks (0, 1) and (1, 0) active
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    weight = torch.tensor([[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0], [7.0, 8.0, 0.0, 0.0]],
                          requires_grad=True)
    inputs = torch.tensor([[1.0, 0.0, 1.0, 2.0]], requires_grad=True)
    output = bsr_linear(inputs, weight, None, BSRStructure.from_mask(mask, (2, 2)), CSRStructure.from_mask(mask))
    assert output.tolist() == [[5.0, 11.0, 5.0, 7.0]]
    output.backward(torch.tensor([[1.0, 0.0, 0.0, 2.0]]))
    assert inputs.grad.tolist() == [[14.0, 16.0, 1.0, 2.0]]  # dY W: row 0 + 2 * row 3
    assert weight.grad.tolist() == [[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0],
                                    [2.0, 0.0, 0.0, 0.0]]


def test_inactive_blocks_are_never_read():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    weight = torch.tensor([[1.0, 2.0, float("nan"), 0.0], [3.0, 4.0, 0.0, float("inf")]], requires_grad=True)
    inputs = torch.tensor([[1.0, 1.0, 5.0, 5.0]], requires_grad=True)
    output = bsr_linear(inputs, weight, None, BSRStructure.from_mask(mask, (2, 2)), CSRStructure.from_mask(mask))
    output.backward(torch.ones_like(output))
    assert output.tolist() == [[3.0, 7.0]] and inputs.grad.tolist() == [[4.0, 6.0, 0.0, 0.0]]
    assert weight.grad.tolist() == [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_structure_indices_by_hand():
    # 4 x 6 in 2x2 blocks, grid 2 x 3: blocks (0, 1), (1, 0), (1, 2) active
    mask = torch.tensor([[0, 1, 0], [1, 0, 1]], dtype=torch.bool).repeat_interleave(2, 0).repeat_interleave(2, 1)
    blocks = BSRStructure.from_mask(mask, (2, 2))
    assert blocks.shape == (4, 6) and blocks.nnz == 12 and blocks.num_blocks == 3 and blocks.density == 0.5
    assert blocks.crow_indices.tolist() == [0, 1, 3] and blocks.col_indices.tolist() == [1, 0, 2]
    assert blocks.flat_indices.tolist() == [2, 3, 8, 9, 12, 13, 18, 19, 16, 17, 22, 23]
    # transpose (6 x 4, grid 3 x 2): block-rows 0, 1, 2 hold the weight's blocks (1, 0), (0, 1), (1, 2)
    assert blocks.t_crow_indices.tolist() == [0, 1, 2, 3] and blocks.t_col_indices.tolist() == [1, 0, 1]
    assert blocks.t_order.tolist() == [1, 0, 2] and blocks.crow_indices.dtype == torch.int32
    weight = torch.arange(24.0).view(4, 6) * mask
    assert torch.equal(blocks.matrix(blocks.gather(weight)).to_dense(), weight)
    assert torch.equal(blocks.transposed_matrix(blocks.gather(weight)).to_dense(), weight.t())


def test_masks_that_are_not_whole_blocks_are_refused():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="not made of whole 2 x 2 blocks"):
        BSRStructure.from_mask(mask, (2, 2))
    with pytest.raises(ValueError, match="3 x 3 blocks do not tile a 4 x 4 mask"):
        BSRStructure.from_mask(mask, (3, 3))
    full = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="not the same layer"):
        bsr_linear(torch.ones(1, 4), torch.ones(4, 4), None, BSRStructure.from_mask(full, (2, 2)),
                   CSRStructure.from_mask(mask))


def test_block_size_choice_and_unsupported_dtypes():
    assert bsr_blocksize((1, 4), torch.float32) is None  # no square above 1x1 tiles it
    assert bsr_blocksize((4, 4), torch.float32) == (4, 4)
    # MKL takes square blocks only; a 2x8 mask is also whole 2x2 blocks
    assert bsr_blocksize((2, 8), torch.float32) == ((2, 8) if bsr_supported(torch.float32, "cpu", (2, 8)) else (2, 2))
    assert not bsr_supported(torch.int64, "cpu", (4, 4))
    if not bsr_supported(torch.bfloat16, "cpu", (4, 4)):  # torch 2.x on CPU: no BSR (nor CSR) bf16 product
        assert bsr_blocksize((4, 4), torch.bfloat16) is None
        mask = torch.ones(4, 4, dtype=torch.bool)
        with pytest.raises(SparseKernelUnavailable, match="BSR"):
            bsr_linear(torch.ones(1, 4, dtype=torch.bfloat16), torch.ones(4, 4, dtype=torch.bfloat16), None,
                       BSRStructure.from_mask(mask, (4, 4)), CSRStructure.from_mask(mask))


# ---- sparse execution of a block recipe ---------------------------------------------------------

def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 96), torch.nn.ReLU(), torch.nn.Linear(96, 80), torch.nn.ReLU(),
                               torch.nn.Linear(80, 8)).to(torch.float64)


def _train(execution, block_size=4, steps=23, method="dst_ee"):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sparsifier = gsparse.Sparsifier(model, optimizer, {
        "method": method, "sparsity": 0.8, "structure": "block", "block_size": block_size, "execution": execution,
        "schedule": {"update_interval": 5, "drop_fraction": 0.3}})
    generator = torch.Generator().manual_seed(1)
    builds = []
    for _ in range(steps):
        optimizer.zero_grad()
        inputs = torch.randn(4, 3, 24, generator=generator, dtype=torch.float64)  # 3-D
        targets = torch.randint(0, 8, (4, 3), generator=generator)
        torch.nn.functional.cross_entropy(model(inputs).reshape(-1, 8), targets.reshape(-1)).backward()
        optimizer.step()
        if sparsifier.execution is not None:
            builds.append([layer.builds for layer in sparsifier.execution.layers])
    return model, sparsifier, builds


@pytest.mark.parametrize("block_size, kernel", [(4, "bsr 4x4"), ([2, 8], "bsr 2x2")])
def test_dst_ee_block_recipe_trains_as_dense_execution_with_bsr(block_size, kernel, monkeypatch):
    if kernel == "bsr 2x2" and bsr_supported(torch.float64, "cpu", (2, 8)):
        kernel = "bsr 2x8"
    calls = []
    monkeypatch.setattr(execution_module, "bsr_linear",
                        lambda *args: calls.append(args[3].blocksize) or bsr_module.bsr_linear(*args))
    dense_model, dense, _ = _train("dense", block_size)
    sparse_model, sparse, builds = _train("sparse", block_size)
    assert {entry["kernel"] for entry in sparse.execution_report().values()} == {kernel}
    assert all(entry.kernel == kernel for entry in sparse.execution.layers)
    assert len(calls) == 3 * 23  # every forward of the three layers ran BSR
    assert sparse.engine.num_updates == dense.engine.num_updates == 4
    for name, mask in dense.masks.items():
        assert torch.equal(mask, sparse.masks[name]), name
    for ours, theirs in zip(sparse_model.parameters(), dense_model.parameters()):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    # built at attach, then once after each update (steps 5, 10, 15, 20), never otherwise
    assert [row[0] for row in builds] == [1] * 4 + [2] * 5 + [3] * 5 + [4] * 5 + [5] * 4
    assert all(len(set(row)) == 1 for row in builds)
    entry = sparse.execution.layers[1]  # the structures hold the current mask
    ones = torch.ones(80, 96, dtype=torch.float64)
    assert torch.equal(entry.blocks.matrix(entry.blocks.gather(ones)).to_dense().bool(), sparse.masks["2.weight"])
    assert torch.equal(entry.structure.flat_indices, sparse.masks["2.weight"].reshape(-1).nonzero().squeeze(1))


def test_unsupported_bsr_falls_back_to_csr(monkeypatch):
    monkeypatch.setattr(bsr_module, "_SUPPORT", {})
    monkeypatch.setattr(bsr_module, "_probe", lambda dtype, device, blocksize: False)
    dense_model, _, _ = _train("dense", steps=7)
    sparse_model, sparse, _ = _train("sparse", steps=7)
    assert {entry["kernel"] for entry in sparse.execution_report().values()} == {"csr"}
    assert all(entry.blocks is None for entry in sparse.execution.layers)
    for ours, theirs in zip(sparse_model.parameters(), dense_model.parameters()):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_a_dtype_without_bsr_kernels_at_forward_time_runs_csr(monkeypatch):
    model, sparsifier, _ = _train("sparse", steps=2)
    assert sparsifier.execution.layers[0].blocks is not None
    used = []
    monkeypatch.setattr(execution_module, "bsr_supported", lambda dtype, device, blocksize: False)
    monkeypatch.setattr(execution_module, "csr_linear", lambda *args: used.append("csr") or csr_linear(*args))
    reference = _model()
    reference.load_state_dict(model.state_dict())
    inputs = torch.randn(5, 24, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(inputs), reference(inputs), rtol=0, atol=1e-12)
    assert used == ["csr"] * 3


def test_an_all_inactive_layer_runs_bsr_and_outputs_its_bias():
    layer = torch.nn.Linear(8, 8).to(torch.float64)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    sparsifier = gsparse.Sparsifier(layer, optimizer, {"method": "static", "sparsity": 0.75, "structure": "block",
                                                       "block_size": 4, "execution": "sparse"})
    entry = sparsifier.execution.layers[0]
    assert entry.kernel == "bsr 4x4" and entry.blocks.num_blocks == 1
    with torch.no_grad():
        layer.weight.zero_()
    entry.blocks = BSRStructure.from_mask(torch.zeros(8, 8, dtype=torch.bool), (4, 4))
    entry.structure = CSRStructure.from_mask(torch.zeros(8, 8, dtype=torch.bool))
    inputs = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    layer(inputs).sum().backward()
    assert torch.equal(layer(inputs.detach()), layer.bias.detach().expand(3, 8))
    assert torch.equal(inputs.grad, torch.zeros(3, 8, dtype=torch.float64))
    assert torch.equal(layer.weight.grad, torch.zeros(8, 8, dtype=torch.float64))


def test_auto_times_the_bsr_kernel(monkeypatch):
    seen = []

    def fake_choice(out_features, in_features, nnz, rows, dtype, device, block=None):
        seen.append((out_features, in_features, block))
        return ExecutionChoice("sparse", 2.0, 1.0, "fake")

    monkeypatch.setattr(execution_module, "choose_execution", fake_choice)
    _, sparsifier, _ = _train("auto", steps=2)
    assert seen == [(96, 24, (4, 4)), (80, 96, (4, 4)), (8, 80, (4, 4))]
    assert {entry["kernel"] for entry in sparsifier.execution_report().values()} == {"bsr 4x4"}


def test_choose_execution_runs_bsr_for_blocks_and_csr_where_unsupported(monkeypatch):
    clear_choice_cache()
    kernels = []
    monkeypatch.setattr(choice, "bsr_linear", lambda *args: kernels.append("bsr") or bsr_module.bsr_linear(*args))
    monkeypatch.setattr(choice, "csr_linear", lambda *args: kernels.append("csr") or csr_linear(*args))

    def timer(dense_step, sparse_step, repeats):
        dense_step()
        sparse_step()
        return 3.0, 1.0

    assert choose_execution(16, 32, 64, 8, block=(4, 4), timer=timer).mode == "sparse"
    monkeypatch.setattr(choice, "bsr_supported", lambda dtype, device, blocksize: False)
    choose_execution(16, 32, 64, 8, block=(8, 8), timer=timer)
    assert kernels == ["bsr", "csr"]
    clear_choice_cache()
