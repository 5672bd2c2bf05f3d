"""The comparison harness: a tiny real grid on the bundled graph, skipping/resuming/re-running
cells, the results table and plots, settings validation."""
import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from gsparse.tasks.linkpred import compare
from gsparse.tasks.linkpred.compare import CompareError, CompareSettings

# dense 150 x 0.02 = 3 epochs, DST-EE 50 x 0.02 = 1, ADMM 1 + 1 + 1: the sparse cells cost less than dense
TINY = ["--methods", "dense", "dst_ee", "admm", "--sparsities", "0.9", "--seeds", "0", "--epochs-scale", "0.02",
        "--dense-epochs", "150", "--explore-c", "0.01", "--quiet", "--features", "walks", "--lr", "1e-2",
        "--options", "protocol=paper", "pair_features=false", "baselines=false"]
SPE = {0: 70, 1: 70, 2: 70}  # CollegeMsg's steps per epoch at batch 1024, to plan without loading it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    started = time.time()
    assert compare.main(TINY + ["--out", str(out)]) == 0
    print(f"tiny grid: {time.time() - started:.1f} s")
    return out


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def _counting_trainer(monkeypatch):
    calls = []
    real = compare.train_link_prediction

    def counting(config):
        calls.append(config)
        return real(config)

    monkeypatch.setattr(compare, "train_link_prediction", counting)
    return calls


def test_tiny_grid_table_equals_the_cells_metrics(tiny):
    dataset_dir = tiny / "collegemsg"
    folders = {"dense": "dense-s0-seed0", "dst_ee": "dst_ee-s0.9-seed0", "admm": "admm-s0.9-seed0"}
    metrics = {method: _metrics(dataset_dir / folder) for method, folder in folders.items()}
    assert {m: metrics[m]["epochs"] for m in metrics} == {"dense": 3, "dst_ee": 1, "admm": 3}
    assert metrics["dst_ee"]["density"] == pytest.approx(0.1, abs=1e-3)
    assert metrics["admm"]["density"] == pytest.approx(0.1, abs=1e-3)

    results = json.loads((dataset_dir / "results.json").read_text())
    records = {r["method"]: r for r in results["records"]}
    rows = {r["method"]: r for r in csv.DictReader((dataset_dir / "results.csv").open())}
    assert set(records) == set(rows) == set(folders)
    for method, cell_metrics in metrics.items():
        for record in (records[method], rows[method]):
            assert float(record["accuracy_mean"]) == cell_metrics["test_accuracy"]
            assert float(record["auc_mean"]) == cell_metrics["test_auc"]
            assert float(record["accuracy_std"]) == 0.0
            assert int(record["n"]) == 1 and str(record["seeds"]) == "0"
            assert int(record["epochs"]) == cell_metrics["epochs"]
        assert float(rows[method]["sparsity"]) == (0.0 if method == "dense" else 0.9)
    cells = {c["folder"]: c for c in results["cells"]}
    assert cells["dst_ee-s0.9-seed0"]["test_accuracy"] == metrics["dst_ee"]["test_accuracy"]
    assert cells["dst_ee-s0.9-seed0"]["c"] == 0.01

    # dense FLOPs by hand: 6 x batch x the MLP's 16*128 + 128*1 weights x 3 epochs of 70 steps
    assert cells["dense-s0-seed0"]["flops"] == 6 * 1024 * (16 * 128 + 128) * 3 * 70
    assert float(rows["dense"]["flops_relative"]) == 1.0
    assert 0 < float(rows["dst_ee"]["flops_relative"]) < 0.1  # 1/3 of the epochs at 10% density
    assert 0.6 < float(rows["admm"]["flops_relative"]) < 0.8  # two dense epochs, one at 10%, of three

    table = (dataset_dir / "results.md").read_text()
    for method in folders:
        assert f"| {method} |" in table
    assert f"| dst_ee | 1 | {100 * metrics['dst_ee']['test_accuracy']:.2f} ± 0.00 |" in table
    assert "| admm | 3 (1+1+1) |" in table
    assert "dense_gradient_updates" in table  # the FLOPs formula is documented


