"""OptG: a mask score accumulated every step from dL/d(m*w) * w (pruned weights too, which keep
their value while pruned), binarised at epoch starts by a global sort on the sigmoid schedule."""
import math

import pytest
import torch

import gsparse
import gsparse.methods.optg  # noqa: F401  (registers the method)
from gsparse.selection import reference_top_k
from tests.conftest import assert_resume_bitwise, batch_for_step, small_mlp

SPE, EPOCHS = 5, 6


def recipe(**method_args) -> dict:
    return {"method": "optg", "sparsity": 0.8, "distribution": "uniform", "seed": 2,
            "method_args": {"steps_per_epoch": SPE, "epochs": EPOCHS, "alpha": 1.0, **method_args}}


def step(model, optimizer, index):
    inputs, targets = batch_for_step(index)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.step()


def expected_total(sparsifier, step_index) -> int:
    numel = sum(spec.numel for spec in sparsifier.specs)
    target = sum(spec.active_count for spec in sparsifier.specs)
    epoch = (step_index - 1) // SPE + 1
    if epoch == 1:
        return numel
    return numel - round(target_fraction(epoch) * (numel - target))


def target_fraction(epoch: int) -> float:
    return 1 / (1 + math.exp(-1.0 * (epoch - EPOCHS / 2)))


def test_sparsity_follows_the_sigmoid_and_the_global_sort_of_the_scores():
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe())
    names = [spec.name for spec in sparsifier.specs]
    for index in range(1, SPE * EPOCHS + 1):
        if index > 1 and (index - 1) % SPE == 0:  # the reselect at the start of this step uses these
            scores = torch.cat([layer.extra["score"].clone() for layer in sparsifier.engine.layers])
        step(model, optimizer, index)
        masks = [sparsifier.masks[name].reshape(-1) for name in names]
        assert sum(int(m.sum()) for m in masks) == expected_total(sparsifier, index), index
        assert [layer.active for layer in sparsifier.engine.layers] == [int(m.sum()) for m in masks]
        if index > 1 and (index - 1) % SPE == 0:
            assert torch.equal(torch.cat(masks), reference_top_k(scores, None, expected_total(sparsifier, index)))
    densities = [float(m.float().mean()) for m in sparsifier.masks.values()]
    assert max(densities) - min(densities) > 0.05  # layer budgets emerge from the global sort
    assert sparsifier.engine.num_updates == EPOCHS - 1


def test_scores_accumulate_the_mask_gradient_and_pruned_weights_come_back_with_their_value():
    model = small_mlp()
    parameters = dict(model.named_parameters())
    initial = {name: p.detach().reshape(-1).clone() for name, p in parameters.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights never move: scores are checkable
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe())
    names = [spec.name for spec in sparsifier.specs]
    expected = {name: torch.zeros(initial[name].numel()) for name in names}
    previous = {name: sparsifier.masks[name].reshape(-1).clone() for name in names}
    revived = 0
    for index in range(1, EPOCHS * SPE + 1):
        epoch = (index - 1) // SPE + 1
        inputs, targets = batch_for_step(index)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        grads = {name: parameters[name].grad.detach().reshape(-1).clone() for name in names}
        optimizer.step()
        for name, layer in zip(names, sparsifier.engine.layers):
            # dL/d(m*w) times the weight's value: the kept weight, or the dormant value of a pruned one
            expected[name] -= target_fraction(epoch) * grads[name] * initial[name]
            assert torch.allclose(layer.extra["score"], expected[name], rtol=1e-5, atol=1e-7)
            weight = parameters[name].detach().reshape(-1)
            mask = sparsifier.masks[name].reshape(-1)
            assert torch.equal(weight[mask], initial[name][mask])  # revived weights come back with their value
            assert not weight[~mask].any()  # forward sees m * w = 0
            assert torch.equal(layer.extra["dormant"][~mask], initial[name][~mask])
            revived += int((mask & ~previous[name]).sum())
            previous[name] = mask.clone()
    assert revived > 0  # the global sort revived pruned weights


def test_resume_is_bitwise():
    assert_resume_bitwise(recipe(), 24, 13)  # mid-epoch: the score and the dormant values are restored


def test_bad_options_name_the_key():
    with pytest.raises(gsparse.RecipeError, match="method_args.epochs.*required"):
        gsparse.load_recipe({"method": "optg", "sparsity": 0.9, "method_args": {"steps_per_epoch": 3}})
    with pytest.raises(gsparse.RecipeError, match="method_args.alpha"):
        gsparse.load_recipe(recipe(alpha=0))
    assert gsparse.load_recipe("recipes/optg.yaml").method_args["alpha"] == 0.5
