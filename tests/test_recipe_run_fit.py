"""Recipes fitted to the run: "N%" and auto resolved exactly, run checks before training (errors and
RecipeWarnings), and the runner's end-of-run target check."""
import json
import math

import pytest
import torch

import gsparse
from gsparse import RecipeError, load_recipe
from gsparse.options import RecipeWarning, RunFraction
from gsparse.training import RunConfig, TaskBase, train
from tests.conftest import small_mlp, train_step

BASE = {"sparsity": 0.8, "distribution": "uniform"}
SMALL_MLP_TARGETS = [115, 307, 26]  # round_half_up(0.2 * numel) of 12x48, 48x32, 32x4


def dst_ee(**schedule):
    return {"method": "dst_ee", **BASE, "schedule": schedule}


def admm(**args):
    return {"method": "admm", **BASE, "method_args": {"rho": 0.01, **args}}


class TinyTask(TaskBase):
    """4 optimizer steps of 32 examples per epoch on a 12-32-4 MLP (512 sparse weights)."""

    name, batch_size = "tiny", 32

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(128, 12, generator=generator)
        self.y = self.x[:, :4].argmax(1)
        self.threads_seen = set()

    def build_model(self):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def steps_per_epoch(self):
        return 4

    def train_batches(self, epoch, context):
        for step in range(4):
            yield self.x[step * 32:(step + 1) * 32], self.y[step * 32:(step + 1) * 32]

    def loss(self, model, batch):
        self.threads_seen.add(torch.get_num_threads())
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def run_tiny(tmp_path, recipe, epochs=4, threads=1):
    return train(TinyTask(), RunConfig(epochs=epochs, recipe=recipe, run_dir=str(tmp_path), progress=False,
                                       threads=threads, log=lambda line: None))


# ---- "N%" and auto resolve exactly --------------------------------------------------------------


def test_percentages_resolve_half_up_in_schedule_keys():
    recipe = load_recipe(dst_ee(update_interval="2%", last_update_step="75%", first_update_step=40))
    assert recipe.schedule.update_interval == RunFraction("2", "steps", 1)
    fitted = recipe.fit_to_run(1375)
    # 2% of 1375 = 27.5 -> 28 (half up); 75% = 1031.25 -> 1031; an int stays as given
    assert (fitted.schedule.update_interval, fitted.schedule.last_update_step) == (28, 1031)
    assert fitted.schedule.first_update_step == 40
    assert fitted.fitted_to["resolved"] == {"schedule.update_interval": {"given": "2%", "value": 28},
                                            "schedule.last_update_step": {"given": "75%", "value": 1031}}
    assert fitted.source["schedule"] == {"update_interval": 28, "last_update_step": 1031, "first_update_step": 40}
    assert fitted.run_relative_keys() == [] and recipe.run_relative_keys() == ["schedule.update_interval",
                                                                                "schedule.last_update_step"]


def test_percentages_resolve_in_method_args_and_lists():
    fitted = load_recipe(admm(pretrain_steps="30%", admm_steps="12.5%", admm_interval=70)).fit_to_run(1375)
    # 412.5 -> 413, 171.875 -> 172; the int is unchanged
    assert (fitted.method_args["pretrain_steps"], fitted.method_args["admm_steps"],
            fitted.method_args["admm_interval"]) == (413, 172, 70)
    mest = {"method": "mest", **BASE, "schedule": {"update_interval": "2%"},
            "method_args": {"decay_milestones": ["10%", 700, "75%"], "stop_step": "90%"}}
    fitted = load_recipe(mest).fit_to_run(1375)
    assert fitted.method_args["decay_milestones"] == (138, 700, 1031)  # 137.5 -> 138, 1031.25 -> 1031
    assert fitted.method_args["stop_step"] == 1238  # 1237.5 -> 1238
    assert "method_args.decay_milestones[0]" in fitted.fitted_to["resolved"]


