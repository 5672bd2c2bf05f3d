"""MEST (Yuan et al. 2021): importance |w| + lambda * |sparse grad|, random growth, Elastic Mutation
(a swap of p * N^l weights per layer, p decaying at milestones until stop_step) and EM&S (grow to
s - p, train, remove back to s). Single process; ZeRO equality is in tests/method_cases/mest.py."""
import pytest
import torch

import gsparse
import gsparse.methods.mest  # registers the method
from gsparse.distributions import round_half_up
from gsparse.methods.base import LayerView
from gsparse.selection import reference_top_k
from tests.conftest import assert_resume_bitwise, batch_for_step, small_mlp


def mest_recipe(**method_args) -> dict:
    interval = method_args.pop("update_interval", 10)
    return {"method": "mest", "sparsity": 0.8, "distribution": "uniform", "seed": 4,
            "schedule": {"update_interval": interval}, "method_args": method_args}


def build(recipe, seed=0):
    model = small_mlp(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe)
    return model, optimizer, sparsifier


def backward(model, optimizer, step):
    inputs, targets = batch_for_step(step)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()


def train(model, optimizer, first, last, before_step=None):
    for step in range(first, last + 1):
        backward(model, optimizer, step)
        if before_step is not None:
            before_step(step)
        optimizer.step()


def test_sparse_gradient_keeps_a_small_weight_with_a_large_gradient():
    """At a mutation, the smallest active weight is given a large gradient: magnitude pruning
    (lambda = 0) drops it, MEST (lambda > 0) keeps it; the drop is the exact bottom-k of Eq. 1."""
    fraction, step = 0.05, 10

    def run(grad_coefficient):
        model, optimizer, sparsifier = build(mest_recipe(mutation_fraction=fraction, grad_coefficient=grad_coefficient,
                                                         regrow_dropped=False))
        train(model, optimizer, 1, step - 1)
        weight = model[0].weight
        mask = sparsifier.masks["0.weight"].reshape(-1).clone()
        backward(model, optimizer, step)
        flat_w, flat_g = weight.detach().reshape(-1), weight.grad.reshape(-1)
        small = int(torch.where(mask, flat_w.abs(), torch.tensor(float("inf"))).argmin())
        flat_g[small] = 5.0
        flat_g[~mask] = 100.0  # inactive gradients must not count (they cannot be dropped anyway)
        score = flat_w.abs() + grad_coefficient * torch.where(mask, flat_g, torch.zeros_like(flat_g)).abs()
        k = round_half_up(fraction * weight.numel())
        expected_drop = reference_top_k(-score, mask, k)
        optimizer.step()
        new_mask = sparsifier.masks["0.weight"].reshape(-1)
        assert torch.equal(mask & ~new_mask, expected_drop)
        assert int((new_mask & ~mask).sum()) == k and int(new_mask.sum()) == int(mask.sum())
        return bool(new_mask[small])

    assert run(0.0) is False  # magnitude pruning drops the smallest weight
    assert run(1.0) is True  # MEST keeps it: its gradient says it is changing fast


def test_drop_score_ignores_the_gradient_of_inactive_weights():
    method = gsparse.load_recipe(mest_recipe(grad_coefficient=2.0)).build_method()
    assert method.needs_grad
    view = LayerView(name="a", step=1, weight=torch.tensor([0.5, 0.0, -0.1, 0.0]),
                     mask=torch.tensor([True, False, True, False]), counter=torch.zeros(4, dtype=torch.uint8),
                     grad=torch.tensor([0.1, 9.0, -0.3, -9.0]), global_start=0, seed=0)
    assert torch.allclose(method.drop_score(view), torch.tensor([0.7, 0.0, 0.7, 0.0]))
    assert not gsparse.load_recipe(mest_recipe()).build_method().needs_grad  # lambda 0: no gradient needed


def test_ems_prune_back_undoes_a_useless_growth_and_keeps_the_existing_weights():
    """EM&S grows p * N^l random weights, trains, removes back to s: grown weights that stay useless
    (zero gradient, so they stay zero) are removed, and every weight of the old mask survives."""
    recipe = mest_recipe(mode="ems", mutation_fraction=0.1, grad_coefficient=1.0)
    model, optimizer, sparsifier = build(recipe)
    train(model, optimizer, 1, 9)
    original = {name: mask.clone() for name, mask in sparsifier.masks.items()}
    parameters = dict(model.named_parameters())

    def starve_new_weights(step):
        for name, mask in original.items():
            parameters[name].grad[~mask] = 0.0

    train(model, optimizer, 10, 10, starve_new_weights)  # the growth (s - p)
    for spec in sparsifier.specs:
        grown = sparsifier.masks[spec.name] & ~original[spec.name]
        assert int(grown.sum()) == round_half_up(0.1 * spec.numel) > 0
    train(model, optimizer, 11, 19, starve_new_weights)
    train(model, optimizer, 20, 20, starve_new_weights)  # the prune-back to s
    for spec in sparsifier.specs:
        assert torch.equal(sparsifier.masks[spec.name], original[spec.name])
    assert sparsifier.engine.num_updates == 2


