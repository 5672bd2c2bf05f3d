"""Export: CSR linear layers computing what the trained model computes, a file that loads in a fresh
process without gsparse's training dependencies, and the compact weights file."""
import copy
import json
import subprocess
import sys

import pytest
import torch

from gsparse.cli import main
from gsparse.export import (BSRLinear, CSRLinear, compact_report, csr_kernel_available, export_file, export_sparse,
                            load_compact, save_compact, with_csr_layers)


def keep_per_row(weight: torch.Tensor, active: int, seed: int) -> None:
    """Zero all but ``active`` weights in each row (as a trained gsparse model holds them)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.rand(weight.shape, generator=generator).argsort(dim=1)
    with torch.no_grad():
        weight.mul_(order < active)


def sparse_mlp() -> torch.nn.Sequential:
    """300 -> 512 -> 512 -> 10 with 30/300, 51/512 and 51/512 active weights per row (~90% zeros)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10))
    for index, active in ((0, 30), (2, 51), (4, 51)):
        keep_per_row(model[index].weight, active, seed=index)
    return model


class PygLinear(torch.nn.Module):
    """Stands in for torch_geometric.nn.dense.linear.Linear (found by module and class name)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels))
        self.bias = torch.nn.Parameter(torch.randn(out_channels))

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias)


PygLinear.__module__, PygLinear.__name__, PygLinear.__qualname__ = "torch_geometric.nn.dense.linear", "Linear", "Linear"


class ScaledLinear(torch.nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_large_sparse_layers_become_csr_with_equal_outputs():
    model = sparse_mlp()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    exported, report = export_sparse(model)

    assert [type(layer).__name__ for layer in exported] == ["CSRLinear", "ReLU", "CSRLinear", "ReLU", "Linear"]
    assert report.exported_layers == ["0", "2"]
    assert report["0"] == {"shape": [512, 300], "nnz": 512 * 30, "density": 0.1, "exported": True,
                           "reason": "sparsity 0.9000 >= 0.5, in/out features >= 256", "kernel": "csr",
                           "block_fill": None}
    assert report["2"]["nnz"] == exported[2].nnz == 512 * 51
    assert report["4"]["exported"] is False
    assert report["4"]["reason"] == "in/out features 512/10 < min_features 256"
    assert exported[0].weight.layout == torch.sparse_csr and exported[0].weight.col_indices().dtype == torch.int32
    assert "nnz=15360, density=0.1000" in repr(exported[0])
    assert not exported.training

    torch.manual_seed(1)
    for x in (torch.randn(16, 300), torch.randn(3, 5, 300)):
        expected = model(x)
        got = exported(x)
        assert got.shape == expected.shape and got.is_contiguous()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the original is untouched: same layers, mode and weights
    assert [type(layer) for layer in model] == [torch.nn.Linear, torch.nn.ReLU] * 2 + [torch.nn.Linear]
    assert model.training
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_dense_small_and_unsupported_layers_stay_dense():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.Linear(300, 64), ScaledLinear(64, 300),
                                torch.nn.Linear(300, 300).to(torch.bfloat16))
    for index, active in ((1, 3), (2, 3), (3, 3)):
        keep_per_row(model[index].weight, active, seed=index)
    exported, report = export_sparse(model)
    assert report["0"]["reason"] == "sparsity 0.0000 < min_sparsity 0.5" and report["0"]["density"] == 1.0
    assert report["1"]["reason"] == "in/out features 300/64 < min_features 256"
    assert report["2"]["reason"] == "ScaledLinear overrides forward"
    bf16_has_kernel = csr_kernel_available(torch.bfloat16, "cpu")
    assert report["3"]["exported"] is bf16_has_kernel
    if not bf16_has_kernel:
        assert report["3"]["reason"] == "no CSR kernel for torch.bfloat16 on cpu"
    assert report.exported_layers == (["3"] if bf16_has_kernel else [])

    chosen, report = export_sparse(model, layers=["1"])  # the names override the automatic rule
    assert isinstance(chosen[1], CSRLinear) and type(chosen[0]) is torch.nn.Linear
    assert report["1"]["reason"] == "named in layers" and report["0"]["reason"] == "not named in layers"
    x = torch.randn(4, 300)
    torch.testing.assert_close(chosen[1](x), model[1](x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not linear layers of the model: \\['9'\\]"):
        export_sparse(model, layers=["9"])


def test_pyg_linear_and_hooked_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(PygLinear(300, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256))
    keep_per_row(model[0].weight, 10, seed=0)
    keep_per_row(model[2].weight, 10, seed=2)
    model[2].register_forward_pre_hook(lambda module, args: None)  # like a method's forward_weight transform
    exported, report = export_sparse(model)
    assert isinstance(exported[0], CSRLinear) and report["0"]["nnz"] == 256 * 10
    assert report["2"]["reason"].startswith("has forward hooks")
    x = torch.randn(2, 7, 300)
    torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=0)


def test_csr_linear_without_bias_all_zero_state_dict_and_deepcopy():
    weight = torch.zeros(300, 280)
    weight[4, 7] = 2.5
    layer = CSRLinear(weight)
    x = torch.randn(3, 280)
    expected = torch.zeros(3, 300)
    expected[:, 4] = 2.5 * x[:, 7]
    assert layer.nnz == 1 and layer.bias is None
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)

    linear = torch.nn.Linear(280, 300)
    with torch.no_grad():
        linear.weight.zero_()
    empty = CSRLinear.from_linear(linear)
    assert empty.nnz == 0 and empty.density == 0.0
    torch.testing.assert_close(empty(x), empty.bias.expand(3, 300), atol=0, rtol=0)

    empty_no_bias = CSRLinear(torch.zeros(300, 280))
    empty_no_bias.load_state_dict(layer.state_dict())  # another number of entries: replaced, not copied
    assert empty_no_bias.nnz == 1 and torch.equal(empty_no_bias(x), layer(x))
    empty_no_bias.load_state_dict({"weight": 3 * weight})  # a dense weight is converted
    assert empty_no_bias.weight.layout == torch.sparse_csr and empty_no_bias.weight.values().tolist() == [7.5]
    torch.testing.assert_close(empty_no_bias(x), 3 * layer(x))
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        layer.load_state_dict({"weight": torch.zeros(3, 3)})

    clone = copy.deepcopy(layer)
    clone.weight.values().mul_(2)
    assert torch.equal(layer(x), expected) and torch.equal(clone(x), 2 * expected)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_exported_model_loads_in_fresh_process_without_training_dependencies(tmp_path):
    model = sparse_mlp()
    exported, _ = export_sparse(model)
    x = torch.randn(3, 5, 300)
    torch.save(exported, tmp_path / "model.pt")
    torch.jit.save(torch.jit.script(exported), tmp_path / "model.torchscript.pt")
    blocks = block_mlp()  # BSR layers: the TorchScript file gets them as CSR (it cannot save BSR tensors)
    torch.save(blocks, tmp_path / "blocks.pt")
    report = export_file(tmp_path / "blocks.pt", tmp_path / "blocks_sparse.pt", torchscript=True, block=8)
    assert report["torchscript_csr_layers"] == ["0"] and report["layers"]["0"]["kernel"] == "bsr 8x8"
    x_blocks = torch.randn(4, 256)
    torch.save({"x": x, "expected": model(x).detach(), "x_blocks": x_blocks,
                "expected_blocks": blocks(x_blocks).detach()}, tmp_path / "io.pt")
    code = f"""
