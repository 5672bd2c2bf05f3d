"""N:M semi-structured masks (recipe ``structure: n_m``): N active in every M consecutive weights of a row."""
import pytest
import torch

import gsparse
from gsparse import RecipeError, load_recipe
from gsparse.methods import MaskChange
from gsparse.methods.rigl import RigL
from tests.conftest import linear_conv_model, train_structured




@pytest.mark.parametrize("method, n_m", [("rigl", [2, 4]), ("dst_ee", [2, 4]), ("dst_ee", [3, 8])])
def test_every_group_keeps_n_active_through_every_update(method, n_m):
    n, m = n_m
    model = linear_conv_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sparsifier = gsparse.Sparsifier(model, optimizer, {
        "method": method, "sparsity": 1 - n / m, "distribution": "erk", "structure": "n_m", "n_m": n_m, "seed": 3,
        "schedule": {"update_interval": 3, "drop_fraction": 0.3, "drop_fraction_decay": "cosine",
                     "last_update_step": 24}})
    numels = [96 * 24, 40 * 96 * 3, 5 * 40]
    assert [spec.active_count for spec in sparsifier.specs] == [numel // m * n for numel in numels]  # ERK ignored
    grown = []
    for step, grown_now in train_structured(model, optimizer, sparsifier, 27):
        if grown_now is not None:
            grown.append(grown_now)
        for name, mask in sparsifier.masks.items():
            assert mask.reshape(-1, m).sum(1).unique().tolist() == [n], (step, name)
            assert torch.all(dict(model.named_parameters())[name][~mask] == 0)
    assert sparsifier.engine.num_updates == 8
    # first update, drop fraction 0.3 (cosine from step 3 to 24: still 0.3 * 0.989): round(0.3 * N) per group
    per_group = {2: 1, 3: 1}[n]
    assert grown[0] == [numel // m * per_group for numel in numels]
    # the last updates drop below half a weight per group: nothing moves, the groups stay exact
    assert grown[-1] == [0, 0, 0]
    assert sparsifier.metrics()["layers"]["0.weight"]["exploration_degree"] > n / m


def _tiny(method="rigl", **extra):
    """A 1 x 8 layer at 2:4: groups 0-3 and 4-7. The initial mask (seed 0) is 1 0 1 0 | 0 1 1 0."""
    layer = torch.nn.Linear(8, 1, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    sparsifier = gsparse.Sparsifier(layer, optimizer, {
        "method": method, "sparsity": 0.5, "structure": "n_m", **extra})
    assert sparsifier.masks["weight"].int().tolist() == [[1, 0, 1, 0, 0, 1, 1, 0]]
    return layer, optimizer, sparsifier


def _step(layer, optimizer, weight=None, grad=None):
    if weight is not None:
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([weight]))
    layer.weight.grad = torch.tensor([grad]) if grad is not None else torch.zeros_like(layer.weight)
    optimizer.step()


def test_rigl_drops_and_grows_one_weight_in_every_group():
    """Drop fraction 0.5: round(0.5 * 2) = 1 per group. The two smallest active |w| (0.4, 0.5) and the
    two largest inactive |grad| (2, 1) are all in group 0, yet each group drops its own smallest
    active |w| (index 2: 0.4; index 5: 2.0) and grows its own largest inactive |grad| (index 3: 2;
    index 4: 0.3); the active weights' larger gradients do not count."""
    layer, optimizer, sparsifier = _tiny(schedule={"update_interval": 1, "drop_fraction": 0.5})
    _step(layer, optimizer, weight=[0.5, 0, 0.4, 0, 0, 2.0, 3.0, 0], grad=[9, 1, 9, 2, 0.3, 9, 9, -0.2])
    assert sparsifier.masks["weight"].int().tolist() == [[1, 0, 0, 1, 1, 0, 1, 0]]
    assert sparsifier.last_update["grown"] == [2]
    assert layer.weight.tolist() == [[0.5, 0, 0, 0, 0, 0, 3.0, 0]]  # dropped zeroed, grown from zero


def test_dst_ee_grows_the_least_explored_weight_of_each_group():
    """Updates at steps 2 and 4, c = 1, eps = 1. The first update does what RigL does (every inactive
    weight is unexplored, equal bonus): mask 1 0 0 1 | 1 0 1 0, counters 2 0 1 1 | 1 1 2 0.
    At step 4 the bonus is ln(4) / (counter + 1): 1.386 unexplored, 0.693 explored once. Group 0 grows
    index 1 (0.1 + 1.386) over index 2 (0.5 + 0.693), group 1 index 7 (0.1 + 1.386) over index 5
    (0.5 + 0.693), where RigL would take the larger gradients; each drops its smaller active |w|
    (index 3: 0.5; index 4: 0.2)."""
    layer, optimizer, sparsifier = _tiny("dst_ee", method_args={"c": 1.0, "eps": 1.0},
                                         schedule={"update_interval": 2, "drop_fraction": 0.5})
    _step(layer, optimizer)
    _step(layer, optimizer, weight=[0.5, 0, 0.4, 0, 0, 2.0, 3.0, 0], grad=[9, 1, 9, 2, 0.3, 9, 9, -0.2])
    assert sparsifier.masks["weight"].int().tolist() == [[1, 0, 0, 1, 1, 0, 1, 0]]
    assert sparsifier.counters["weight"].tolist() == [[2, 0, 1, 1, 1, 1, 2, 0]]
    _step(layer, optimizer)
    _step(layer, optimizer, weight=[1.0, 0, 0, 0.5, 0.2, 0, 3.0, 0], grad=[0, 0.1, 0.5, 0, 0, 0.5, 0, 0.1])
    assert sparsifier.masks["weight"].int().tolist() == [[1, 1, 0, 0, 0, 0, 1, 1]]
    assert sparsifier.counters["weight"].tolist() == [[3, 1, 1, 1, 1, 1, 3, 1]]
    assert sparsifier.engine.num_updates == 2


@pytest.mark.parametrize("value", [[4, 4], [0, 4], [5, 4], [2], [2, 4, 8], 2, "2:4", [2.0, 4], [True, 4]])
def test_a_bad_n_m_is_one_recipe_error(value):
    with pytest.raises(RecipeError, match=r"recipe key 'n_m': expected \[N, M\], integers with 1 <= N < M"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "n_m", "n_m": value})


def test_n_m_parses_and_fixes_the_sparsity():
    assert load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "n_m"}).n_m == (2, 4)  # the default
    assert load_recipe({"method": "set", "sparsity": 0.875, "structure": "n_m", "n_m": [1, 8]}).n_m == (1, 8)
    assert load_recipe({"method": "static", "sparsity": 0.3333333333, "structure": "n_m", "n_m": [2, 3]}).n_m == (2, 3)
    with pytest.raises(RecipeError, match=r"recipe key 'sparsity': must be 1 - N/M = 0.5 \(within 1e-9\) with "
                                          r"structure n_m 2:4, got 0.75"):
        load_recipe({"method": "rigl", "sparsity": 0.75, "structure": "n_m"})
    with pytest.raises(RecipeError, match="recipe key 'sparsity': must be 1 - N/M = 0.75"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "n_m", "n_m": [1, 4]})
    with pytest.raises(RecipeError, match="recipe key 'n_m': is given, but structure is 'fan_in'"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "fan_in", "n_m": [2, 4]})
    with pytest.raises(RecipeError, match="recipe key 'layer_sparsity': is given, but with structure n_m every "
                                          "sparse layer is 2:4"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "n_m", "layer_sparsity": {"0.weight": 0.9}})