def test_a_zero_fraction_is_at_least_the_keys_minimum():
    fitted = load_recipe(dst_ee(update_interval="0%")).fit_to_run(100)
    assert fitted.schedule.update_interval == fitted.schedule.first_update_step == 1
    assert load_recipe(admm(pretrain_steps="0%", admm_steps="1%", admm_interval="0.1%")).fit_to_run(
        100).method_args == {"pretrain_steps": 0, "admm_steps": 1, "admm_interval": 1, "rho": 0.01, "rho_growth": 1.0}


@pytest.mark.parametrize("recipe,key", [
    (dst_ee(update_interval="150%"), "schedule.update_interval"),
    (dst_ee(last_update_step="abc%"), "schedule.last_update_step"),
    (admm(pretrain_steps="150%", admm_steps=1, admm_interval=1), "method_args.pretrain_steps"),
    (admm(pretrain_steps=1, admm_steps="abc%", admm_interval=1), "method_args.admm_steps"),
    ({"method": "mest", **BASE, "method_args": {"decay_milestones": ["10%", "150%"]}}, "method_args.decay_milestones"),
    ({"method": "mest", **BASE, "method_args": {"decay_milestones": ["50%", "10%"]}}, "method_args.decay_milestones"),
    (dst_ee(first_update_step="50%", last_update_step="40%"), "schedule.last_update_step"),
])
def test_bad_percentages_name_the_key(recipe, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(recipe)


def test_auto_takes_the_runs_epochs_and_steps_per_epoch():
    optg = {"method": "optg", **BASE, "method_args": {"steps_per_epoch": "auto", "epochs": "auto"}}
    with pytest.warns(RecipeWarning, match="sigmoid is at 0.9933"):  # tau = 20 ends near, not at, P
        fitted = load_recipe(optg).fit_to_run(1400, steps_per_epoch=70)
    assert (fitted.method_args["steps_per_epoch"], fitted.method_args["epochs"]) == (70, 20)
    autosparse = {"method": "autosparse", **BASE, "method_args": {"steps_per_epoch": "auto", "epochs": "auto",
                                                                  "alpha_zero_epoch": "90%"}}
    fitted = load_recipe(autosparse).fit_to_run(1410, steps_per_epoch=70)  # a partial 21st epoch counts
    assert (fitted.method_args["epochs"], fitted.method_args["alpha_zero_epoch"]) == (21, 19)  # 18.9 -> 19
    with pytest.raises(RecipeError, match=r"method_args\.steps_per_epoch.*steps_per_epoch="):
        load_recipe(optg).fit_to_run(1400)


def test_an_unfitted_recipe_is_refused_without_total_steps():
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RecipeError, match=r"method_args\.pretrain_steps.*total_steps="):
        gsparse.Sparsifier(model, optimizer, admm(pretrain_steps="30%", admm_steps="30%", admm_interval="5%"))
    assert all(not hasattr(module, "weight") or module.weight.count_nonzero() == module.weight.numel()
               for module in model)  # refused before the model was touched
    with pytest.raises(RecipeError, match=r"schedule\.update_interval.*total_steps="):
        load_recipe(dst_ee(update_interval="2%")).build_method()


# ---- run checks -----------------------------------------------------------------------------------


def test_admm_with_absolute_phases_longer_than_the_run_is_refused():
    with pytest.raises(RecipeError, match=r"method_args\.admm_steps.*step 2,801.*1,400 steps.*end dense"):
        load_recipe(admm(pretrain_steps=1400, admm_steps=1400, admm_interval=70)).fit_to_run(1400)
    model = small_mlp()
    with pytest.raises(RecipeError, match="2,801"):
        gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           admm(pretrain_steps=1400, admm_steps=1400, admm_interval=70), total_steps=1400)