def test_ems_prune_back_keeps_a_grown_weight_that_became_important():
    """The undo is by importance over all active weights: a grown weight that learned a large value
    survives the prune-back, and an old weight goes instead."""
    model, optimizer, sparsifier = build(mest_recipe(mode="ems", mutation_fraction=0.1))
    train(model, optimizer, 1, 9)
    original = sparsifier.masks["2.weight"].clone()
    train(model, optimizer, 10, 19)  # grown at step 10
    grown = (sparsifier.masks["2.weight"] & ~original).reshape(-1)
    chosen = int(grown.nonzero()[0])
    with torch.no_grad():
        model[2].weight.view(-1)[chosen] = 10.0
    train(model, optimizer, 20, 20)
    after = sparsifier.masks["2.weight"].reshape(-1)
    assert after[chosen] and int(after.sum()) == sparsifier.specs[1].active_count
    assert int((original.reshape(-1) & ~after).sum()) >= 1


def test_mutation_fraction_decays_at_milestones_and_the_mask_freezes_at_stop_step():
    recipe = mest_recipe(update_interval=5, mutation_fraction=0.1, decay_factor=0.5, decay_milestones=[20, 30],
                         stop_step=40, regrow_dropped=False)
    model, optimizer, sparsifier = build(recipe)
    method = sparsifier.engine.method
    assert [method.mutation_fraction_at(t) for t in (19, 20, 29, 30, 99)] == [0.1, 0.05, 0.05, 0.025, 0.025]
    expected_fraction = {5: 0.1, 10: 0.1, 15: 0.1, 20: 0.05, 25: 0.05, 30: 0.025, 35: 0.025}
    for step in range(1, 56):
        before = {name: mask.clone() for name, mask in sparsifier.masks.items()}
        train(model, optimizer, step, step)
        for spec in sparsifier.specs:
            after = sparsifier.masks[spec.name]
            swapped = int((after & ~before[spec.name]).sum())
            assert int((before[spec.name] & ~after).sum()) == swapped
            assert swapped == round_half_up(expected_fraction.get(step, 0.0) * spec.numel), (step, spec.name)
    assert sparsifier.engine.num_updates == len(expected_fraction)


def expected_active(spec, step, mode, fraction, interval, stop):
    """Active count after ``step`` for the EM&S cycles of the count test (EM: always the target)."""
    if mode == "em":
        return spec.active_count
    grow_steps = [t for t in range(interval, stop + 1, 2 * interval) if t + interval <= stop]
    in_grown_phase = any(t <= step < t + interval for t in grow_steps)
    return spec.active_count + round_half_up(fraction * spec.numel) if in_grown_phase else spec.active_count


@pytest.mark.parametrize("mode", ["em", "ems"])
def test_active_counts_are_exact_every_step(mode):
    interval, fraction, stop = 5, 0.1, 32
    model, optimizer, sparsifier = build(mest_recipe(mode=mode, update_interval=interval, mutation_fraction=fraction,
                                                     stop_step=stop, grad_coefficient=0.5))
    weights = dict(model.named_parameters())
    changes = 0
    for step in range(1, 41):
        before = {name: mask.clone() for name, mask in sparsifier.masks.items()}
        train(model, optimizer, step, step)
        changed = False
        for spec, layer in zip(sparsifier.specs, sparsifier.engine.layers):
            mask = sparsifier.masks[spec.name]
            assert int(mask.sum()) == layer.active == expected_active(spec, step, mode, fraction, interval, stop), \
                (step, spec.name)
            assert not weights[spec.name].detach()[~mask].any()
            changed |= not torch.equal(mask, before[spec.name])
            if step > 30:
                assert torch.equal(mask, before[spec.name])  # fixed after the last mutation before stop_step
        changes += changed
    assert sparsifier.engine.num_updates == changes == 6  # em: 5..30; ems: grow 5/15/25, prune 10/20/30


@pytest.mark.parametrize("mode", ["em", "ems"])
def test_resume_is_bitwise(mode):
    recipe = mest_recipe(mode=mode, update_interval=6, mutation_fraction=0.1, grad_coefficient=1.0,
                         decay_milestones=[20], stop_step=40)
    assert_resume_bitwise(recipe, 45, 15)  # ems: inside a grown (s - p) phase


@pytest.mark.parametrize("key, value", [("mode", "emss"), ("mutation_fraction", 1.5), ("decay_factor", -0.1),
                                        ("decay_milestones", [30, 20]), ("decay_milestones", ["x"]),
                                        ("stop_step", 0), ("grad_coefficient", -1.0), ("regrow_dropped", "yes"),
                                        ("mutation_rate", 0.1)])
def test_bad_options_raise_a_recipe_error_naming_the_key(key, value):
    with pytest.raises(gsparse.RecipeError, match=f"method_args.{key}"):
        gsparse.load_recipe(mest_recipe(**{key: value}))


def test_recipes_load():
    em = gsparse.load_recipe("recipes/mest.yaml").build_method()
    ems = gsparse.load_recipe("recipes/mest_ems.yaml").build_method()
    assert (em.args.mode, em.args.mutation_fraction) == ("em", 0.02)
    assert (ems.args.mode, ems.args.mutation_fraction) == ("ems", 0.05)
    default = gsparse.load_recipe(mest_recipe(mode="ems")).build_method()
    assert default.args.mutation_fraction == 0.05  # the reference scripts' EM&S value
