"""SNIP (gsparse/methods/snip.py): the one-shot global prune by |g * w| at initialisation."""
from pathlib import Path

import pytest
import torch

import gsparse
import gsparse.methods.snip  # registers the method
from gsparse.selection import reference_top_k
from tests.conftest import assert_resume_bitwise, batch_for_step, small_mlp


def snip_recipe(**method_args) -> dict:
    return {"method": "snip", "sparsity": 0.8, "distribution": "erk", "seed": 4, "method_args": method_args}


def loss_backward(model, optimizer, step):
    inputs, targets = batch_for_step(step)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()


@pytest.mark.parametrize("score_batches,accumulation", [(1, "absolute"), (3, "absolute"), (3, "gradient")])
def test_snip_keeps_the_global_top_sensitivity_then_never_changes(score_batches, accumulation):
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = gsparse.Sparsifier(model, optimizer, snip_recipe(score_batches=score_batches,
                                                                  score_accumulation=accumulation))
    names = [spec.name for spec in sparsifier.specs]
    numel = sum(spec.numel for spec in sparsifier.specs)
    target = sum(spec.active_count for spec in sparsifier.specs)
    parameters = dict(model.named_parameters())
    by_hand = {name: torch.zeros(parameters[name].numel()) for name in names}
    for step in range(1, score_batches + 31):
        loss_backward(model, optimizer, step)
        if step <= score_batches:  # the dense gradient of this batch, before the optimizer hooks
            for name in names:
                sensitivity = (parameters[name].grad * parameters[name].detach()).reshape(-1)
                by_hand[name] += sensitivity.abs() if accumulation == "absolute" else sensitivity
        optimizer.step()
        masks = sparsifier.masks
        total = sum(int(mask.sum()) for mask in masks.values())
        for name, layer in zip(names, sparsifier.engine.layers):
            assert int(layer.mask.sum()) == layer.active
            assert not parameters[name].detach()[~masks[name]].any()
        if step <= score_batches:
            assert total == numel, step  # dense while scoring
            continue
        assert total == target, step  # exact global count from the prune on
        if step == score_batches + 1:
            pooled = torch.cat([by_hand[name].abs() for name in names])
            assert torch.equal(torch.cat([masks[name].reshape(-1) for name in names]),
                               reference_top_k(pooled, None, target))
            chosen = {name: mask.clone() for name, mask in masks.items()}
            densities = [float(mask.float().mean()) for mask in masks.values()]
            assert max(densities) - min(densities) > 0.01  # budgets emerged from the scores
        assert all(torch.equal(masks[name], chosen[name]) for name in names), step  # fixed afterwards
    assert sparsifier.engine.num_updates == 1
    assert sparsifier.update_masks()["num_updates"] == 1  # a forced update changes nothing
    assert all(torch.equal(sparsifier.masks[name], chosen[name]) for name in names)


@pytest.mark.parametrize("optimizer_name", ["sgd_momentum", "adam", "adamw_no_decay"])
def test_sparse_weights_are_the_initial_ones_at_the_prune(optimizer_name):
    model = small_mlp()
    if optimizer_name == "sgd_momentum":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    elif optimizer_name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    sparsifier = gsparse.Sparsifier(model, optimizer, snip_recipe(score_batches=4))
    parameters = dict(model.named_parameters())
    initial = {spec.name: parameters[spec.name].detach().clone() for spec in sparsifier.specs}
    initial_bias = parameters["0.bias"].detach().clone()
    for step in range(1, 5):
        loss_backward(model, optimizer, step)
        optimizer.step()
    assert all(torch.equal(parameters[name].detach(), weight) for name, weight in initial.items())
    loss_backward(model, optimizer, 5)
    sparsifier.engine.start_step()  # what optimizer.step() does first: the prune, on the initial weights
    for name, mask in sparsifier.masks.items():
        assert torch.equal(parameters[name].detach(), initial[name] * mask)
    assert not torch.equal(parameters["0.bias"].detach(), initial_bias)  # dense parameters train (documented)


def test_adamw_weight_decay_still_shrinks_the_weights_while_scoring():
    """The documented limitation: the cancelled gradient does not stop decoupled weight decay."""
    model = small_mlp()
    lr, decay = 1e-2, 0.05
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    sparsifier = gsparse.Sparsifier(model, optimizer, snip_recipe(score_batches=2))
    weight = model[2].weight
    expected = weight.detach().clone()
    for step in range(1, 3):
        loss_backward(model, optimizer, step)
        optimizer.step()
        expected.mul_(1 - lr * decay)
    assert torch.equal(weight.detach(), expected)
    assert sparsifier.engine.num_updates == 0


@pytest.mark.parametrize("resume_at", [2, 9])  # while scoring (the score is restored) and after the prune
def test_resume_is_bitwise(resume_at):
    sparsifier, _ = assert_resume_bitwise(snip_recipe(score_batches=3, score_accumulation="gradient"), 20, resume_at)
    assert sparsifier.engine.num_updates == 1


@pytest.mark.parametrize("args,key", [({"score_batches": 0}, "method_args.score_batches"),
                                      ({"score_batches": 1.5}, "method_args.score_batches"),
                                      ({"score_accumulation": "sum"}, "method_args.score_accumulation"),
                                      ({"batches": 2}, "method_args.batches")])
def test_bad_options_name_the_key(args, key):
    with pytest.raises(gsparse.RecipeError, match=key):
        gsparse.load_recipe(snip_recipe(**args))


def test_the_recipe_file_validates():
    recipe = gsparse.load_recipe(Path(__file__).parents[1] / "recipes" / "snip.yaml")
    assert recipe.method == "snip" and recipe.method_args["score_batches"] == 1