import sys
for name in ("deepspeed", "torch_geometric", "gsparse.training", "gsparse.tasks", "gsparse.deepspeed"):
    sys.modules[name] = None  # importing it fails
import torch
io = torch.load({str(tmp_path / "io.pt")!r})
sys.modules["gsparse"] = None  # TorchScript needs no Python class at all
scripted = torch.jit.load({str(tmp_path / "model.torchscript.pt")!r})
torch.testing.assert_close(scripted(io["x"]), io["expected"], atol=1e-5, rtol=0)
scripted = torch.jit.load({str(tmp_path / "blocks_sparse.torchscript.pt")!r})
torch.testing.assert_close(scripted(io["x_blocks"]), io["expected_blocks"], atol=1e-5, rtol=0)
del sys.modules["gsparse"]
model = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
assert type(model[0]).__name__ == "CSRLinear" and model[0].weight.layout == torch.sparse_csr
torch.testing.assert_close(model(io["x"]), io["expected"], atol=1e-5, rtol=0)
model = torch.load({str(tmp_path / "blocks_sparse.pt")!r}, weights_only=False)
assert type(model[0]).__name__ == "BSRLinear" and model[0].weight.layout == torch.sparse_bsr
torch.testing.assert_close(model(io["x_blocks"]), io["expected_blocks"], atol=1e-5, rtol=0)
print("outputs equal")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "outputs equal"