def test_admm_with_fractional_phases_ends_exactly_at_its_target_on_a_short_run():
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    recipe = admm(pretrain_steps="30%", admm_steps="30%", admm_interval="5%")
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe, total_steps=60)
    assert sparsifier.engine.method.prune_step == 37  # 18 + 18 + 1
    for step in range(1, 61):
        train_step(model, optimizer, step)
        active = [int(mask.sum()) for mask in sparsifier.masks.values()]
        assert active == ([576, 1536, 128] if step < 37 else SMALL_MLP_TARGETS)
    assert [int(model[i].weight.count_nonzero()) for i in (0, 2, 4)] == SMALL_MLP_TARGETS


def test_gmp_ramp_given_off_the_update_grid_still_ends_at_the_target():
    recipe = {"method": "gmp", **BASE, "schedule": {"update_interval": 10, "first_update_step": "10%",
                                                      "last_update_step": "75%"}}
    model = small_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # ramp from step 6 to 45: the grid's last update (40) is 34/39 of the way; step 45 itself ends it
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe, total_steps=60)
    for step in range(1, 61):
        train_step(model, optimizer, step)
        if step == 44:
            assert sum(int(mask.sum()) for mask in sparsifier.masks.values()) > sum(SMALL_MLP_TARGETS)
    assert [int(mask.sum()) for mask in sparsifier.masks.values()] == SMALL_MLP_TARGETS


def test_gmp_ramp_past_the_run_is_refused():
    recipe = {"method": "gmp", **BASE, "schedule": {"update_interval": 10, "last_update_step": 100}}
    with pytest.raises(RecipeError, match=r"schedule\.last_update_step.*step 100.*80 steps"):
        load_recipe(recipe).fit_to_run(80)


def test_few_mask_updates_warn_with_the_count():
    with pytest.warns(RecipeWarning, match=r"3 mask updates in a run of 12 steps \(every 4 steps from step 4\)"):
        load_recipe(dst_ee(update_interval=4)).fit_to_run(12)
    with pytest.warns(RecipeWarning, match="1 mask updates in a run of 1,400 steps"):
        load_recipe({"method": "mest", **BASE, "schedule": {"update_interval": 700},
                     "method_args": {"stop_step": 1000}}).fit_to_run(1400)


def test_no_mask_update_in_the_run_is_refused():
    with pytest.raises(RecipeError, match=r"schedule\.first_update_step.*step 500.*400 steps"):
        load_recipe(dst_ee(update_interval=500)).fit_to_run(400)


def test_a_drop_fraction_decay_cut_by_the_runs_end_warns():
    recipe = dst_ee(update_interval=10, last_update_step=200, drop_fraction=0.5, drop_fraction_decay="linear")
    # linear from 0.5 at step 10 to 0 at step 200: at step 105 it is 0.25
    with pytest.warns(RecipeWarning, match=r"linear drop-fraction decay ends at step 200.*cut at 0\.25 "):
        load_recipe(recipe).fit_to_run(105)


def test_mest_ems_ending_between_growth_and_prune_back_is_refused():
    recipe = {"method": "mest", **BASE, "schedule": {"update_interval": 10}, "method_args": {"mode": "ems"}}
    # growths at 10, 30, 50: the run of 55 steps ends before the prune-back at 60
    with pytest.raises(RecipeError, match=r"method_args\.stop_step.*growth at step 50.*step 60"):
        load_recipe(recipe).fit_to_run(55)
    load_recipe(recipe).fit_to_run(60)


def test_acdc_whose_fine_tune_is_after_the_run_is_refused():
    acdc = {"method": "acdc", **BASE, "method_args": {"steps_per_epoch": 10, "total_epochs": 20, "warmup_epochs": 2,
                                                      "compressed_epochs": 2, "decompressed_epochs": 2,
                                                      "last_decompressed_epochs": 2, "finetune_epochs": 4}}
    with pytest.raises(RecipeError, match=r"method_args\.total_epochs.*step 161.*150 steps.*decompressed phase"):
        load_recipe(acdc).fit_to_run(150)
    acdc["method_args"].update(steps_per_epoch="auto", total_epochs="auto")
    assert load_recipe(acdc).fit_to_run(150, 10).build_method().phases.finetune_start == 111  # 15 - 4 epochs


