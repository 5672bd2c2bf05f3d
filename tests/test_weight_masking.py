"""Skipping the post-step weight masking (recipe ``mask_weights_after_step: auto``) is exact.

For the optimizers gsparse trusts to keep zeros, a run without the second masking pass must keep
every inactive weight exactly zero after every step and end bit-identical to a run that masks.
"""
import pytest
import torch

import gsparse
from gsparse.backends.base import ZERO_PRESERVING_OPTIMIZERS, keeps_inactive_weights_zero
from gsparse.options import RecipeError
from conftest import small_mlp, train_step

# Every trusted optimizer, with the options that could revive a zero weight if anything did.
OPTIMIZERS = {
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3, nesterov=True),
    "sgd_dampening_maximize": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, dampening=0.2, maximize=True),
    "adam_amsgrad_l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    "adam_fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adamw_for_loop": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adamax_wd": lambda p: torch.optim.Adamax(p, lr=1e-2, weight_decay=1e-2),
    "nadam_decoupled": lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
    "radam_wd": lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=1e-2),
    "adagrad_accumulator": lambda p: torch.optim.Adagrad(p, lr=1e-2, lr_decay=1e-3, weight_decay=1e-2,
                                                         initial_accumulator_value=0.1),
    "rmsprop_centered_momentum": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, centered=True,
                                                               weight_decay=1e-2),
    "adadelta_wd": lambda p: torch.optim.Adadelta(p, lr=0.5, weight_decay=1e-2),
}

RECIPE = {"method": "dst_ee", "sparsity": 0.8, "distribution": "erk", "seed": 1,
          "schedule": {"update_interval": 4, "drop_fraction": 0.4}}


def _run(make_optimizer, masking: str, steps: int = 30):
    model = small_mlp()
    optimizer = make_optimizer(model.parameters())
    sparsifier = gsparse.Sparsifier(model, optimizer, dict(RECIPE, mask_weights_after_step=masking))
    params = dict(model.named_parameters())
    for step in range(1, steps + 1):
        train_step(model, optimizer, step)
        for name, mask in sparsifier.masks.items():
            assert torch.all(params[name][~mask] == 0), (name, step, "inactive weight revived")
    return sparsifier, model


def test_every_trusted_optimizer_is_covered():
    covered = {type(make(small_mlp().parameters())) for make in OPTIMIZERS.values()}
    assert covered == set(ZERO_PRESERVING_OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_skipping_the_weight_pass_keeps_zeros_and_changes_nothing(name):
    skipping, skipped_model = _run(OPTIMIZERS[name], "auto")
    masking, masked_model = _run(OPTIMIZERS[name], "always")
    assert skipping.engine.mask_weights_after_step is False
    assert masking.engine.mask_weights_after_step is True
    assert skipping.engine.num_updates == 7
    for (name_a, a), (name_b, b) in zip(skipped_model.state_dict().items(), masked_model.state_dict().items()):
        assert name_a == name_b and torch.equal(a, b), name_a
    assert all(torch.equal(skipping.masks[n], masking.masks[n]) for n in skipping.masks)
    assert all(torch.equal(skipping.counters[n], masking.counters[n]) for n in skipping.counters)


class _DriftingSGD(torch.optim.SGD):
    """A custom update that moves every weight, zero or not: gsparse cannot trust it."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for param in group["params"]:
                param.add_(1e-3)
        return loss


def test_an_untrusted_optimizer_is_masked_after_every_step():
    assert not keeps_inactive_weights_zero(_DriftingSGD(small_mlp().parameters(), lr=0.01))
    sparsifier, _ = _run(lambda p: _DriftingSGD(p, lr=0.01), "auto", steps=10)
    assert sparsifier.engine.mask_weights_after_step is True


def test_the_recipe_value_is_checked():
    with pytest.raises(RecipeError, match="mask_weights_after_step.*'sometimes' is not one of: auto, always"):
        gsparse.load_recipe(dict(RECIPE, mask_weights_after_step="sometimes"))
