"""Block sparsity (recipe ``structure: block``): masks are whole blocks of the weight as a matrix."""
import pytest
import torch

import gsparse
from gsparse import RecipeError, hashrng, load_recipe
from gsparse.methods import MaskChange
from gsparse.methods.rigl import RigL
from tests.conftest import linear_conv_model, train_structured


def _blocks(mask, block):
    """Per block of ``mask`` (viewed as shape[0] x rest): the number of active elements."""
    rows = mask.shape[0]
    matrix = mask.reshape(rows, -1)
    grid = matrix.reshape(rows // block[0], block[0], matrix.shape[1] // block[1], block[1])
    return grid.sum(dim=(1, 3))




@pytest.mark.parametrize("method", ["rigl", "dst_ee"])
def test_every_mask_is_whole_blocks_through_every_update(method):
    model = linear_conv_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sparsifier = gsparse.Sparsifier(model, optimizer, {
        "method": method, "sparsity": 0.9, "distribution": "erk", "structure": "block", "block_size": [4, 8],
        "seed": 3, "params": {"exclude": ["4.weight"]},  # 5 rows: not tiled by 4-row blocks
        "schedule": {"update_interval": 3, "drop_fraction": 0.3, "drop_fraction_decay": "cosine",
                     "last_update_step": 24}})
    # ERK at 90%: 0.weight (96 x 24) would get 640.8 weights -> 20 blocks of 32; 2.weight (40 x 96x3) 742.2 -> 23
    assert {spec.name: spec.active_count for spec in sparsifier.specs} == {"0.weight": 640, "2.weight": 736}
    changes = []
    for step, grown_now in train_structured(model, optimizer, sparsifier, 27):
        if grown_now is not None:
            changes.append(grown_now)
        for spec in sparsifier.specs:
            mask = sparsifier.masks[spec.name]
            per_block = _blocks(mask, (4, 8))
            assert bool(((per_block == 0) | (per_block == 32)).all()), (step, spec.name)
            assert int(mask.sum()) == spec.active_count
            assert torch.all(dict(model.named_parameters())[spec.name][~mask] == 0)
    assert sparsifier.engine.num_updates == 8
    # drop fraction 0.3 at the first update: round(0.3 * 20) = 6 and round(0.3 * 23) = 7 blocks of 32
    assert changes[0] == [6 * 32, 7 * 32] and all(count % 32 == 0 for grown in changes for count in grown)


def _tiny(sparsity=0.5, method="rigl", **extra):
    layer = torch.nn.Linear(6, 4, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    sparsifier = gsparse.Sparsifier(layer, optimizer, {
        "method": method, "sparsity": sparsity, "structure": "block", "block_size": 2,
        "schedule": {"update_interval": 1, "drop_fraction": 0.34}, **extra})
    return layer, optimizer, sparsifier


def test_the_initial_mask_is_the_top_blocks_of_the_uniform_sums():
    _, _, sparsifier = _tiny()
    uniforms = hashrng.uniform(hashrng.stream_key(0, "init", "weight", 0), 0, 24, torch.device("cpu")).view(4, 6)
    sums = [sum(uniforms[r, c].double() for r in (top, top + 1) for c in (left, left + 1))
            for top in (0, 2) for left in (0, 2, 4)]
    best = sorted(range(6), key=lambda block: -sums[block])[:3]  # 50% of 24 weights: 3 blocks of 4
    assert sorted(best) == [0, 2, 5]
    assert sparsifier.masks["weight"].int().tolist() == [[1, 1, 0, 0, 1, 1],
                                                         [1, 1, 0, 0, 1, 1],
                                                         [0, 0, 0, 0, 1, 1],
                                                         [0, 0, 0, 0, 1, 1]]


def test_an_update_drops_and_grows_whole_blocks_by_their_score_sums():
    """2 x 2 blocks numbered 0 1 2 / 3 4 5; active 0, 2, 5; one block swaps (round(0.34 * 3)).

    Drop: block 5 has the smallest |w| sum (3.75) although it holds the largest weight but one.
    Grow: blocks 1 and 4 tie at |grad| sum 4 (the lower index, 1, wins) although block 3 holds the
    largest single inactive gradient; the active blocks' larger gradients do not count."""
    layer, optimizer, sparsifier = _tiny()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1, 0, 0, 5, -5],
                                         [1, 1, 0, 0, 0.5, 0.5],
                                         [0, 0, 0, 0, 0.25, 0.25],
                                         [0, 0, 0, 0, 0.25, 3.0]]))
    layer.weight.grad = torch.tensor([[10.0, 10, 1, 1, 10, 10],
                                      [10, 10, 1, -1, 10, 10],
                                      [0, 0, 2, -2, 100, 100],
                                      [0, 3.9, 0, 0, 100, 100]])
    optimizer.step()
    assert sparsifier.masks["weight"].int().tolist() == [[1, 1, 1, 1, 1, 1],
                                                         [1, 1, 1, 1, 1, 1],
                                                         [0, 0, 0, 0, 0, 0],
                                                         [0, 0, 0, 0, 0, 0]]
    assert sparsifier.last_update["grown"] == [4]


