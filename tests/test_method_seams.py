"""The engine's seams, exercised by two toy methods written here and registered like a user's:

* ``DenseThenGlobal`` (policy seam): dense at first, then budgets that move - one global count
  over all layers chosen from a per-weight score it accumulates every step, dense again, then
  per-layer counts (drops in some layers, grows in others).
* ``SoftThreshold`` (forward seam): forward uses ``sign(w) * relu(|w| - T)`` with one learnable
  threshold per layer, trained by the optimizer.

The same toys run at ZeRO-2 and ZeRO-3 in tests/test_zero.py (tests/distributed/zero_worker.py).
"""
import math

import pytest
import torch

import gsparse
from gsparse.methods import DropGrowMethod, MaskChange, SparseMethod, register_method
from gsparse.options import Option, integer
from gsparse.selection import reference_top_k
from tests.conftest import assert_resume_bitwise, batch_for_step, small_mlp


class DenseThenGlobal(SparseMethod):
    """Phases of ``phase`` steps: dense, global top-k by accumulated |w * g|, dense, per-layer counts."""

    options = {"phase": Option(20, integer(1))}
    observes = needs_grad = True
    per_weight_state = {"score": torch.float32}

    def initial_change(self):
        return MaskChange.reselect(layer_counts=[layer.numel for layer in self.layers])

    def observe(self, layers):
        for layer in layers:
            layer.state["score"].add_((layer.weight * layer.grad).abs())

    def mask_change(self, step):
        if (step - 1) % self.args.phase or step == 1:
            return None
        phase = (step - 1) // self.args.phase % 4
        if phase == 1:
            return MaskChange.reselect(total=sum(layer.target_active for layer in self.layers))
        if phase == 2:
            return MaskChange.resize(total=sum(layer.numel for layer in self.layers))
        return MaskChange.resize(layer_counts=[layer.target_active for layer in self.layers])

    def keep_score(self, layer):
        return layer.state["score"]


class SoftThreshold(DropGrowMethod):
    """SET's drop/grow, and forward through a learnable per-layer soft threshold."""

    transforms_forward = True
    layer_parameters = {"threshold": 0.0}

    def forward_weight(self, weight, parameters, layer):
        return torch.sign(weight) * torch.relu(weight.abs() - parameters["threshold"])


class LearnedThreshold(SparseMethod):
    """AutoSparse's shape: dense weights, forward through ``sign(w) * relu(|w| - T)``, and the mask
    only records which weights pass the learned threshold (nothing is zeroed by the engine)."""

    transforms_forward = True
    enforces_mask = False
    layer_parameters = {"threshold": 0.1}

    def initial_change(self):
        return MaskChange.reselect(layer_counts=[layer.numel for layer in self.layers])

    def mask_change(self, step):
        return MaskChange.assign()

    def assign_mask(self, layer):
        return layer.weight.abs() > layer.parameters["threshold"]

    forward_weight = SoftThreshold.forward_weight


register_method("toy_dense_then_global", DenseThenGlobal, replace=True)
register_method("toy_learned_threshold", LearnedThreshold, replace=True)
register_method("toy_soft_threshold", SoftThreshold, replace=True)

PHASE = 20


def toy_recipe(method: str) -> dict:
    recipe = {"method": method, "sparsity": 0.85, "distribution": "erk", "seed": 5,
              "schedule": {"update_interval": 10, "drop_fraction": 0.3}}
    if method == "toy_dense_then_global":
        recipe["method_args"] = {"phase": PHASE}
    return recipe


def expected_total(sparsifier, step: int) -> int:
    """The active weights over all layers after ``step`` under DenseThenGlobal's phases."""
    numel = sum(spec.numel for spec in sparsifier.specs)
    target = sum(spec.active_count for spec in sparsifier.specs)
    if step <= PHASE:
        return numel
    return numel if (step - 1) // PHASE % 4 == 2 else target