# ---- BSR layers (block masks) -------------------------------------------------------------------

def keep_blocks(weight: torch.Tensor, block: tuple[int, int], keep: float, seed: int) -> None:
    """Zero all but a random ``keep`` fraction of the ``block`` blocks (a ``structure: block`` mask)."""
    rows, cols = weight.shape[0] // block[0], weight.shape[1] // block[1]
    kept = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) < keep
    with torch.no_grad():
        weight.mul_(kept.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1))


def block_mlp(dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    """256 -> 512 (8x8 blocks) -> 300 (4x8 blocks: 8x8 squares do not tile 300 rows) -> 10, ~90% zeros."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 300), torch.nn.ReLU(),
                                torch.nn.Linear(300, 10)).to(dtype)
    keep_blocks(model[0].weight, (8, 8), 0.1, seed=0)
    keep_blocks(model[2].weight, (4, 8), 0.1, seed=2)
    return model


@pytest.mark.parametrize("blocksize", [4, 8])
def test_bsr_linear_equals_f_linear_on_block_masks(blocksize):
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 48, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    keep_blocks(weight, (blocksize, blocksize), 0.3, seed=1)
    blocks = int(torch.count_nonzero(weight)) // blocksize**2
    layer = BSRLinear(weight, bias, blocksize)
    assert layer.weight.layout == torch.sparse_bsr and layer.blocksize == (blocksize, blocksize)
    assert layer.num_blocks == blocks and layer.nnz == blocks * blocksize**2 and layer.fill == 1.0
    assert layer.weight.col_indices().dtype == torch.int32
    assert f"blocksize={blocksize}x{blocksize}, blocks={blocks}" in repr(layer)
    for x in (torch.randn(5, 48, dtype=torch.float64), torch.randn(2, 3, 48, dtype=torch.float64)):
        got = layer(x)
        assert got.shape == x.shape[:-1] + (64,) and got.is_contiguous()
        torch.testing.assert_close(got, torch.nn.functional.linear(x, weight, bias), atol=1e-12, rtol=0)
    no_bias = BSRLinear(weight, blocksize=(blocksize, blocksize))
    torch.testing.assert_close(no_bias(x), torch.nn.functional.linear(x, weight), atol=1e-12, rtol=0)


def test_bsr_linear_is_exact_on_a_mask_that_is_not_blocks():
    weight = torch.zeros(8, 12, dtype=torch.float64)
    weight[5, 9], weight[0, 0], weight[1, 1] = 2.5, -1.0, 3.0  # blocks (1, 2) and (0, 0): 2 of 6
    layer = BSRLinear(weight, blocksize=4)
    assert layer.num_blocks == 2 and layer.nnz == 32 and layer.fill == 3 / 32
    x = torch.randn(3, 12, dtype=torch.float64)
    expected = torch.zeros(3, 8, dtype=torch.float64)
    expected[:, 5], expected[:, 0], expected[:, 1] = 2.5 * x[:, 9], -x[:, 0], 3.0 * x[:, 1]
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
    dense = torch.randn(8, 12, dtype=torch.float64)  # no zero at all: every block stored, still exact
    torch.testing.assert_close(BSRLinear(dense, blocksize=4)(x), x @ dense.t(), atol=1e-12, rtol=0)


def test_bsr_linear_state_dict_deepcopy_to_and_refusals():
    torch.manual_seed(0)
    weight = torch.randn(16, 8)
    keep_blocks(weight, (4, 4), 0.5, seed=3)
    layer = BSRLinear.from_linear(torch.nn.Linear(8, 16), blocksize=4)
    layer.load_state_dict({"weight": weight, "bias": torch.ones(16)})  # dense: converted to 4x4 BSR
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x @ weight.t() + 1, atol=1e-6, rtol=0)
    other = BSRLinear(torch.zeros(16, 8), torch.zeros(16), blocksize=4)
    other.load_state_dict(layer.state_dict())  # BSR with another number of blocks: replaced
    assert other.num_blocks == layer.num_blocks and torch.equal(other(x), layer(x))
    other.load_state_dict({"weight": weight.to_sparse_bsr((2, 2)), "bias": torch.ones(16)})  # re-blocked
    assert other.blocksize == (4, 4) and tuple(other.weight.values().shape[1:]) == (4, 4)
    assert torch.equal(other(x), layer(x))
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        layer.load_state_dict({"weight": torch.zeros(8, 8), "bias": torch.ones(16)})

    clone = copy.deepcopy(layer)
    clone.weight.values().mul_(2)
    clone.bias.zero_()
    torch.testing.assert_close(layer(x), x @ weight.t() + 1, atol=1e-6, rtol=0)
    torch.testing.assert_close(clone(x), 2 * x @ weight.t(), atol=1e-5, rtol=0)

    double = copy.deepcopy(layer).to(torch.float64)
    assert double.weight.layout == torch.sparse_bsr and double.weight.dtype == double.bias.dtype == torch.float64
    torch.testing.assert_close(double(x.double()), x.double() @ weight.double().t() + 1, atol=1e-12, rtol=0)

    csr = layer.eval().to_csr()
    assert isinstance(csr, CSRLinear) and csr.nnz == int(torch.count_nonzero(weight)) and not csr.training
    torch.testing.assert_close(csr(x), layer(x), atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="4x4 blocks do not tile a 16x6 weight"):
        BSRLinear(torch.zeros(16, 6), blocksize=4)
    with pytest.raises(ValueError, match="needs a blocksize"):
        BSRLinear(torch.zeros(16, 8))
    with pytest.raises(ValueError, match="has 2x2 blocks, not 4x4"):
        BSRLinear(weight.to_sparse_bsr((2, 2)), blocksize=4)
    with pytest.raises(ValueError, match="no BSR matrix product for torch.float16"):
        BSRLinear(torch.zeros(16, 8, dtype=torch.float16), blocksize=4)


def test_export_with_block_picks_bsr_where_squares_tile():
    model = block_mlp()
    exported, report = export_sparse(model, block=8)
    assert [type(layer).__name__ for layer in exported] == ["BSRLinear", "ReLU", "CSRLinear", "ReLU", "Linear"]
    assert report["0"]["kernel"] == "bsr 8x8" and report["0"]["block_fill"] == 1.0
    assert exported[0].nnz == report["0"]["nnz"]  # a true block mask stores no zero
    assert report["2"]["kernel"] == "csr" and report["2"]["block_fill"] is None
    assert report["2"]["reason"].endswith("; csr: 8x8 blocks do not tile 300x512")
    assert report["4"]["kernel"] is None and report["4"]["block_fill"] is None
    x = torch.randn(3, 5, 256)
    torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=0)

    # 4x8 blocks: MKL has square blocks only, so the 4x4 squares that tile them
    exported, report = export_sparse(model, block=(4, 8))
    assert [report[name]["kernel"] for name in "024"] == ["bsr 4x4", "bsr 4x4", None]
    assert report["2"]["block_fill"] == 1.0 and exported[2].nnz == report["2"]["nnz"]
    exported, report = export_sparse(model, block=(4, 5))  # gcd 1: no square block
    assert report["0"]["kernel"] == "csr" and "no BSR kernel for 4x5 blocks" in report["0"]["reason"]

    double = block_mlp(torch.float64)
    exported, report = export_sparse(double, block=4)
    assert report.exported_layers == ["0", "2"] and report["2"]["kernel"] == "bsr 4x4"
    x = torch.randn(7, 256, dtype=torch.float64)
    torch.testing.assert_close(exported(x), double(x), atol=1e-12, rtol=0)
    scriptable, converted = with_csr_layers(exported)
    assert converted == ["0", "2"] and isinstance(scriptable[2], CSRLinear)
    torch.testing.assert_close(scriptable(x), double(x), atol=1e-12, rtol=0)


@pytest.fixture(params=["safetensors", "torch"])
def compact_backend(request, monkeypatch):
    if request.param == "safetensors":
        pytest.importorskip("safetensors")
    else:
        monkeypatch.setitem(sys.modules, "safetensors", None)  # importing it fails
        monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    return request.param


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def test_compact_file_is_bit_exact(tmp_path, compact_backend):
    torch.manual_seed(0)
    sparse = torch.randn(64, 50)
    keep_per_row(sparse, 5, seed=0)
    sparse[0] = 0
    sparse[0, :6] = torch.tensor([-0.0, float("nan"), 1.0, 2.0, 3.0, 4.0])  # -0.0 and NaN come back too
    assert 0 < int(torch.signbit(sparse[sparse == 0]).sum()) < 3200 - 320  # masking made many -0.0
    one = torch.zeros(20, 30)
    one[19, 29] = 1.5
    conv = torch.randn(8, 4, 3, 3)
    keep_per_row(conv.view(8, -1), 3, seed=1)
    state = {"sparse.weight": sparse, "zero.weight": torch.zeros(20, 30), "one.weight": one,
             "sparse.bias": torch.randn(64), "dense.weight": torch.randn(10, 10), "conv.weight": conv,
             "half.weight": sparse.to(torch.bfloat16), "steps": torch.tensor(7), "mask": sparse != 0,
             "ids": torch.arange(5, dtype=torch.int32)}
    path = save_compact(state, tmp_path / "weights.bin")
    loaded = load_compact(path)
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(bits(loaded[name]), bits(tensor)), name

    with open(path, "rb") as file:
        assert (file.read(4) == b"PK\x03\x04") == (compact_backend == "torch")
    if compact_backend == "torch":  # the layout, readable here without safetensors
        stored = torch.load(path, weights_only=True)
        assert stored["layout"]["sparse.weight"] == {"format": "csr", "shape": [64, 50]}
        assert stored["layout"]["conv.weight"] == {"format": "csr", "shape": [8, 4, 3, 3]}
        assert stored["layout"]["dense.weight"] == {"format": "dense"}
        assert stored["layout"]["sparse.bias"] == {"format": "dense"}
        pieces = stored["tensors"]
        assert pieces["sparse.weight.crow_indices"].tolist() == list(range(0, 321, 5))
        assert pieces["sparse.weight.crow_indices"].dtype == torch.int16  # 320 entries
        assert pieces["sparse.weight.col_indices"].dtype == torch.int8  # 50 columns
        assert pieces["sparse.weight.values"].numel() == 320
        assert pieces["sparse.weight.negative_zeros"].dtype == torch.uint8
        assert pieces["sparse.weight.negative_zeros"].numel() == 3200 // 8  # a bit an entry
        assert pieces["zero.weight.values"].numel() == 0 and "zero.weight.negative_zeros" not in pieces
        assert pieces["one.weight.col_indices"].tolist() == [29]


def test_compact_file_is_smaller_than_the_dense_one(tmp_path, compact_backend):
    model = sparse_mlp()
    path = save_compact(model, tmp_path / "weights.bin")
    sizes = compact_report(model, path)
    assert sizes["compact_bytes"] == path.stat().st_size
    assert sizes["compact_bytes"] < 0.3 * sizes["dense_bytes"], sizes  # 10% values + 16-bit columns
    loaded = load_compact(path)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_export_command_writes_module_and_report(tmp_path, capsys):
    model = sparse_mlp()
    torch.save(model, tmp_path / "model.pt")
    out = tmp_path / "exported" / "sparse.pt"
    assert main(["export", str(tmp_path / "model.pt"), str(out), "--compact", "--torchscript",
                 "--min_features", "300"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {name: entry["exported"] for name, entry in report["layers"].items()} == {"0": True, "2": True, "4": False}
    assert report["files"]["out"] == str(out)
    assert report["files"]["torchscript"] == str(tmp_path / "exported" / "sparse.torchscript.pt")
    x = torch.randn(6, 300)
    for loaded in (torch.load(out, weights_only=False), torch.jit.load(report["files"]["torchscript"])):
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    compact = load_compact(report["files"]["compact"])
    assert all(torch.equal(compact[name], tensor) for name, tensor in model.state_dict().items())
    assert report["sizes"]["compact_bytes"] < report["sizes"]["dense_state_dict_bytes"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_export_command_with_block(tmp_path, capsys):
    model = block_mlp()
    torch.save(model, tmp_path / "model.pt")
    out = tmp_path / "sparse.pt"
    assert main(["export", str(tmp_path / "model.pt"), str(out), "--block", "[8, 8]", "--torchscript"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    kernels = {name: entry["kernel"] for name, entry in report["layers"].items()}
    assert kernels == {"0": "bsr 8x8", "2": "csr", "4": None}
    assert report["torchscript_csr_layers"] == ["0"]
    assert "TorchScript cannot save BSR tensors" in captured.err and "runs 0 as CSR" in captured.err
    x = torch.randn(6, 256)
    for loaded in (torch.load(out, weights_only=False), torch.jit.load(report["files"]["torchscript"])):
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    assert main(["export", str(tmp_path / "model.pt"), str(out), "--block", "4x8"]) == 0
    kernels = [entry["kernel"] for entry in json.loads(capsys.readouterr().out)["layers"].values()]
    assert kernels == ["bsr 4x4", "bsr 4x4", None]
    for bad in ("0", "4x", "4x4x4", "four"):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(tmp_path / "model.pt"), str(out), "--block", bad])
        assert exit_info.value.code == 2
        assert f"argument --block: expected b, RxC or [R, C] with positive integers (e.g. 4 or 4x4), got '{bad}'" \
            in capsys.readouterr().err


def test_export_command_reports_bad_input(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state.pt")
    assert main(["export", str(tmp_path / "state.pt"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsparse: error:") and "not a torch.nn.Module" in err
    assert not (tmp_path / "out.pt").exists()


# ---- the training runner's export (RunConfig.export / --export) ------------------------------------

def _wide_task():
    from tests.test_training import ToyTask

    class WideTask(ToyTask):
        def build_model(self):
            torch.manual_seed(self.seed)
            return torch.nn.Sequential(torch.nn.Linear(12, 300), torch.nn.ReLU(), torch.nn.Dropout(0.0),
                                       torch.nn.Linear(300, 300), torch.nn.ReLU(), torch.nn.Linear(300, 4))

    return WideTask()


WIDE_RECIPE = {"method": "rigl", "sparsity": 0.9, "distribution": "uniform", "params": {"include": ["3.weight"]},
               "schedule": {"update_interval": 2, "drop_fraction": 0.3, "last_update_step": 12}}


@pytest.mark.parametrize("structure", ["unstructured", "block"])
def test_runner_exports_the_final_model(tmp_path, structure):
    from gsparse.export import load_compact
    from gsparse.training import RunConfig, train

    task = _wide_task()
    recipe = WIDE_RECIPE if structure == "unstructured" else {**WIDE_RECIPE, "structure": "block", "block_size": 4}
    lines = []
    metrics = train(task, RunConfig(epochs=2, recipe=recipe, run_dir=str(tmp_path / "run"), progress=False,
                                    export=True, log=lines.append))
    folder = tmp_path / "run" / "export"
    record = json.loads((folder / "export.json").read_text())
    assert metrics["export"]["layers"] == record["layers"]
    assert [name for name, entry in record["layers"].items() if entry["exported"]] == ["3"]
    assert record["sizes"]["ratio"] < 0.5
    kernel, layer_class = ("bsr 4x4", "BSRLinear") if structure == "block" else ("csr", "CSRLinear")
    assert record["layers"]["3"]["kernel"] == kernel
    assert any(f"1 sparse linear layer(s) (3 ({kernel}))" in line for line in lines)
    final = task.build_model()
    final.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"])
    exported = torch.load(folder / "model.pt", weights_only=False)
    assert type(exported[3]).__name__ == layer_class
    nnz = record["layers"]["3"]["nnz"]
    if structure == "block":  # 563 whole blocks (10% of 90000 rounded to blocks); a weight grown at the
        # last update that got no gradient since is still 0, so a few stored entries are zero
        assert exported[3].num_blocks == 563 and exported[3].nnz == 563 * 16 and nnz <= 563 * 16
        assert record["layers"]["3"]["block_fill"] == nnz / (563 * 16)
    else:
        assert nnz == 9000 and record["layers"]["3"]["block_fill"] is None
    inputs = torch.randn(9, 12)
    with torch.no_grad():
        assert torch.allclose(exported(inputs), final.eval()(inputs), rtol=0, atol=1e-5)
    compact = load_compact(folder / record["compact"])
    assert all(torch.equal(compact[name], value) for name, value in final.state_dict().items())


def test_runner_refuses_to_export_a_method_that_transforms_weights_in_forward(tmp_path):
    """AutoSparse computes with a thresholded copy of the weights: their stored values are not the
    trained model, so export is refused before training."""
    from gsparse.training import RunConfig, train

    recipe = {"method": "autosparse", "sparsity": 0.9, "params": {"include": ["3.weight"]},
              "method_args": {"steps_per_epoch": "auto", "epochs": "auto"}}
    with pytest.raises(ValueError, match="export: method 'autosparse' computes with weights transformed in "
                                         "forward"):
        train(_wide_task(), RunConfig(epochs=1, recipe=recipe, run_dir=str(tmp_path / "run"), progress=False,
                                      export=True, log=lambda line: None))
    assert not (tmp_path / "run" / "export").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()
