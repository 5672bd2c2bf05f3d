"""Tests for gsparse.params: which parameters are sparse and their exact active counts."""
import pytest
import torch
from torch import nn

from gsparse import RecipeError, load_recipe
from gsparse.params import SparseParamSpec, sparse_param_specs


class Net(nn.Module):
    """Parameters in model order (numel in brackets):
    emb.weight [40], conv.weight [2,1,3,3 = 18], conv.bias [2], bn.weight [2], bn.bias [2],
    fc1.weight [5,4 = 20], fc1.bias [5], fc2.weight [6,5 = 30]."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 6, bias=False)


def recipe(sparsity=0.75, **extra):
    return load_recipe({"method": "static", "sparsity": sparsity, **extra})


def names(model, **extra):
    return [spec.name for spec in sparse_param_specs(model, recipe(**extra))]


def recipe_error(model, **extra) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        sparse_param_specs(model, recipe(**extra))
    return info.value


def test_default_selects_linear_and_conv_weights_only():
    assert names(Net()) == ["conv.weight", "fc1.weight", "fc2.weight"]


def test_default_covers_conv1d_conv3d_and_nested_names():
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Sequential(nn.Conv3d(3, 2, 1), nn.LayerNorm(2)),
        nn.Linear(2, 2), nn.LSTM(2, 2),
    )
    assert names(model) == ["0.weight", "2.0.weight", "3.weight"]


def test_module_types_option():
    assert names(Net(), params={"module_types": ["Linear"]}) == ["fc1.weight", "fc2.weight"]
    assert names(Net(), params={"module_types": ["Embedding", "Conv2d"]}) == ["emb.weight", "conv.weight"]


def test_frozen_parameters_are_never_sparse():
    model = Net()
    model.fc2.weight.requires_grad_(False)
    assert names(model) == ["conv.weight", "fc1.weight"]


@pytest.mark.parametrize("include, expected", [
    (["fc*.weight"], ["fc1.weight", "fc2.weight"]),
    (["emb.weight"], ["emb.weight"]),  # include replaces the module-type rule entirely
    (["*.bias"], ["conv.bias", "bn.bias", "fc1.bias"]),
    (["fc2.weight", "emb.*"], ["emb.weight", "fc2.weight"]),  # model order, not pattern order
    ("conv.weight", ["conv.weight"]),  # a single string is a one-item list
])
def test_include_globs_replace_the_default(include, expected):
    assert names(Net(), params={"include": include}) == expected


@pytest.mark.parametrize("params, expected", [
    ({"exclude": ["conv.*"]}, ["fc1.weight", "fc2.weight"]),
    ({"exclude": ["fc?.weight"]}, ["conv.weight"]),
    ({"exclude": ["*.bias"]}, ["conv.weight", "fc1.weight", "fc2.weight"]),  # matches, removes nothing sparse
    ({"include": ["*"], "exclude": ["*.bias", "bn.*"]}, ["emb.weight", "conv.weight", "fc1.weight", "fc2.weight"]),
])
def test_exclude_removes(params, expected):
    assert names(Net(), params=params) == expected


@pytest.mark.parametrize("params, expected", [
    ({"dense_first_layer": True}, ["fc1.weight", "fc2.weight"]),
    ({"dense_last_layer": True}, ["conv.weight", "fc1.weight"]),
    ({"dense_first_layer": True, "dense_last_layer": True}, ["fc1.weight"]),
    # first/last are taken among the candidates left after include/exclude
    ({"exclude": ["conv.weight"], "dense_first_layer": True}, ["fc2.weight"]),
    ({"include": ["emb.weight", "fc*.weight"], "dense_first_layer": True}, ["fc1.weight", "fc2.weight"]),
])
def test_dense_first_and_last_layer(params, expected):
    assert names(Net(), params=params) == expected


@pytest.mark.parametrize("extra, key, pattern", [
    ({"params": {"include": ["fc3.*"]}}, "params.include", "fc3.*"),
    ({"params": {"include": ["fc1.weight", "nope"]}}, "params.include", "nope"),
    ({"params": {"exclude": ["decoder.*"]}}, "params.exclude", "decoder.*"),
    ({"layer_sparsity": {"head.weight": 0.5}}, "layer_sparsity.head.weight", None),
    # matches a parameter, but not a sparse one
    ({"layer_sparsity": {"bn.weight": 0.5}}, "layer_sparsity.bn.weight", None),
])
def test_patterns_matching_nothing(extra, key, pattern):
    error = recipe_error(Net(), **extra)
    assert error.key == key
    assert f"recipe key '{key}'" in str(error)
    if pattern is not None:
        assert f"pattern '{pattern}' matches no parameter" in str(error)
    assert "fc1.weight" in str(error)  # lists what exists


def test_include_pattern_matching_only_a_frozen_parameter_is_an_error():
    model = Net()
    model.emb.weight.requires_grad_(False)
    assert recipe_error(model, params={"include": ["emb.*"]}).key == "params.include"


@pytest.mark.parametrize("model, extra", [
    (nn.Sequential(nn.Embedding(3, 2), nn.BatchNorm1d(2)), {}),
    (Net(), {"params": {"exclude": ["*"]}}),
    (nn.Sequential(nn.Linear(2, 2)), {"params": {"dense_first_layer": True}}),
    (nn.Sequential(nn.Linear(2, 2)), {"params": {"dense_last_layer": True}}),
])
def test_nothing_selected(model, extra):
    error = recipe_error(model, **extra)
    assert error.key == "params"
    assert "selects no parameter" in str(error)
    first_name = next(model.named_parameters())[0]
    assert first_name in str(error)


def test_uniform_counts_round_half_up():
    # density 0.25: conv 18 * 0.25 = 4.5 -> 5, fc1 20 * 0.25 = 5, fc2 30 * 0.25 = 7.5 -> 8
    specs = sparse_param_specs(Net(), recipe(0.75))
    assert specs == [
        SparseParamSpec("conv.weight", torch.Size([2, 1, 3, 3]), 0.25, 5),
        SparseParamSpec("fc1.weight", torch.Size([5, 4]), 0.25, 5),
        SparseParamSpec("fc2.weight", torch.Size([6, 5]), 0.25, 8),
    ]
    assert [spec.numel for spec in specs] == [18, 20, 30]


@pytest.mark.parametrize("sparsity, expected", [
    (0.0, [18, 20, 30]),       # dense
    (0.5, [9, 10, 15]),
    (0.875, [2, 3, 4]),        # 2.25 -> 2, 2.5 -> 3, 3.75 -> 4
    (0.9375, [1, 1, 2]),       # 1.125 -> 1, 1.25 -> 1, 1.875 -> 2
])
def test_uniform_counts(sparsity, expected):
    assert [spec.active_count for spec in sparse_param_specs(Net(), recipe(sparsity))] == expected


@pytest.mark.parametrize("layer_sparsity, densities, counts", [
    ({"fc2.weight": 0.5}, [0.25, 0.25, 0.5], [5, 5, 15]),
    ({"fc*": 0.5}, [0.25, 0.5, 0.5], [5, 10, 15]),
    ({"conv.weight": 0.0, "fc1.weight": 1.0}, [1.0, 0.0, 0.25], [18, 0, 8]),
    ({"*": 0.875}, [0.125, 0.125, 0.125], [2, 3, 4]),  # 2.25, 2.5, 3.75
])
def test_layer_sparsity_overrides(layer_sparsity, densities, counts):
    specs = sparse_param_specs(Net(), recipe(0.75, layer_sparsity=layer_sparsity))
    assert [spec.name for spec in specs] == ["conv.weight", "fc1.weight", "fc2.weight"]
    assert [spec.density for spec in specs] == pytest.approx(densities, abs=1e-12)
    assert [spec.active_count for spec in specs] == counts


def test_specs_follow_model_order_not_pattern_order():
    specs = sparse_param_specs(Net(), recipe(0.5, params={"include": ["fc2.weight", "conv.weight"]}))
    assert [spec.name for spec in specs] == ["conv.weight", "fc2.weight"]
    assert [spec.shape for spec in specs] == [torch.Size([2, 1, 3, 3]), torch.Size([6, 5])]


def test_subclasses_of_listed_module_types_are_sparse():
    class MyLinear(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(MyLinear(4, 8), torch.nn.MultiheadAttention(8, 2))
    recipe = load_recipe({"method": "static", "sparsity": 0.5})
    names = [spec.name for spec in sparse_param_specs(model, recipe)]
    # MultiheadAttention's out_proj is a Linear subclass; its packed in_proj_weight is not a module weight.
    assert names == ["0.weight", "1.out_proj.weight"]
