"""End-to-end behaviour of the single-process Sparsifier: exact sparsity, state resets, resume."""
import io

import pytest
import torch

import gsparse
from conftest import batch_for_step, make_optimizer, small_mlp, train_step

METHODS = ["dst_ee", "rigl", "set", "static"]


def recipe(method: str, **overrides) -> dict:
    base = {
        "method": method, "sparsity": 0.8, "distribution": "erk", "seed": 3,
        "schedule": {"update_interval": 5, "drop_fraction": 0.4, "drop_fraction_decay": "cosine",
                     "last_update_step": 45, "final_drop_fraction": 0.05},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
@pytest.mark.parametrize("method", METHODS)
def test_sparsity_is_exact_after_every_step(method, optimizer_name):
    model = small_mlp()
    optimizer = make_optimizer(optimizer_name, model)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe(method))
    params = dict(model.named_parameters())
    expected_counts = {spec.name: spec.active_count for spec in sparsifier.specs}
    assert sum(expected_counts.values()) == pytest.approx(0.2 * sum(s.numel for s in sparsifier.specs), abs=3)
    previous_masks = {n: m.clone() for n, m in sparsifier.masks.items()}
    changed_at = []
    for step in range(1, 51):
        train_step(model, optimizer, step)
        for name, mask in sparsifier.masks.items():
            assert int(mask.sum()) == expected_counts[name], (name, step)
            assert torch.all(params[name][~mask] == 0), (name, step)
            for value in optimizer.state[params[name]].values():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    assert torch.all(value[~mask] == 0), (name, step, "optimizer state alive at inactive weight")
        if any(not torch.equal(previous_masks[n], m) for n, m in sparsifier.masks.items()):
            changed_at.append(step)
        previous_masks = {n: m.clone() for n, m in sparsifier.masks.items()}
    assert sparsifier.step == 50
    if method == "static":
        assert changed_at == []
    else:
        assert changed_at == [5, 10, 15, 20, 25, 30, 35, 40, 45]


def test_initial_masks_are_exact_seeded_and_reproducible():
    masks = []
    for seed in (3, 3, 4):
        model = small_mlp()
        sparsifier = gsparse.Sparsifier(model, make_optimizer("sgd", model), recipe("set", seed=seed, sparsity=0.9))
        masks.append(sparsifier.masks)
        for spec in sparsifier.specs:
            assert int(sparsifier.masks[spec.name].sum()) == int(spec.density * spec.numel + 0.5)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    assert not all(torch.equal(masks[0][n], masks[2][n]) for n in masks[0])