def test_dense_then_global_budgets_are_exact_every_step():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sparsifier = gsparse.Sparsifier(model, optimizer, toy_recipe("toy_dense_then_global"))
    weights = dict(model.named_parameters())
    layer_steps = [0] * len(sparsifier.specs)
    for step in range(1, 5 * PHASE + 1):
        inputs, targets = batch_for_step(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        if step == PHASE + 1:  # the global reselect happens at the start of this step
            scores = {name: layer.extra["score"].clone() for name, layer in
                      zip([s.name for s in sparsifier.specs], sparsifier.engine.layers)}
        optimizer.step()
        masks = sparsifier.masks
        layer_steps = [total + int(m.sum()) for total, m in zip(layer_steps, masks.values())]
        assert sum(int(m.sum()) for m in masks.values()) == expected_total(sparsifier, step), step
        for spec, layer in zip(sparsifier.specs, sparsifier.engine.layers):
            assert int(layer.mask.sum()) == layer.active
            assert not weights[spec.name].detach()[~masks[spec.name]].any()
        if step == PHASE + 1:
            pooled = torch.cat([scores[s.name] for s in sparsifier.specs])
            expected = reference_top_k(pooled, None, sum(s.active_count for s in sparsifier.specs))
            assert torch.equal(torch.cat([masks[s.name].reshape(-1) for s in sparsifier.specs]), expected)
            layer_densities = [float(m.float().mean()) for m in masks.values()]
            assert max(layer_densities) - min(layer_densities) > 0.01  # layer budgets emerged, not uniform
    # the last phase resized each layer to its own count: some layers grew, some dropped
    assert [int(m.sum()) for m in sparsifier.masks.values()] == [s.active_count for s in sparsifier.specs]
    assert sparsifier.engine.num_updates == 4
    assert sparsifier.engine.layer_active_steps == layer_steps  # per-layer FLOPs follow moving budgets


def test_soft_threshold_forward_uses_the_transformed_weight_and_trains_the_threshold():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sparsifier = gsparse.Sparsifier(model, optimizer, toy_recipe("toy_soft_threshold"))
    thresholds = {name: p for name, p in model.named_parameters() if name.endswith("weight_threshold")}
    assert sorted(thresholds) == ["0.weight_threshold", "2.weight_threshold", "4.weight_threshold"]
    assert optimizer.param_groups[-1]["weight_decay"] == 0.0
    assert [s.name for s in sparsifier.specs] == ["0.weight", "2.weight", "4.weight"]  # thresholds not sparse
    for step in range(1, 31):
        inputs, targets = batch_for_step(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        assert all(int(mask.sum()) == spec.active_count for spec, mask in zip(sparsifier.specs,
                                                                              sparsifier.masks.values()))
        assert all(t.grad is not None and float(t.grad.abs()) > 0 for t in thresholds.values())
    assert all(float(t.detach()) != 0.0 for t in thresholds.values())  # trained away from the initial 0
    first = model[0]
    assert isinstance(first.weight, torch.nn.Parameter)  # outside forward: the parameter itself
    inputs, _ = batch_for_step(99)
    threshold = thresholds["0.weight_threshold"].detach()
    effective = torch.sign(first.weight) * torch.relu(first.weight.abs() - threshold)
    expected = torch.nn.functional.linear(inputs, effective, first.bias)
    assert torch.allclose(first(inputs), expected)
    assert "0.weight_threshold" in model.state_dict()


def test_learned_threshold_mask_records_the_forward_transform_without_zeroing():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sparsifier = gsparse.Sparsifier(model, optimizer, toy_recipe("toy_learned_threshold"))
    names = [spec.name for spec in sparsifier.specs]
    parameters = dict(model.named_parameters())
    pruned_seen = 0
    for step in range(1, 26):
        before = {name: parameters[name].detach().clone() for name in names}
        thresholds = {name: float(parameters[f"{name}_threshold"].detach()) for name in names}
        inputs, targets = batch_for_step(step)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        for name, layer in zip(names, sparsifier.engine.layers):
            # the mask of step t is |w| > T as forward saw them in step t
            assert torch.equal(sparsifier.masks[name], before[name].abs() > thresholds[name])
            assert layer.active == int(layer.mask.sum())
            pruned = ~sparsifier.masks[name]
            pruned_seen += int(pruned.sum())
            assert (parameters[name].detach()[pruned] != 0).all()  # not zeroed
            assert (parameters[name].detach() != before[name])[pruned].all()  # still updated (weight decay)
    assert pruned_seen > 1000
    assert sparsifier.metrics()["num_updates"] == 25


def test_registered_methods_validate_in_recipes_and_unknown_names_list_them():
    recipe = gsparse.load_recipe(toy_recipe("toy_dense_then_global"))
    assert recipe.method_class is DenseThenGlobal
    with pytest.raises(gsparse.RecipeError, match="method_args.phase"):
        gsparse.load_recipe({**toy_recipe("toy_dense_then_global"), "method_args": {"phase": 0}})
    with pytest.raises(gsparse.RecipeError, match="toy_soft_threshold"):
        gsparse.load_recipe({**toy_recipe("toy_dense_then_global"), "method": "nope"})


def test_register_method_refuses_clashes_and_non_methods():
    with pytest.raises(ValueError, match="already registered"):
        register_method("rigl", DenseThenGlobal)
    with pytest.raises(TypeError, match="subclass"):
        register_method("toy_bad", object)


def test_methods_from_the_entry_point_group(monkeypatch):
    from importlib import metadata

    from gsparse.methods import registry

    class FakeEntryPoint:
        name, value = "toy_from_plugin", "plugin:Method"

        def load(self):
            return type("PluginMethod", (SparseMethod,), {})

    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEntryPoint()] if group == "gsparse.methods" else [])
    try:
        recipe = gsparse.load_recipe({"method": "toy_from_plugin", "sparsity": 0.5})
        assert recipe.method_class.__name__ == "PluginMethod"
    finally:
        registry.METHODS.pop("toy_from_plugin", None)


def test_gather_returns_full_state_in_parameter_shapes():
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = gsparse.Sparsifier(model, optimizer, toy_recipe("toy_dense_then_global"))
    state = sparsifier.gather_state(("mask", "counter", "score"), layers=["2.weight"])
    assert list(state) == ["2.weight"] and state["2.weight"]["mask"].shape == (32, 48)
    assert torch.equal(sparsifier.gather_masks()["0.weight"], sparsifier.masks["0.weight"])
    assert sparsifier.gather_counters(rank=0)["4.weight"].dtype == torch.uint8
    with pytest.raises(ValueError, match="per-weight tensors are"):
        sparsifier.gather_state(("momentum",))
    with pytest.raises(ValueError, match="no sparse layers"):
        sparsifier.gather_state(layers=["9.weight"])


def test_counts_at_fraction_spans_dense_to_target():
    method = DenseThenGlobal()
    from gsparse.methods.base import LayerInfo

    method.setup([LayerInfo("a", (10, 10), 100, 10)], schedule=None)
    assert method.counts_at_fraction(0.0) == [100] and method.counts_at_fraction(1.0) == [10]
    assert method.counts_at_fraction(0.5) == [100 - math.floor(45 + 0.5)]


@pytest.mark.parametrize("method", ["toy_dense_then_global", "toy_soft_threshold", "toy_learned_threshold"])
def test_resume_is_bitwise_with_method_state_and_layer_parameters(method):
    assert_resume_bitwise(toy_recipe(method), 70, 45)  # the layer parameters travel with the model