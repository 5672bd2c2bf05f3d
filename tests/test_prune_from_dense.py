"""GMP and ADMM: prune-from-dense baselines on the shared engine."""
import io

import pytest
import torch

import gsparse
from conftest import make_optimizer, small_mlp, train_step


def _gmp_expected_active(step: int, numel: int, target: int, first=10, last=100) -> int:
    progress = min(max((step - first) / (last - first), 0.0), 1.0)
    fraction = 1 - (1 - progress) ** 3
    return numel - int(fraction * (numel - target) + 0.5)


def test_gmp_follows_the_cubic_schedule_step_by_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 50), torch.nn.ReLU(), torch.nn.Linear(50, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = gsparse.Sparsifier(model, optimizer, {
        "method": "gmp", "sparsity": 0.8, "schedule": {"update_interval": 10, "first_update_step": 10,
                                                       "last_update_step": 100}})
    specs = {spec.name: spec for spec in sparsifier.specs}
    previous = {n: m.clone() for n, m in sparsifier.masks.items()}
    for name, mask in previous.items():
        assert bool(mask.all())  # starts dense
    for step in range(1, 121):
        weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_step(model, optimizer, step)
        for name, mask in sparsifier.masks.items():
            spec = specs[name]
            last_update = min((step // 10) * 10, 100) if step >= 10 else 0
            expected = _gmp_expected_active(last_update, spec.numel, spec.active_count) if last_update else spec.numel
            assert int(mask.sum()) == expected, (name, step)
            assert not bool((mask & ~previous[name]).any()), "a pruned weight came back"
            pruned_now = previous[name] & ~mask
            if pruned_now.any():  # pruned by magnitude: none of them larger than any survivor
                magnitude = weights_before[name].abs()
                assert float(magnitude[pruned_now].max()) <= float(magnitude[mask].min())
            assert torch.all(dict(model.named_parameters())[name][~mask] == 0)
            previous[name] = mask.clone()
    assert sparsifier.metrics()["density"] == pytest.approx(0.2, abs=2e-3)


def test_gmp_needs_the_end_of_its_schedule():
    with pytest.raises(gsparse.RecipeError, match="schedule.last_update_step"):
        gsparse.load_recipe({"method": "gmp", "sparsity": 0.5})


def _admm_case(rho_growth=1.0):
    model = torch.nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -1.0, 0.5, -4.0, 2.0, 0.1]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: only the ADMM terms move
    sparsifier = gsparse.Sparsifier(model, optimizer, {
        "method": "admm", "sparsity": 4 / 6,
        "method_args": {"pretrain_steps": 0, "admm_steps": 5, "admm_interval": 2, "rho": 0.5,
                        "rho_growth": rho_growth}})
    return model, optimizer, sparsifier


def _admm_step(model, optimizer):
    optimizer.zero_grad()
    (0.0 * model.weight.sum()).backward()  # zero loss gradient: what remains is the ADMM term
    optimizer.step()
    return model.weight.grad[0].tolist()


def test_admm_projection_dual_update_and_gradient_term_by_hand():
    model, optimizer, sparsifier = _admm_case()
    layer = sparsifier.engine.layers[0]
    # step 1 (first round): Z = P(W) keeps |-4| and |3|; U = 0; term = rho * (W - Z + U)
    assert _admm_step(model, optimizer) == pytest.approx([0, -0.5, 0.25, 0, 1, 0.05])
    assert layer.extra["Z"].tolist() == [3, 0, 0, -4, 0, 0] and layer.extra["U"].tolist() == [0] * 6
    assert _admm_step(model, optimizer) == pytest.approx([0, -0.5, 0.25, 0, 1, 0.05])  # step 2: no round
    # step 3: Z = P(W + U) = P(W); U += W - Z = [0, -1, 0.5, 0, 2, 0.1]
    assert _admm_step(model, optimizer) == pytest.approx([0, -1, 0.5, 0, 2, 0.1])
    assert layer.extra["U"].tolist() == pytest.approx([0, -1, 0.5, 0, 2, 0.1])
    _admm_step(model, optimizer)  # step 4
    # step 5: W + U = [3, -2, 1, -4, 4, 0.2]: keep indices 3 and 4 (|4| each) -> Z = [0, 0, 0, -4, 4, 0]
    #         U += W - Z = [3, -2, 1, 0, 0, 0.2]; term = 0.5 * [6, -3, 1.5, 0, -2, 0.3]
    assert _admm_step(model, optimizer) == pytest.approx([3, -1.5, 0.75, 0, -1, 0.15])
    assert layer.extra["Z"].tolist() == [0, 0, 0, -4, 4, 0]
    assert layer.extra["U"].tolist() == pytest.approx([3, -2, 1, 0, 0, 0.2])
    assert bool(sparsifier.masks["weight"].all())  # still dense
    # step 6: hard prune to the target by magnitude: keep 3 and -4
    _admm_step(model, optimizer)
    assert sparsifier.masks["weight"][0].int().tolist() == [1, 0, 0, 1, 0, 0]
    assert model.weight[0].tolist() == [3, 0, 0, -4, 0, 0]


def test_admm_rho_grows_per_round():
    model, optimizer, sparsifier = _admm_case(rho_growth=10.0)
    _admm_step(model, optimizer)
    _admm_step(model, optimizer)
    # step 3: rho = 0.5 * 10; term = 5 * (W - Z + U) = 5 * [0, -2, 1, 0, 4, 0.2]
    assert _admm_step(model, optimizer) == pytest.approx([0, -10, 5, 0, 20, 1])


def test_admm_prunes_to_exact_density_and_retraining_keeps_zeros():
    model = small_mlp()
    optimizer = make_optimizer("sgd", model)
    sparsifier = gsparse.Sparsifier(model, optimizer, {
        "method": "admm", "sparsity": 0.9, "distribution": "erk",
        "method_args": {"pretrain_steps": 10, "admm_steps": 20, "admm_interval": 5, "rho": 0.05}})
    params = dict(model.named_parameters())
    for step in range(1, 61):
        train_step(model, optimizer, step)
        for spec in sparsifier.specs:
            mask = sparsifier.masks[spec.name]
            assert int(mask.sum()) == (spec.numel if step < 31 else spec.active_count), (spec.name, step)
            assert torch.all(params[spec.name][~mask] == 0)
    assert sparsifier.engine.num_updates == 1


def test_admm_and_gmp_resume_bitwise():
    recipes = {
        "admm": {"method": "admm", "sparsity": 0.8, "method_args": {"pretrain_steps": 5, "admm_steps": 20,
                                                                    "admm_interval": 4, "rho_growth": 2.0}},
        "gmp": {"method": "gmp", "sparsity": 0.8, "schedule": {"update_interval": 4, "last_update_step": 28}},
    }
    for recipe in recipes.values():
        def build(seed):
            model = small_mlp(seed)
            optimizer = make_optimizer("adamw", model)
            return model, optimizer, gsparse.Sparsifier(model, optimizer, recipe)

        model, optimizer, sparsifier = build(0)
        for step in range(1, 41):
            train_step(model, optimizer, step)
        model_a, optimizer_a, sparsifier_a = build(0)
        for step in range(1, 15):  # inside the ADMM phase / between GMP updates
            train_step(model_a, optimizer_a, step)
        buffer = io.BytesIO()
        torch.save([o.state_dict() for o in (model_a, optimizer_a, sparsifier_a)], buffer)
        model_b, optimizer_b, sparsifier_b = build(5)
        for obj, state in zip((model_b, optimizer_b, sparsifier_b), torch.load(io.BytesIO(buffer.getvalue()),
                                                                                weights_only=False)):
            obj.load_state_dict(state)
        for step in range(15, 41):
            train_step(model_b, optimizer_b, step)
        for name in sparsifier.masks:
            assert torch.equal(sparsifier.masks[name], sparsifier_b.masks[name])
        for (name, p), (_, q) in zip(model.named_parameters(), model_b.named_parameters()):
            assert torch.equal(p, q), (recipe["method"], name)
