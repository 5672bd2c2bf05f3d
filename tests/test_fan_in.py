"""Constant fan-in (recipe ``structure: fan_in``): every row keeps the same active count, exactly."""
import pytest
import torch

import gsparse
from gsparse import RecipeError, load_recipe


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 96), torch.nn.ReLU(), torch.nn.Conv1d(96, 40, 3), torch.nn.Flatten(),
                               torch.nn.Linear(40, 5))


def _recipe(method, **extra):
    return {"method": method, "sparsity": 0.9, "distribution": "erk", "structure": "fan_in", "seed": 3,
            "schedule": {"update_interval": 3, "drop_fraction": 0.3, "drop_fraction_decay": "cosine",
                         "last_update_step": 24}, **extra}


@pytest.mark.parametrize("method", ["rigl", "dst_ee", "set", "static"])
def test_every_row_keeps_the_same_active_count_through_every_update(method):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sparsifier = gsparse.Sparsifier(model, optimizer, _recipe(method))
    per_row = {spec.name: spec.active_count // spec.shape[0] for spec in sparsifier.specs}
    assert {spec.name: spec.active_count % spec.shape[0] for spec in sparsifier.specs} == dict.fromkeys(per_row, 0)
    generator = torch.Generator().manual_seed(0)
    changes = []
    for step in range(1, 28):
        optimizer.zero_grad()
        inputs = torch.randn(8, 24, generator=generator)
        outputs = model[4](model[3](model[2](model[1](model[0](inputs)).unsqueeze(-1).expand(-1, -1, 3))))
        torch.nn.functional.cross_entropy(outputs, torch.randint(0, 5, (8,), generator=generator)).backward()
        optimizer.step()
        if sparsifier.last_update and sparsifier.last_update["step"] == step:
            changes.append(sparsifier.last_update["metrics"]["mask_change"])
        for name, mask in sparsifier.masks.items():
            rows = mask.reshape(mask.shape[0], -1).sum(1)
            assert rows.tolist() == [per_row[name]] * mask.shape[0], (name, rows.tolist())
            weight = dict(model.named_parameters())[name]
            assert torch.all(weight[~mask] == 0)
    assert sparsifier.engine.num_updates == (0 if method == "static" else 8)
    if method != "static":
        assert len(changes) == 8 and changes[0] > 0.2  # drop fraction 0.3 at the first update


def test_an_update_drops_and_grows_within_each_row():
    """A 3x6 layer, 3 active per row, drop fraction 1/3: each row drops its smallest |w| and grows
    its largest |grad| among the weights that were inactive, whatever the other rows hold."""
    layer = torch.nn.Linear(6, 3, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    sparsifier = gsparse.Sparsifier(layer, optimizer, {
        "method": "rigl", "sparsity": 0.5, "structure": "fan_in",
        "schedule": {"update_interval": 1, "drop_fraction": 1 / 3}})
    mask = sparsifier.masks["weight"].clone()
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1, 19, dtype=torch.float32).view(3, 6) * mask)
    gradient = torch.tensor([[9.0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 9], [5, 9, 1, 2, 3, 4]])
    layer.weight.grad = gradient.clone()
    optimizer.step()
    new = sparsifier.masks["weight"]
    for row in range(3):
        active = mask[row].nonzero().flatten().tolist()
        inactive = (~mask[row]).nonzero().flatten().tolist()
        dropped = min(active)  # |w| grows with the index, so the lowest active index is the smallest
        grown = max(inactive, key=lambda column: (gradient[row, column].item(), -column))
        expected = mask[row].clone()
        expected[dropped], expected[grown] = False, True
        assert new[row].tolist() == expected.tolist(), row


def test_fan_in_is_refused_for_methods_that_resize_or_select_globally():
    with pytest.raises(RecipeError, match="recipe key 'structure': 'fan_in' needs a method whose mask changes keep "
                                          "every row's active count"):
        load_recipe({"method": "gmp", "sparsity": 0.5, "structure": "fan_in",
                     "schedule": {"update_interval": 5, "last_update_step": 10}})
    with pytest.raises(RecipeError, match="recipe key 'structure'"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "structure": "blocks"})
