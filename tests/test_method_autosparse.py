"""AutoSparse: gradient annealing in backward, the learned threshold sigmoid(s), alpha's per-epoch
schedule, masks |w| > sigmoid(s), runaway sparsity, option checks and bitwise resume."""
import math

import pytest
import torch

import gsparse
import gsparse.methods.autosparse  # registers the method
from gsparse.methods.autosparse import AutoSparse, RunawaySparsity, alpha_decay
from gsparse.methods.base import LayerInfo
from gsparse.selection import reference_top_k
from tests.conftest import batch_for_step, small_mlp


def recipe(**method_args) -> dict:
    args = {"steps_per_epoch": 4, "epochs": 5, "alpha0": 0.8, **method_args}
    return {"method": "autosparse", "sparsity": 0.8, "distribution": "uniform", "seed": 1, "method_args": args}


def thresholds_of(model) -> dict[str, torch.nn.Parameter]:
    return {name[:-len("_s")]: p for name, p in model.named_parameters() if name.endswith("weight_s")}


def train(model, optimizer, first, last, check=None):
    for step in range(first, last + 1):
        inputs, targets = batch_for_step(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        if check:
            check(step)
        optimizer.step()


def test_pruned_weights_get_alpha_times_their_gradient_and_exactly_zero_at_alpha_zero():
    weight_values = torch.tensor([0.5, -0.3, 0.004, -0.006, 0.0])
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    kept = torch.tensor([True, True, False, False, False])
    for alpha in (0.5, 0.0):
        method = AutoSparse(steps_per_epoch=1, epochs=1, alpha0=alpha, alpha_decay="constant")
        weight = weight_values.clone().requires_grad_(True)
        s = torch.full((1,), -5.0, requires_grad=True)
        out = method.forward_weight(weight, {"s": s}, LayerInfo("w", tuple(weight.shape), weight.numel(), 0))
        threshold = torch.sigmoid(torch.tensor(-5.0))
        assert torch.equal(out != 0, kept)
        assert torch.allclose(out[kept], torch.sign(weight_values[kept]) * (weight_values[kept].abs() - threshold))
        (out * upstream).sum().backward()
        slope = torch.where(kept, torch.tensor(1.0), torch.tensor(alpha))
        assert torch.equal(weight.grad, upstream * slope)
        if alpha == 0.0:
            assert torch.equal(weight.grad[~kept], torch.zeros(3))  # STR: no gradient to pruned weights
        else:
            assert (weight.grad[~kept] == alpha * upstream[~kept]).all() and (weight.grad[~kept] != 0).all()
        # dL/ds = -sum(upstream * sign(w) * h') * sigmoid'(s): s trains through T
        expected_s = -(upstream * torch.sign(weight_values) * slope).sum() * threshold * (1 - threshold)
        assert torch.allclose(s.grad, expected_s.reshape(1))


def test_threshold_parameter_trains_and_weight_decay_applies_to_it():
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe())
    thresholds = thresholds_of(model)
    assert sorted(thresholds) == ["0.weight", "2.weight", "4.weight"]
    assert [spec.name for spec in sparsifier.specs] == ["0.weight", "2.weight", "4.weight"]
    group = next(g for g in optimizer.param_groups if any(p is thresholds["0.weight"] for p in g["params"]))
    assert group["weight_decay"] == 0.01  # the optimizer's defaults, not the no-decay group
    for step in range(1, 6):
        before = {name: s.detach().clone() for name, s in thresholds.items()}
        train(model, optimizer, step, step,
              check=lambda _: [(s.grad is not None and float(s.grad.abs()) > 0) or pytest.fail(name)
                               for name, s in thresholds.items()])
        for name, s in thresholds.items():
            expected = before[name] - 0.1 * (s.grad + 0.01 * before[name])  # SGD with decay on s
            assert torch.allclose(s.detach(), expected, rtol=0, atol=1e-7)
    assert all(float(s.detach()) != -5.0 for s in thresholds.values())


def test_alpha_decay_formulas_of_the_paper():
    T = 10
    for i in (0, 3, 7, 10, 12):
        p = min(i / T, 1.0)
        cosine = (1 + math.cos(math.pi * p)) / 2
        sigmoid = 1 - 1 / (1 + math.exp(-(-6 + 12 * p)))
        assert alpha_decay("cosine", i, T) == pytest.approx(cosine)
        assert alpha_decay("sigmoid", i, T) == pytest.approx(sigmoid)
        assert alpha_decay("sigmoid_cosine", i, T) == pytest.approx(max(cosine, sigmoid))
        assert alpha_decay("exponential", i, T, beta=0.5) == pytest.approx(math.exp(-0.5 * i))
        assert alpha_decay("linear", i, T) == pytest.approx(1 - p)
        assert alpha_decay("constant", i, T) == 1.0