def test_a_layer_whose_rows_are_not_whole_groups_is_refused_by_name_shape_and_m():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv2d(8, 6, 3), torch.nn.Conv2d(6, 4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RecipeError, match=r"recipe key 'n_m': 2:4 needs rows that are whole groups of 4; layer "
                                          r"'2.weight' of shape \(4, 6, 1, 1\) has rows of 6: exclude it"):
        gsparse.Sparsifier(model, optimizer, {"method": "rigl", "sparsity": 0.5, "structure": "n_m"})
    # 8 x 3 x 3 = 72 is whole groups of 4 and of 8; excluding the 6-wide layer makes the recipe run
    sparsifier = gsparse.Sparsifier(model, optimizer, {"method": "rigl", "sparsity": 0.5, "structure": "n_m",
                                                       "params": {"exclude": ["2.weight"]}})
    assert [spec.active_count for spec in sparsifier.specs] == [32, 216]


def test_methods_that_resize_or_select_globally_are_refused(register_temporarily):
    with pytest.raises(RecipeError, match="recipe key 'structure': 'n_m' needs a method whose mask changes are "
                                          "per-layer swaps or selections"):
        load_recipe({"method": "gmp", "sparsity": 0.5, "structure": "n_m",
                     "schedule": {"update_interval": 5, "last_update_step": 10}})

    class GlobalStart(RigL):
        def initial_change(self):
            return MaskChange.reselect(total=sum(layer.target_active for layer in self.layers))

    register_temporarily("test_n_m_global_start", GlobalStart)
    with pytest.raises(ValueError, match="structure n_m: method 'test_n_m_global_start' asked for a reselect over all "
                                         "layers together, which does not keep 2 of every 4 consecutive weights"):
        _tiny(method="test_n_m_global_start")


def test_a_per_layer_resize_is_refused_because_it_would_break_n_of_m(register_temporarily):
    class Resizing(RigL):
        def mask_change(self, step):
            return MaskChange.resize(layer_counts=[layer.numel * 3 // 4 for layer in self.layers])

    register_temporarily("test_n_m_resizing", Resizing)
    layer, optimizer, _ = _tiny(method="test_n_m_resizing")
    with pytest.raises(ValueError, match="structure n_m: method 'test_n_m_resizing' asked for a resize to other "
                                         "counts, which does not keep 2 of every 4 consecutive weights"):
        _step(layer, optimizer, grad=[1.0] * 8)


def test_a_drop_fraction_that_rounds_to_no_swap_per_group_warns():
    with pytest.warns(gsparse.RecipeWarning, match=r"with n_m 1:4 every group swaps round\(0.3 x 1\) = 0 weights "
                                                   r"per update, so the masks never change; give a drop_fraction of "
                                                   r"at least 0.5"):
        load_recipe({"method": "rigl", "sparsity": 0.75, "structure": "n_m", "n_m": [1, 4]})


def test_a_checkpoint_of_another_structure_is_refused_on_load():
    layer = torch.nn.Linear(8, 4, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    unstructured = gsparse.Sparsifier(layer, optimizer, {"method": "rigl", "sparsity": 0.5}).state_dict()
    unstructured["recipe"] = None
    other = torch.nn.Linear(8, 4, bias=False)
    structured = gsparse.Sparsifier(other, torch.optim.SGD(other.parameters(), lr=0.1),
                                    {"method": "rigl", "sparsity": 0.5, "structure": "n_m"})
    with pytest.raises(ValueError, match=r"the checkpoint's masks were trained with structure: unstructured, but "
                                         r"this run's recipe says structure: n_m \(n_m \[2, 4\]\)"):
        structured.load_state_dict(unstructured)
