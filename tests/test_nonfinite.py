"""NaN and Inf never enter masks, counters or inactive weights; a layer whose mask scores are not
finite keeps its mask (with a warning; the step counts a skipped update) while the others update."""
import pytest
import torch

import gsparse
from gsparse.backends.base import zero_inactive_
from gsparse.engine import NonFiniteScores
from tests.conftest import batch_for_step, small_mlp


def recipe(method: str = "rigl") -> dict:
    return {"method": method, "sparsity": 0.8, "seed": 3, "schedule": {"update_interval": 5, "drop_fraction": 0.3}}


def poisoned_step(model, optimizer, step, value):
    inputs, targets = batch_for_step(step)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    model[2].weight.grad[0, :] = value  # some active, most inactive
    optimizer.step()


def clean_step(model, optimizer, step):
    inputs, targets = batch_for_step(step)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.step()


def test_zero_inactive_clears_nan_and_inf():
    tensor = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0, float("nan")])
    mask = torch.tensor([False, False, False, True, True])
    zero_inactive_(tensor, mask)
    assert tensor[:3].tolist() == [0.0, 0.0, 0.0] and tensor[3] == 2.0 and torch.isnan(tensor[4])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd"])
def test_nonfinite_gradient_at_an_update_step_is_skipped_and_counted(value, optimizer_name):
    model = small_mlp()
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-2) if optimizer_name == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe())
    for step in range(1, 5):
        clean_step(model, optimizer, step)
    masks_before = {name: mask.clone() for name, mask in sparsifier.masks.items()}
    counters_before = {name: counter.clone() for name, counter in sparsifier.counters.items()}
    with pytest.warns(NonFiniteScores, match="step 5.* in 2.weight; these layers keep their masks"):
        poisoned_step(model, optimizer, 5, value)  # step 5 is an update step
    # the poisoned layer keeps its mask and counter; the others update as usual
    assert torch.equal(masks_before["2.weight"], sparsifier.masks["2.weight"])
    assert torch.equal(counters_before["2.weight"], sparsifier.counters["2.weight"])
    for name in ("0.weight", "4.weight"):
        assert not torch.equal(masks_before[name], sparsifier.masks[name])
        assert torch.equal(counters_before[name] + sparsifier.masks[name].to(counters_before[name].dtype),
                           sparsifier.counters[name])
    metrics = sparsifier.metrics()
    assert metrics["skipped_updates"] == 1 and metrics["num_updates"] == 1
    for spec in sparsifier.specs:
        assert int(sparsifier.masks[spec.name].sum()) == spec.active_count
    for name, param in model.named_parameters():
        if name in sparsifier.masks:
            assert not param.detach()[~sparsifier.masks[name]].any()  # exactly zero, not NaN
    assert sparsifier.state_dict()["engine"]["skipped_updates"] == 1


def test_nonfinite_gradient_between_updates_keeps_inactive_weights_zero():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # zero-preserving: no post-step masking
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe("dst_ee"))
    assert not sparsifier.engine.mask_weights_after_step
    poisoned_step(model, optimizer, 1, float("nan"))
    for step in range(2, 12):
        clean_step(model, optimizer, step)
    for name, param in model.named_parameters():
        if name in sparsifier.masks:
            inactive = param.detach()[~sparsifier.masks[name]]
            assert not torch.isnan(inactive).any() and not inactive.any()
            assert int(sparsifier.masks[name].sum()) == next(s.active_count for s in sparsifier.specs if s.name == name)
    metrics = sparsifier.metrics()
    # weights that were active at step 1 became NaN: every later update sees NaN magnitudes
    assert metrics["skipped_updates"] == 2 and metrics["num_updates"] == 0
