"""AC/DC and AC/DC++ (gsparse/methods/acdc.py): dense warm-up, alternating magnitude-compressed and
dense phases, a compressed fine-tune; AC/DC++ scales the schedule."""
from pathlib import Path

import pytest
import torch

import gsparse
import gsparse.methods.acdc  # registers the method
from gsparse.methods.acdc import ACDC
from gsparse.selection import reference_top_k
from tests.conftest import assert_resume_bitwise, batch_for_step, small_mlp

# 2 steps per epoch: warm-up 3 epochs, phases of 2 (compressed) / 1 (decompressed), the last
# decompressed phase at least 2, fine-tune the last 3 of 20 epochs. In steps: dense 1-6, then
# compressed 7-10, 13-16, 19-22, 25-28, dense 11-12, 17-18, 23-24 and 29-34 (the last, 6 steps),
# fine-tune 35-40 and compressed after it.
ARGS = {"steps_per_epoch": 2, "total_epochs": 20, "warmup_epochs": 3, "compressed_epochs": 2,
        "decompressed_epochs": 1, "last_decompressed_epochs": 2, "finetune_epochs": 3}
DENSE_STEPS = {*range(1, 7), 11, 12, 17, 18, 23, 24, *range(29, 35)}
COMPRESSION_STARTS = {7, 13, 19, 25, 35}
DECOMPRESSION_STARTS = {11, 17, 23, 29}
STEPS = 44
LR = 0.05


def acdc_recipe(selection="layer", distribution="uniform", **args) -> dict:
    return {"method": "acdc", "sparsity": 0.8, "distribution": distribution, "seed": 4,
            "method_args": {**ARGS, "selection": selection, **args}}


def loss_backward(model, optimizer, step):
    inputs, targets = batch_for_step(step)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()


def test_phases_switch_exactly_at_their_boundaries_per_layer():
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    sparsifier = gsparse.Sparsifier(model, optimizer, acdc_recipe("layer"))
    specs = sparsifier.specs
    parameters = dict(model.named_parameters())
    assert all(int(mask.sum()) == spec.numel for spec, mask in zip(specs, sparsifier.masks.values()))
    layer_steps = [0] * len(specs)
    for step in range(1, STEPS + 1):
        previous = {name: mask.clone() for name, mask in sparsifier.masks.items()}
        loss_backward(model, optimizer, step)
        before = {spec.name: parameters[spec.name].detach().clone() for spec in specs}
        grads = {spec.name: parameters[spec.name].grad.clone() for spec in specs}
        optimizer.step()
        masks = sparsifier.masks
        for spec, layer in zip(specs, sparsifier.engine.layers):
            mask = masks[spec.name]
            expected = spec.numel if step in DENSE_STEPS else spec.active_count
            assert int(mask.sum()) == layer.active == expected, (step, spec.name)
            assert not parameters[spec.name].detach()[~mask].any()  # pruned weights are zero
            if step in COMPRESSION_STARTS:  # top-k by |w| of the weights the step started from
                assert torch.equal(mask.reshape(-1), reference_top_k(before[spec.name].abs().reshape(-1), None,
                                                                     spec.active_count)), step
            elif step not in DECOMPRESSION_STARTS:
                assert torch.equal(mask, previous[spec.name]), step  # fixed within a phase
            if step in DECOMPRESSION_STARTS:
                regrown = ~previous[spec.name]
                assert not before[spec.name][regrown].any()  # they restart from 0 ...
                # ... with a fresh momentum buffer: one plain SGD step from zero
                assert torch.allclose(parameters[spec.name].detach()[regrown], -LR * grads[spec.name][regrown],
                                      rtol=0, atol=1e-9), step
        layer_steps = [total + int(mask.sum()) for total, mask in zip(layer_steps, masks.values())]
    # ends at the target density, and the FLOPs bookkeeping counts the dense phases in full
    assert sparsifier.metrics()["density"] == sum(s.active_count for s in specs) / sum(s.numel for s in specs)
    assert sparsifier.engine.layer_active_steps == layer_steps
    dense = len(DENSE_STEPS)
    assert layer_steps == [dense * s.numel + (STEPS - dense) * s.active_count for s in specs]
    assert sparsifier.engine.active_weight_steps == sum(layer_steps)
    assert sparsifier.engine.num_updates == len(COMPRESSION_STARTS) + len(DECOMPRESSION_STARTS)
    final = {name: mask.clone() for name, mask in sparsifier.masks.items()}
    assert sparsifier.update_masks()["num_updates"] == sparsifier.engine.num_updates  # forced: nothing
    assert all(torch.equal(sparsifier.masks[name], final[name]) for name in final)