def test_plots_are_png_files(tiny):
    for name in compare.PLOTS:
        assert (tiny / "collegemsg" / name).read_bytes().startswith(PNG_SIGNATURE), name
    exploration = json.loads((tiny / "collegemsg" / "results.json").read_text())["exploration"]
    assert [curve["folder"] for curve in exploration] == ["dst_ee-s0.9-seed0"]  # c = grid c: the grid cell
    assert exploration[0]["rounds"] == [1]  # one update, at step 50 of 70


def test_second_invocation_skips_finished_cells(tiny, monkeypatch, capsys):
    dataset_dir = tiny / "collegemsg"
    before = {p: p.stat().st_mtime_ns for p in dataset_dir.glob("*/metrics.json")}
    calls = _counting_trainer(monkeypatch)
    assert compare.main(TINY + ["--out", str(tiny)]) == 0
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in dataset_dir.glob("*/metrics.json")} == before
    assert capsys.readouterr().out.count(": skipped, test accuracy") == 3


def test_a_changed_setting_reruns_only_that_cell(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "copy"
    shutil.copytree(tiny, out)
    dataset_dir = out / "collegemsg"
    untouched = {p: p.stat().st_mtime_ns for p in (dataset_dir / "dense-s0-seed0" / "metrics.json",
                                                   dataset_dir / "admm-s0.9-seed0" / "metrics.json")}
    calls = _counting_trainer(monkeypatch)
    args = [a if a != "0.01" else "0.1" for a in TINY]  # explore c follows the grid's c
    assert compare.main(args + ["--c", "0.1", "--out", str(out)]) == 0
    assert [config.recipe["method_args"]["c"] for config in calls] == [0.1]
    assert calls[0].run_dir == str(dataset_dir / "dst_ee-s0.9-seed0") and calls[0].resume
    assert json.loads((dataset_dir / "dst_ee-s0.9-seed0" / "cell.json").read_text())["config"]["recipe"][
        "method_args"]["c"] == 0.1
    assert "dst_ee-s0.9-seed0: re-run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched


def test_only_table_trains_nothing_and_needs_matching_cells(tiny, monkeypatch, capsys):
    calls = _counting_trainer(monkeypatch)
    assert compare.main(TINY + ["--out", str(tiny), "--only-table"]) == 0
    assert calls == []
    assert compare.main(TINY + ["--out", str(tiny), "--only-table", "--lr", "0.02"]) == 1  # no cell matches
    assert calls == [] and "3 cell(s) not finished" in capsys.readouterr().out
    assert compare.main(TINY + ["--out", str(tiny), "--only-table"]) == 0  # the files are whole again


# ---- cell states with a stand-in trainer (fast) ---------------------------------------------------


def _stub_trainer(monkeypatch, seen):
    def stub(config):
        seen.append({"resume": config.resume, "files": sorted(p.name for p in Path(config.run_dir).iterdir())})
        metrics = {"test_accuracy": 0.5, "test_auc": 0.5, "seconds": 0.0}
        (Path(config.run_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(compare, "train_link_prediction", stub)


def test_unfinished_cell_resumes_and_a_stale_one_starts_over(tmp_path, monkeypatch):
    settings = CompareSettings(methods=["dst_ee"], sparsities=[0.9], seeds=[0], epochs_scale=0.02, explore_c=[])
    cell = compare.plan_cells(settings, SPE).grid[0]
    cell_dir = tmp_path / cell.folder
    cell_dir.mkdir()
    (cell_dir / "cell.json").write_text(json.dumps(cell.spec()))
    (cell_dir / "checkpoint.pt").write_bytes(b"epoch 1")
    seen = []
    _stub_trainer(monkeypatch, seen)
    assert compare.run_cell(cell, tmp_path)[0] == "resumed"
    assert seen[-1] == {"resume": True, "files": ["cell.json", "checkpoint.pt"]}
    assert compare.run_cell(cell, tmp_path)[0] == "skipped" and len(seen) == 1

    other = compare.plan_cells(CompareSettings(methods=["dst_ee"], sparsities=[0.9], seeds=[0], epochs_scale=0.02,
                                               explore_c=[], c=0.5), SPE).grid[0]
    assert other.folder == cell.folder and other.spec() != cell.spec()
    assert compare.run_cell(other, tmp_path)[0] == "re-run"
    assert seen[-1]["files"] == ["cell.json"]  # the old checkpoint of another spec is gone
    assert json.loads((cell_dir / "cell.json").read_text()) == other.spec()
    assert compare.run_cell(cell, tmp_path)[0] == "re-run"  # and back


# ---- planning: budgets, recipes, folders ---------------------------------------------------------


def test_default_grid_follows_the_paper():
    plan = compare.plan_cells(CompareSettings(), SPE)
    grid = {cell.folder: cell for cell in plan.grid}
    assert len(grid) == 3 + 5 * 3 * 3
    assert [grid[f"{m}-s0.9-seed1"].phases for m in ("admm", "gmp", "set", "rigl", "dst_ee")] == \
        [[20, 20, 20], [60], [50], [50], [50]]
    assert grid["dense-s0-seed2"].config["recipe"] is None and grid["dense-s0-seed2"].epochs == 50
    dst_ee = grid["dst_ee-s0.98-seed0"].config["recipe"]
    assert dst_ee["schedule"] == {"update_interval": 50, "drop_fraction": 0.5, "drop_fraction_decay": "cosine",
                                  "final_drop_fraction": 0.005, "last_update_step": 2625}
    assert dst_ee["method_args"] == {"c": 0.01, "eps": 1.0} and dst_ee["sparsity"] == 0.98
    assert dst_ee["params"] == {"include": ["predictor.fc1.weight", "predictor.fc2.weight"]}
    assert "method_args" not in grid["rigl-s0.8-seed0"].config["recipe"]
    assert grid["gmp-s0.8-seed0"].config["recipe"]["schedule"] == {
        "update_interval": 50, "first_update_step": 400, "last_update_step": 3150}  # of 4200 steps
    assert grid["admm-s0.8-seed0"].config["recipe"]["method_args"] == {
        "pretrain_steps": 1400, "admm_steps": 1400, "admm_interval": 70, "rho": 0.01}
    assert grid["set-s0.8-seed2"].config["recipe"]["seed"] == 2
    # exploration cells: c = 0.01 is the grid's own cell; the others get their own folders
    assert {c: cell.folder for c, cell in plan.explore.items()} == {
        0.0: "dst_ee-c0-s0.9-seed0", 0.01: "dst_ee-s0.9-seed0", 0.1: "dst_ee-c0.1-s0.9-seed0",
        1.0: "dst_ee-c1-s0.9-seed0"}
    assert len(plan.cells) == len(grid) + 3


def test_epochs_scale_rounds_up_to_at_least_one_epoch():
    settings = CompareSettings(epochs_scale=0.05, admm_epochs=[0, 20, 7])
    assert [settings.epochs(m) for m in ("dense", "dst_ee", "gmp", "admm")] == [[3], [3], [3], [0, 1, 1]]
    assert CompareSettings(epochs_scale=0.15, dst_epochs=20).epochs("rigl") == [3]  # 20 * 0.15 is 3, not 4


def test_training_flops_formula():
    metrics = {"batch_size": 4, "active_weight_steps": 100, "other_weights": 3, "total_steps": 10,
               "sparse_weights": 20, "dense_gradient_updates": 2}
    assert compare.training_flops(metrics) == 6 * 4 * (100 + 30) + 2 * 4 * 20 * 2


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_method_names_the_allowed_ones(capsys):
    with pytest.raises(CompareError, match="unknown 'sgd'.*allowed: dense, dst_ee, rigl, set, static, gmp, admm"):
        CompareSettings(methods=["dense", "sgd"])
    assert compare.main(["--methods", "dst_ee", "magic"]) == 2
    error = capsys.readouterr().err
    assert "magic" in error and all(m in error for m in ("dense", "admm", "gmp", "set", "rigl", "dst_ee"))


@pytest.mark.parametrize("sparsity", [0.0, 1.0, 1.5, -0.2])
def test_sparsity_outside_the_open_unit_interval_is_refused(sparsity, capsys):
    with pytest.raises(CompareError, match=r"in \(0, 1\)"):
        CompareSettings(sparsities=[0.9, sparsity])
    with pytest.raises(CompareError, match="explore_sparsity"):
        CompareSettings(explore_sparsity=sparsity)
    assert compare.main(["--sparsities", str(sparsity)]) == 2
    assert "sparsities" in capsys.readouterr().err


@pytest.mark.parametrize("settings, message", [
    ({"admm_epochs": [20, 20, 0]}, "retraining"),
    ({"admm_epochs": [20, 20]}, "3 numbers"),
    ({"epochs_scale": 0}, "epochs_scale"),
    ({"dst_epochs": 0}, "dst_epochs"),
    ({"seeds": [-1]}, "seeds"),
    ({"features": "pixels"}, "walks"),
    ({"curve_sparsity": 0.5}, "not one of the grid's sparsities"),
    ({"explore_c": [-1]}, "explore_c"),
])
def test_other_bad_settings_are_refused(settings, message):
    with pytest.raises(CompareError, match=message):
        CompareSettings(**settings)


def test_too_few_steps_for_a_schedule_is_refused():
    with pytest.raises(CompareError, match="gmp.*--gmp-epochs"):
        compare.plan_cells(CompareSettings(methods=["gmp"], epochs_scale=0.01, explore_c=[]), SPE)
    with pytest.raises(CompareError, match="rigl.*update_interval"):
        compare.plan_cells(CompareSettings(methods=["rigl"], epochs_scale=0.01, update_interval=100,
                                           explore_c=[]), SPE)


def test_summary_over_seeds_uses_the_sample_std():
    values = [{"method": "rigl", "sparsity": 0.9, "seed": seed, "test_accuracy": accuracy, "test_auc": 0.5,
               "epochs": 50, "phases": [50], "flops_relative": relative}
              for seed, accuracy, relative in ((0, 0.70, 0.2), (1, 0.80, 0.4), (2, 0.75, 0.3))]
    [record] = compare.summarise(values)
    assert record["seeds"] == "0 1 2" and record["n"] == 3
    assert record["accuracy_mean"] == pytest.approx(0.75)
    assert record["accuracy_std"] == pytest.approx(0.05)  # sample std (n - 1)
    assert record["flops_relative"] == pytest.approx(0.3)


def test_baselines_section_puts_the_baselines_beside_every_entry_and_marks_losers(tmp_path, monkeypatch):
    settings = CompareSettings(methods=["dense", "dst_ee"], sparsities=[0.9], seeds=[0, 1], explore_c=[])
    plan = compare.plan_cells(settings, SPE)
    baselines = {seed: {"edgebank": {"test_tuned_accuracy": 0.60 + seed / 100, "test_auc": 0.61, "test_mrr": 0.30},
                        "common_neighbors": {"test_tuned_accuracy": 0.55, "test_auc": 0.70, "test_mrr": 0.20}}
                 for seed in (0, 1)}
    scores = {("dense", 0): (0.70, 0.75, 0.40), ("dense", 1): (0.72, 0.77, 0.42),
              ("dst_ee", 0): (0.66, 0.69, 0.35), ("dst_ee", 1): (0.66, 0.71, 0.33)}

    def finished(cell, dataset_dir):
        accuracy, auc, mrr = scores[(cell.method, cell.seed)]
        return {"baselines": baselines[cell.seed], "test_tuned_accuracy": accuracy, "test_auc": auc, "test_mrr": mrr}

    monkeypatch.setattr(compare.harness, "finished_metrics", finished)
    text = compare.baselines_section(plan, tmp_path, settings)
    assert "| edgebank | 60.50 ± 0.71 | 61.00 ± 0.00 | 30.00 ± 0.00 |" in text
    assert "| common_neighbors | 55.00 ± 0.00 | 70.00 ± 0.00 | 20.00 ± 0.00 |" in text
    # AUC: best baseline common_neighbors 0.70; DST-EE's mean 0.70 does not beat it, dense's 0.76 does.
    assert "not above the best baseline (common_neighbors, 70.00)" in text
    assert "| dense | 76.00 ± 1.41 |" in text and "| dst_ee | 70.00 ± 1.41 * |" in text
    assert "do not beat the best no-learning baseline: dst_ee 90% (AUC)" in text
    assert "dense 90%" not in text.split("do not beat")[1]


def test_the_grid_spreads_sparsity_as_asked():
    plan = compare.plan_cells(CompareSettings(methods=["dst_ee"], sparsities=[0.9], seeds=[0], explore_c=[],
                                              distribution="erk"), SPE)
    assert plan.grid[0].config["recipe"]["distribution"] == "erk"
    assert "`predictor.fc2`, erk)" in compare.LinkPredStudy(CompareSettings(distribution="erk")).describe(
        CompareSettings(distribution="erk"))
    with pytest.raises(CompareError, match="distribution: 'even' is not one of: uniform, er, erk"):
        CompareSettings(distribution="even")
