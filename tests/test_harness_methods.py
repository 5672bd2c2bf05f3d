"""Every registered method has a place in the comparison harness: the recipe the harness builds for
a run of a given length validates and builds (methods size their schedules via harness_recipe)."""
import pytest

import gsparse
from gsparse.methods import available_methods
from gsparse.training.compare import GridSettings, build_recipe

SEED_METHODS = ["dst_ee", "rigl", "set", "static", "gmp", "mest", "acdc", "optg", "autosparse", "topkast_ga", "snip"]


@pytest.mark.parametrize("method", SEED_METHODS)
def test_the_harness_builds_a_valid_recipe_sized_to_the_run(method):
    assert method in available_methods()
    settings = GridSettings(methods=["dense", method], sparsities=[0.9], seeds=[0], update_interval=50)
    recipe = build_recipe(method, 0.9, [20], 70, settings, seed=0, sparse_params=["fc1.weight", "fc2.weight"])
    loaded = gsparse.load_recipe(recipe)
    built = loaded.build_method()  # AC/DC checks here that its phases fit the run
    args = loaded.method_args
    if "steps_per_epoch" in built.options:
        assert args["steps_per_epoch"] == 70
    if method == "optg" or method.startswith(("autosparse", "topkast")):
        assert args["epochs"] == 20
    if method == "acdc":
        assert args["total_epochs"] == 20 and args["warmup_epochs"] == 2 and args["finetune_epochs"] == 3
    if method == "mest":
        assert args["mode"] == "ems" and args["stop_step"] == 1050