def test_alpha_follows_the_schedule_at_epoch_boundaries_in_the_backward():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe(alpha_zero_epoch=4))
    method = sparsifier.engine.method
    linears = [model[0], model[2], model[4]]
    seen = []

    def expected_alpha(step):
        epoch = (step - 1) // 4
        return 0.0 if epoch >= 4 else 0.8 * max((1 + math.cos(math.pi * epoch / 5)) / 2,
                                                  1 - 1 / (1 + math.exp(-(-6 + 12 * epoch / 5))))

    def check(step):
        alpha = method.alpha
        assert alpha == pytest.approx(expected_alpha(step)) and method.alpha_at(step) == alpha
        seen.append(alpha)
        # the reference: the gradient w.r.t. the forward weight w~, times 1 (kept) or alpha (pruned)
        effective = []
        for linear in linears:
            w, T = linear.weight.detach(), torch.sigmoid(thresholds_of(model)[_name(model, linear)].detach())
            effective.append((torch.sign(w) * torch.relu(w.abs() - T)).requires_grad_(True))
        inputs, targets = batch_for_step(step)
        h = torch.relu(torch.nn.functional.linear(inputs, effective[0], linears[0].bias.detach()))
        h = torch.relu(torch.nn.functional.linear(h, effective[1], linears[1].bias.detach()))
        torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, effective[2], linears[2].bias.detach()),
                                          targets).backward()
        pruned_total = 0
        for linear, w_tilde in zip(linears, effective):
            kept = linear.weight.detach().abs() > torch.sigmoid(thresholds_of(model)[_name(model, linear)].detach())
            expected = torch.where(kept, w_tilde.grad, alpha * w_tilde.grad)
            assert torch.allclose(linear.weight.grad, expected, rtol=1e-6, atol=1e-9), step
            pruned_total += int((~kept).sum())
        assert pruned_total > 0

    train(model, optimizer, 1, 24, check)
    assert sparsifier.engine.method.steps_begun == 24
    epochs = [seen[i:i + 4] for i in range(0, 24, 4)]
    assert all(len(set(epoch)) == 1 for epoch in epochs)  # fixed within an epoch
    assert [epoch[0] for epoch in epochs][:4] == sorted([epoch[0] for epoch in epochs][:4], reverse=True)
    assert epochs[0][0] == 0.8 and epochs[1][0] < 0.8 and epochs[4][0] == 0.0 and epochs[5][0] == 0.0


def _name(model, linear) -> str:
    return next(f"{name}.weight" for name, module in model.named_modules() if module is linear)


def test_masks_are_the_threshold_rule_every_step_with_exact_counts_and_nothing_zeroed():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe())
    parameters = dict(model.named_parameters())
    names = [spec.name for spec in sparsifier.specs]
    changes = 0
    for step in range(1, 21):
        before = {name: parameters[name].detach().clone() for name in names}
        rule = {name: before[name].abs() > torch.sigmoid(parameters[f"{name}_s"].detach()) for name in names}
        previous = {name: mask.clone() for name, mask in sparsifier.masks.items()}
        train(model, optimizer, step, step)
        layer_metrics = sparsifier.metrics()["layers"]
        for name, layer in zip(names, sparsifier.engine.layers):
            mask = sparsifier.masks[name]
            assert torch.equal(mask, rule[name]), (step, name)  # |w| > sigmoid(s) as this step's forward saw them
            assert layer.active == int(mask.sum())
            assert layer_metrics[name]["density"] == pytest.approx(float(mask.float().mean()))
            assert (parameters[name].detach() != before[name])[~mask].all()  # pruned weights still train
            changes += int((mask != previous[name]).sum()) if step > 1 else 0
    assert changes > 0  # weights cross the learned threshold both ways
    assert sparsifier.metrics()["density"] < 1.0


def test_a_fully_pruned_layer_warns_and_shows_in_the_per_layer_density():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe(s0=3.0))  # T = sigmoid(3) = 0.95 > every |w|
    with pytest.warns(RunawaySparsity, match="'0.weight' is fully pruned"):
        train(model, optimizer, 1, 1)
    layers = sparsifier.metrics()["layers"]
    assert all(layers[name]["density"] == 0.0 for name in layers)
    assert all(layer.active == 0 for layer in sparsifier.engine.layers)