def test_active_counts_round_to_whole_blocks_and_keep_at_least_one():
    def counts(sparsity, **extra):
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        recipe = {"method": "static", "sparsity": sparsity, "structure": "block", "block_size": 4, **extra}
        return [spec.active_count for spec in gsparse.Sparsifier(model, optimizer, recipe).specs]

    assert counts(0.6) == [32, 32]  # 25.6 weights = 1.6 blocks of 16 -> 2
    assert counts(0.75) == [16, 16]  # exactly 1 block
    assert counts(0.95) == [16, 16]  # 3.2 weights: 0.2 blocks -> at least 1
    assert counts(0.6, layer_sparsity={"1.weight": 1.0}) == [32, 0]  # a layer the recipe empties stays empty


@pytest.mark.parametrize("value", [0, [4], [2, 0], "4", True, 2.5, [4, 4, 4]])
def test_a_bad_block_size_is_one_recipe_error(value):
    with pytest.raises(RecipeError, match=r"recipe key 'block_size': expected a positive integer b \(b x b blocks\) "
                                          r"or a list \[rows, cols\] of two"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "block", "block_size": value})


def test_block_size_parses_and_needs_structure_block():
    assert load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "block"}).block_size == (4, 4)
    assert load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "block", "block_size": [2, 8]}).block_size \
        == (2, 8)
    with pytest.raises(RecipeError, match="recipe key 'block_size': is given, but structure is 'unstructured'"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "block_size": 4})


def test_a_layer_the_blocks_do_not_tile_is_refused_by_name_and_shape():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv2d(8, 6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RecipeError, match=r"recipe key 'block_size': 4 x 4 blocks do not tile layer '1.weight' of "
                                          r"shape \(6, 8, 3, 3\) \(a 6 x 72 matrix\): exclude it"):
        gsparse.Sparsifier(model, optimizer, {"method": "rigl", "sparsity": 0.5, "structure": "block"})


def test_methods_that_select_globally_or_assign_are_refused(register_temporarily):
    with pytest.raises(RecipeError, match="recipe key 'structure': 'block' needs a method whose mask changes are "
                                          "per-layer swaps"):
        load_recipe({"method": "gmp", "sparsity": 0.5, "structure": "block",
                     "schedule": {"update_interval": 5, "last_update_step": 10}})

    class GlobalStart(RigL):
        def initial_change(self):
            return MaskChange.reselect(total=sum(layer.target_active for layer in self.layers))

    class Assigning(RigL):
        def mask_change(self, step):
            return MaskChange.assign()

    register_temporarily("test_block_global_start", GlobalStart)
    register_temporarily("test_block_assigning", Assigning)
    with pytest.raises(ValueError, match="structure block: method 'test_block_global_start' asked for a reselect "
                                         "over all layers together, which does not keep masks in whole blocks"):
        _tiny(method="test_block_global_start")
    layer, optimizer, _ = _tiny(method="test_block_assigning")
    layer.weight.grad = torch.ones(4, 6)
    with pytest.raises(ValueError, match="structure block: method 'test_block_assigning' asked for an elementwise "
                                         "assign"):
        optimizer.step()