def test_global_selection_gives_non_uniform_layers_with_the_exact_global_count():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sparsifier = gsparse.Sparsifier(model, optimizer, acdc_recipe("global", distribution="erk"))
    specs = sparsifier.specs
    names = [spec.name for spec in specs]
    parameters = dict(model.named_parameters())
    numel, target = sum(s.numel for s in specs), sum(s.active_count for s in specs)
    for step in range(1, STEPS + 1):
        loss_backward(model, optimizer, step)
        before = torch.cat([parameters[name].detach().reshape(-1).clone() for name in names])
        optimizer.step()
        masks = sparsifier.masks
        assert sum(int(m.sum()) for m in masks.values()) == (numel if step in DENSE_STEPS else target), step
        assert all(int(layer.mask.sum()) == layer.active for layer in sparsifier.engine.layers)
        if step in COMPRESSION_STARTS:  # one magnitude top-k over all layers, from the step's start
            pooled = torch.cat([masks[name].reshape(-1) for name in names])
            assert torch.equal(pooled, reference_top_k(before.abs(), None, target)), step
            densities = [float(masks[name].float().mean()) for name in names]
            assert max(densities) - min(densities) > 0.01, densities  # budgets emerged, not the recipe's
            assert [int(masks[n].sum()) for n in names] != [s.active_count for s in specs]
    assert sum(int(m.sum()) for m in sparsifier.masks.values()) == target


def test_schedule_in_epochs_and_the_length_scale():
    def boundaries(method, last_step):
        changes = [step for step in range(1, last_step + 1) if method.phases.is_compressed(step)
                   != method.phases.is_compressed(step - 1)]
        return changes, method.phases.finetune_start

    # 1x, one step per epoch: the reference config's prune epochs 10, 20, ..., 70 and 85 and
    # restore epochs 15, ..., 65 and 75 (epoch e starts at step e + 1)
    changes, finetune = boundaries(ACDC(steps_per_epoch=1), 100)
    assert changes == sorted([e + 1 for e in (*range(10, 71, 10), 85, *range(15, 66, 10), 75)])
    assert finetune == 86
    # 10x: warm-up, last decompressed phase, fine-tune and total scale; the phases stay 5 epochs
    method = ACDC(steps_per_epoch=3, length_scale=10.0)
    assert method.phase_at(300) == "warmup" and method.phase_at(301) == "compressed"
    assert method.phase_at(316) == "decompressed" and method.phase_at(331) == "compressed"
    changes, finetune = boundaries(method, 3300)
    assert finetune == 3 * 850 + 1 and method.phases.cycles == 65
    assert changes[-3:] == [3 * 740 + 1, 3 * 745 + 1, 3 * 850 + 1]  # last decompressed: 105 >= 100 epochs
    assert method.phase_at(3 * 1000 + 50) == "finetune"  # compressed after the run too
    # 2.5x: fractional epochs round half up in steps
    assert ACDC(steps_per_epoch=1, length_scale=2.5).phases.finetune_start == 250 - 38 + 1
    # no warm-up: dense before step 1, the first step prunes by magnitude
    assert ACDC(steps_per_epoch=1, warmup_epochs=0).phases.is_compressed(1)


@pytest.mark.parametrize("resume_at,selection", [(10, "layer"), (24, "global")])  # the next step switches
def test_resume_is_bitwise(resume_at, selection):
    assert_resume_bitwise(acdc_recipe(selection), 30, resume_at)


@pytest.mark.parametrize("args,key", [({"compressed_epochs": 0}, "method_args.compressed_epochs"),
                                      ({"steps_per_epoch": 1.5}, "method_args.steps_per_epoch"),
                                      ({"length_scale": 0}, "method_args.length_scale"),
                                      ({"selection": "uniform"}, "method_args.selection"),
                                      ({"warmup": 3}, "method_args.warmup")])
def test_bad_options_name_the_key(args, key):
    with pytest.raises(gsparse.RecipeError, match=key):
        gsparse.load_recipe(acdc_recipe(**args))


def test_missing_steps_per_epoch_and_a_schedule_that_does_not_fit_are_refused():
    recipe = acdc_recipe()
    del recipe["method_args"]["steps_per_epoch"]
    with pytest.raises(gsparse.RecipeError, match="method_args.steps_per_epoch"):
        gsparse.load_recipe(recipe)
    model = small_mlp()
    with pytest.raises(gsparse.RecipeError, match="method_args.total_epochs"):
        gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), acdc_recipe(total_epochs=9))


@pytest.mark.parametrize("name,selection,dense_ends", [("acdc.yaml", "global", False),
                                                       ("acdc_plus_plus.yaml", "layer", True)])
def test_the_recipe_files_validate(name, selection, dense_ends):
    recipe = gsparse.load_recipe(Path(__file__).parents[1] / "recipes" / name)
    assert recipe.method == "acdc" and recipe.method_args["selection"] == selection
    assert recipe.params.dense_first_layer is recipe.params.dense_last_layer is dense_ends
    assert recipe.build_method().phases.warmup == round(10 * recipe.method_args["length_scale"]) * 1251