def test_bad_options_raise_recipe_errors_naming_the_key():
    with pytest.raises(gsparse.RecipeError, match="method_args.steps_per_epoch"):
        gsparse.load_recipe(recipe(steps_per_epoch=0))
    with pytest.raises(gsparse.RecipeError, match="method_args.alpha_decay.*sigmoid_cosine"):
        gsparse.load_recipe(recipe(alpha_decay="step"))
    with pytest.raises(gsparse.RecipeError, match=r"method_args.alpha0.*\[0.0, 1.0\]"):
        gsparse.load_recipe(recipe(alpha0=1.5))
    with pytest.raises(gsparse.RecipeError, match="method_args.epochs.*required"):
        gsparse.load_recipe({**recipe(), "method_args": {"steps_per_epoch": 10}})
    with pytest.raises(gsparse.RecipeError, match="method_args.s0.*a number"):
        gsparse.load_recipe(recipe(s0="low"))
    assert gsparse.load_recipe("recipes/autosparse.yaml").method_args["alpha_decay"] == "sigmoid_cosine"


def test_resume_mid_epoch_is_bitwise_and_restores_alpha():
    args = {"steps_per_epoch": 5, "epochs": 6, "alpha_zero_epoch": 4}

    def run(first, last, state=None):
        model = small_mlp(seed=7 if state else 0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
        sparsifier = gsparse.Sparsifier(model, optimizer, recipe(**args))
        if state:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sparsifier.load_state_dict(state["sparsifier"])
            assert sparsifier.engine.method.alpha == sparsifier.engine.method.alpha_at(first)
        train(model, optimizer, first, last)
        return model, optimizer, sparsifier

    model, _, sparsifier = run(1, 30)
    first_model, first_optimizer, first_sparsifier = run(1, 12)
    state = {"model": first_model.state_dict(), "optimizer": first_optimizer.state_dict(),
             "sparsifier": first_sparsifier.state_dict()}
    resumed_model, _, resumed = run(13, 30, state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()))
    assert all(torch.equal(sparsifier.masks[n], resumed.masks[n]) for n in sparsifier.masks)
    assert all(torch.equal(sparsifier.counters[n], resumed.counters[n]) for n in sparsifier.counters)
    assert [layer.active for layer in sparsifier.engine.layers] == [layer.active for layer in resumed.engine.layers]
    assert sparsifier.engine.layer_active_steps == resumed.engine.layer_active_steps
    assert resumed.engine.method.steps_begun == 30


def test_topkast_ga_keeps_the_top_budget_in_forward_and_anneals_the_rest():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sparsifier = gsparse.Sparsifier(model, optimizer, {**recipe(), "method": "topkast_ga", "distribution": "erk"})
    method = sparsifier.engine.method
    linears = {f"{i}.weight": model[i] for i in (0, 2, 4)}
    assert not any(name.endswith("_s") for name, _ in model.named_parameters())

    def check(step):
        alpha = method.alpha
        assert alpha == method.alpha_at(step) and (step > 4) == (alpha < 0.8)
        effective, kept = {}, {}
        for spec in sparsifier.specs:
            w = linears[spec.name].weight.detach()
            kept[spec.name] = reference_top_k(w.abs().reshape(-1), None, spec.active_count).view(w.shape)
            effective[spec.name] = torch.where(kept[spec.name], w, torch.zeros_like(w)).requires_grad_(True)
        inputs, targets = batch_for_step(step)
        h = inputs
        for i, name in enumerate(linears):
            h = torch.nn.functional.linear(h, effective[name], linears[name].bias.detach())
            h = torch.relu(h) if i < 2 else h
        torch.nn.functional.cross_entropy(h, targets).backward()
        for name, linear in linears.items():
            expected = torch.where(kept[name], effective[name].grad, alpha * effective[name].grad)
            assert torch.allclose(linear.weight.grad, expected, rtol=1e-6, atol=1e-9), (step, name)
        check.kept = kept

    for step in range(1, 11):
        train(model, optimizer, step, step, check)
        for spec, layer in zip(sparsifier.specs, sparsifier.engine.layers):
            mask = sparsifier.masks[spec.name]
            assert torch.equal(mask, check.kept[spec.name].reshape(mask.shape))  # the forward's top-k
            assert int(mask.sum()) == layer.active == spec.active_count  # a fixed budget


def test_the_initial_threshold_comes_from_the_recipe():
    import gsparse

    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    recipe = {"method": "autosparse", "sparsity": 0.5,
              "method_args": {"steps_per_epoch": 4, "epochs": 3, "s0": -7.0}}
    gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), recipe)
    assert float(model[0].weight_s.detach()) == -7.0 and float(model[2].weight_s.detach()) == -7.0