# ---- the runner: fitted recipe and the end-of-run target check ----------------------------------


def test_the_runner_records_a_run_that_ends_below_its_target(tmp_path):
    optg = {"method": "optg", "sparsity": 0.75, "distribution": "uniform",
            "method_args": {"steps_per_epoch": "auto", "epochs": "auto"}}
    with pytest.warns(RecipeWarning) as caught:
        metrics = run_tiny(tmp_path, optg)
    messages = [str(w.message) for w in caught]
    assert any("sigmoid is at 0.7311" in message for message in messages)  # announced before training
    assert any("not at its target" in message for message in messages)  # and after it
    # 512 weights, target 128 active; epoch 4 of tau = 4: 512 - round(0.731059 * 384) = 231 active
    assert metrics["target_sparsity"] == 0.75
    assert metrics["final_sparsity"] == pytest.approx(281 / 512)
    assert metrics["sparsity_target_met"] is False
    assert metrics["method"] == "optg (not at target: 0.549)"
    assert metrics["recipe_fitted"]["resolved"] == {"method_args.steps_per_epoch": {"given": "auto", "value": 4},
                                                    "method_args.epochs": {"given": "auto", "value": 4}}
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == metrics["method"]


def test_the_runner_fits_percentages_and_a_run_at_target_keeps_its_label(tmp_path):
    rigl = {"method": "rigl", "sparsity": 0.75, "distribution": "uniform",
            "schedule": {"update_interval": "12.5%", "last_update_step": "75%"}}
    metrics = run_tiny(tmp_path, rigl)  # 16 steps: every 2 steps until step 12, 6 updates
    assert metrics["num_updates"] == 6
    assert metrics["recipe_fitted"]["schedule"]["update_interval"] == 2
    assert metrics["recipe_fitted"]["schedule"]["last_update_step"] == 12
    assert (metrics["method"], metrics["sparsity_target_met"], metrics["final_sparsity"]) == ("rigl", True, 0.75)


def test_a_learned_sparsity_is_recorded_not_judged(tmp_path):
    autosparse = {"method": "autosparse", "sparsity": 0.9, "distribution": "uniform",
                  "method_args": {"steps_per_epoch": "auto", "epochs": "auto"}}
    metrics = run_tiny(tmp_path, autosparse, epochs=1)
    assert metrics["method"] == "autosparse" and metrics["sparsity_target_met"] is None
    assert metrics["target_sparsity"] == pytest.approx(0.9, abs=1 / 512)
    assert math.isclose(metrics["final_sparsity"], 1 - metrics["density"])


class EarlyBestTask(TinyTask):
    """Its validation score falls every epoch, so an unrestricted selection would pick epoch 1."""

    eval_splits, selection_metric, selection_mode = ("val",), "val_score", "max"

    def __init__(self):
        super().__init__()
        self.evaluations = 0

    def evaluate(self, model, split):
        self.evaluations += 1
        return {"score": 10.0 - self.evaluations}


def test_the_best_epoch_is_chosen_among_the_epochs_at_the_target_sparsity(tmp_path):
    # 16 steps: dense pretraining steps 1-4, ADMM steps 5-8, the prune at step 9 (in epoch 3).
    recipe = admm(pretrain_steps="25%", admm_steps="25%", admm_interval="12.5%")
    metrics = train(EarlyBestTask(), RunConfig(epochs=4, recipe=recipe, run_dir=str(tmp_path), progress=False,
                                               threads=1, log=lambda line: None))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["at_target"] for row in rows] == [False, False, True, True]
    assert [row["density"] for row in rows][:2] == [1.0, 1.0]
    assert metrics["best_epoch"] == 3 and metrics["best_epoch_at_target"] is True  # not the dense epoch 1
    assert metrics["val_score"] == 7.0 and metrics["sparsity_target_met"] is True