def _one_layer_case(method: str, method_args: dict, weight, grad, mask, counter, step: int, drop_fraction: float,
                    regrow_dropped: bool = False):
    model = torch.nn.Linear(len(weight), 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = gsparse.Sparsifier(model, optimizer, {
        "method": method, "sparsity": 1 - sum(mask) / len(mask), "method_args": method_args,
        "schedule": {"update_interval": 1000, "drop_fraction": drop_fraction},
    })
    sparsifier.engine.method.regrow_dropped = regrow_dropped
    state = sparsifier.state_dict()
    layer = state["engine"]["layers"]["weight"]
    layer["mask"] = torch.tensor(mask, dtype=torch.bool)
    layer["counter"] = torch.tensor(counter, dtype=torch.uint8)
    state["engine"]["step"] = step
    sparsifier.load_state_dict(state)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
    model.weight.grad = torch.tensor([grad])
    optimizer.state[model.weight]["momentum_buffer"] = torch.ones_like(model.weight)
    sparsifier.update_masks()
    return model, optimizer, sparsifier


def test_dst_ee_grows_exactly_the_weights_its_score_picks():
    # 8 weights, 4 active (0..3). drop_fraction 0.5 -> k = 2: the two smallest |w| among the
    # active ones are indices 3 (0.05) and 1 (|-0.1|).
    # Grow among the old inactive 4..7 at t = 100, c = 1, eps = 1, bonus = ln(100) / (N + 1):
    #   idx 4: |0.9|  + 4.6052/6 = 1.6675      idx 5: |0.5| + 4.6052/1 = 5.1052
    #   idx 6: |0.45| + 4.6052/2 = 2.7526      idx 7: |0.1| + 4.6052/3 = 1.6351
    # -> DST-EE grows 5 and 6; RigL (|grad| only) would grow 4 and 5.
    weight = [0.5, -0.1, 0.3, 0.05, 0, 0, 0, 0]
    grad = [0.0, 0.0, 0.0, 0.0, 0.9, -0.5, 0.45, 0.1]
    mask = [1, 1, 1, 1, 0, 0, 0, 0]
    counter = [4, 2, 1, 1, 5, 0, 1, 2]
    model, optimizer, sparsifier = _one_layer_case("dst_ee", {"c": 1.0, "eps": 1.0}, weight, grad, mask, counter,
                                                   step=100, drop_fraction=0.5)
    expected_mask = [1, 0, 1, 0, 0, 1, 1, 0]
    assert sparsifier.masks["weight"][0].int().tolist() == expected_mask
    assert sparsifier.counters["weight"][0].tolist() == [c + m for c, m in zip(counter, expected_mask)]
    assert model.weight[0].tolist() == pytest.approx([0.5, 0, 0.3, 0, 0, 0, 0, 0])
    # Momentum of the changed positions (dropped 1, 3; grown 5, 6) is reset, the rest untouched.
    assert optimizer.state[model.weight]["momentum_buffer"][0].tolist() == [1, 0, 1, 0, 1, 0, 0, 1]

    _, _, rigl = _one_layer_case("rigl", {}, weight, grad, mask, counter, step=100, drop_fraction=0.5)
    assert rigl.masks["weight"][0].int().tolist() == [1, 0, 1, 0, 1, 1, 0, 0]


def test_a_method_may_regrow_what_it_drops():
    # Active 0..3; drop_fraction 0.5 drops indices 3 and 1 (smallest |w|); index 1 has the largest
    # gradient. RigL grows among the weights inactive before the update (4, 5); a method with
    # regrow_dropped ranks everything not kept (1, 3..7) and grows 1 and 4.
    weight = [0.5, -0.1, 0.3, 0.05, 0, 0, 0, 0]
    grad = [0.0, 2.0, 0.0, 0.0, 0.9, 0.5, 0.45, 0.1]
    mask = [1, 1, 1, 1, 0, 0, 0, 0]
    _, _, rigl = _one_layer_case("rigl", {}, weight, grad, mask, [1] * 8, step=10, drop_fraction=0.5)
    assert rigl.masks["weight"][0].int().tolist() == [1, 0, 1, 0, 1, 1, 0, 0]
    _, optimizer, regrowing = _one_layer_case("rigl", {}, weight, grad, mask, [1] * 8, step=10, drop_fraction=0.5,
                                              regrow_dropped=True)
    assert regrowing.masks["weight"][0].int().tolist() == [1, 1, 1, 0, 1, 0, 0, 0]
    assert regrowing.counters["weight"][0].tolist() == [2, 2, 2, 1, 2, 1, 1, 1]
    assert optimizer.state[regrowing.params[0]]["momentum_buffer"][0].tolist() == [1, 0, 1, 0, 0, 1, 1, 1]


def test_dst_ee_reference_variant_takes_the_absolute_value_of_the_sum():
    # c = 1, t = 100, eps = 1, N = 0 everywhere inactive -> bonus = 4.6052 for all.
    #   paper:     |g| + bonus:   idx 4: 3 + 4.61 = 7.61   idx 5: 0.5 + 4.61 = 5.11   idx 6: 4.61
    #   reference: |g + bonus|:   idx 4: |-3 + 4.61| = 1.61   idx 5: 5.11   idx 6: 4.61
    weight = [0.5, 0.2, 0, 0, 0]
    grad = [0.0, 0.0, -3.0, 0.5, 0.0]
    mask = [1, 1, 0, 0, 0]
    counter = [1, 1, 0, 0, 0]
    args = {"c": 1.0, "score_variant": "paper"}
    _, _, paper = _one_layer_case("dst_ee", args, weight, grad, mask, counter, step=100, drop_fraction=0.5)
    assert paper.masks["weight"][0].int().tolist() == [1, 0, 1, 0, 0]
    args["score_variant"] = "reference"
    _, _, reference = _one_layer_case("dst_ee", args, weight, grad, mask, counter, step=100, drop_fraction=0.5)
    assert reference.masks["weight"][0].int().tolist() == [1, 0, 0, 1, 0]


def test_dst_ee_coefficient_decays_every_interval():
    method = gsparse.METHODS["dst_ee"](c=0.5, c_decay_factor=0.9, c_decay_interval=100)
    assert method.exploration_coefficient(99) == 0.5
    assert method.exploration_coefficient(100) == pytest.approx(0.45)
    assert method.exploration_coefficient(250) == pytest.approx(0.5 * 0.81)


def test_ties_are_broken_by_lowest_flat_index():
    # All active weights equal: drop the lowest indices (0, 1); all grow scores equal: grow the
    # lowest inactive indices (4, 5).
    weight = [0.3, 0.3, 0.3, 0.3, 0, 0, 0, 0]
    grad = [0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.2]
    _, _, rigl = _one_layer_case("rigl", {}, weight, grad, [1, 1, 1, 1, 0, 0, 0, 0], [1] * 4 + [0] * 4, step=10,
                                 drop_fraction=0.5)
    assert rigl.masks["weight"][0].int().tolist() == [0, 0, 1, 1, 1, 1, 0, 0]


def test_larger_exploration_coefficient_explores_more():
    degrees = {}
    for c in (0.0, 0.05):
        model = small_mlp()
        optimizer = make_optimizer("sgd", model)
        sparsifier = gsparse.Sparsifier(model, optimizer, recipe(
            "dst_ee", sparsity=0.9, method_args={"c": c},
            schedule={"update_interval": 10, "drop_fraction": 0.3}))
        for step in range(1, 201):
            train_step(model, optimizer, step)
        degrees[c] = sparsifier.metrics()["exploration_degree"]
    assert degrees[0.05] > degrees[0.0] + 0.1, degrees


def test_counter_counts_mask_states_and_widens_past_255_updates():
    model = torch.nn.Linear(10, 4, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = gsparse.Sparsifier(model, optimizer, {"method": "set", "sparsity": 0.5,
                                                       "schedule": {"update_interval": 1, "drop_fraction": 0.25}})
    assert sparsifier.counters["weight"].dtype == torch.uint8
    for update in range(1, 301):
        sparsifier.engine.step += 1
        sparsifier.update_masks()
        counter = sparsifier.counters["weight"]
        # Every mask state has exactly 20 active weights, so the counters sum to 20 per state.
        assert int(counter.sum()) == 20 * (update + 1)
        assert counter.dtype == (torch.uint8 if update + 1 <= 255 else torch.int16)


def test_exploration_degree_matches_counter_and_metrics_report_density():
    model = small_mlp()
    optimizer = make_optimizer("sgd", model)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe("rigl"))
    for step in range(1, 21):
        train_step(model, optimizer, step)
    metrics = sparsifier.last_update["metrics"]
    total = sum(spec.numel for spec in sparsifier.specs)
    explored = sum(int((c > 0).sum()) for c in sparsifier.counters.values())
    assert metrics["exploration_degree"] == explored / total
    assert metrics["density"] == sum(spec.active_count for spec in sparsifier.specs) / total
    assert metrics["step"] == 20 and metrics["num_updates"] == 4
    grown = sum(sparsifier.last_update["grown"])
    assert metrics["mask_change"] == grown / sum(spec.active_count for spec in sparsifier.specs)
    assert grown > 0


def _save(*objects) -> bytes:
    buffer = io.BytesIO()
    torch.save([o.state_dict() for o in objects], buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
@pytest.mark.parametrize("method", ["dst_ee", "rigl", "set"])
def test_resume_from_checkpoint_is_bitwise_identical(method, optimizer_name):
    def build(model_seed):
        model = small_mlp(model_seed)
        optimizer = make_optimizer(optimizer_name, model)
        return model, optimizer, gsparse.Sparsifier(model, optimizer, recipe(method))

    model, optimizer, sparsifier = build(0)
    for step in range(1, 41):
        train_step(model, optimizer, step)

    model_a, optimizer_a, sparsifier_a = build(0)
    for step in range(1, 18):  # stop between two updates, after the third
        train_step(model_a, optimizer_a, step)
    checkpoint = _save(model_a, optimizer_a, sparsifier_a)
    del model_a, optimizer_a, sparsifier_a

    model_b, optimizer_b, sparsifier_b = build(123)  # different init: everything must come from the checkpoint
    states = torch.load(io.BytesIO(checkpoint), weights_only=False)
    for obj, state in zip((model_b, optimizer_b, sparsifier_b), states):
        obj.load_state_dict(state)
    assert sparsifier_b.step == 17
    for step in range(18, 41):
        train_step(model_b, optimizer_b, step)

    for name in sparsifier.masks:
        assert torch.equal(sparsifier.masks[name], sparsifier_b.masks[name])
        assert torch.equal(sparsifier.counters[name], sparsifier_b.counters[name])
    for (name, p), (_, q) in zip(model.named_parameters(), model_b.named_parameters()):
        assert torch.equal(p, q), name


def test_checkpoint_of_another_model_is_refused():
    model = small_mlp()
    sparsifier = gsparse.Sparsifier(model, make_optimizer("sgd", model), recipe("rigl"))
    other = torch.nn.Sequential(torch.nn.Linear(12, 48), torch.nn.ReLU(), torch.nn.Linear(48, 4))
    other_sparsifier = gsparse.Sparsifier(other, make_optimizer("sgd", other), recipe("rigl"))
    with pytest.raises(ValueError, match="sparse layers"):
        sparsifier.load_state_dict(other_sparsifier.state_dict())


def test_skipped_grad_scaler_step_is_not_counted():
    model = small_mlp()
    optimizer = make_optimizer("sgd", model)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe("rigl"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    inputs, targets = batch_for_step(1)
    for poison in (False, True, False):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        scaler.scale(loss * (float("inf") if poison else 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()
    assert sparsifier.step == 2


def test_rigl_without_gradients_fails_clearly():
    model = small_mlp()
    optimizer = make_optimizer("sgd", model)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe("rigl"))
    with pytest.raises(RuntimeError, match="needs gradients"):
        sparsifier.update_masks()


def test_parameters_outside_the_optimizer_are_refused():
    model = small_mlp()
    optimizer = torch.optim.SGD(list(model.parameters())[:2], lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer"):
        gsparse.Sparsifier(model, optimizer, recipe("rigl"))


def test_attaching_to_a_warm_optimizer_clears_state_of_inactive_weights():
    model = small_mlp()
    optimizer = make_optimizer("adamw", model)
    for step in range(1, 4):  # dense warm start: Adam moments everywhere
        train_step(model, optimizer, step)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe("static"))
    params = dict(model.named_parameters())
    for name, mask in sparsifier.masks.items():
        state = optimizer.state[params[name]]
        assert torch.all(state["exp_avg"][~mask] == 0) and torch.all(state["exp_avg_sq"][~mask] == 0)
        assert torch.any(state["exp_avg"][mask] != 0)
