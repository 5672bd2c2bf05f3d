"""Bad inputs get one clear error of gsparse's own type before training (issue 14): each names the
file, the key or line and what is expected, and the command lines print it as ``<prog>: error:``
with exit code 2."""
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import gsparse
from gsparse import RecipeError, RecipeWarning, layer_densities, load_recipe
from gsparse.cli import main as gsparse_main
from gsparse.deepspeed.config import DeepSpeedConfigError, ensure_process_group, load_deepspeed_config
from gsparse.tasks.graphs import GraphFormatError, load_edges
from gsparse.tasks.linkpred import compare
from gsparse.tasks.linkpred.cli import main as linkpred_main
from gsparse.tasks.linkpred.slices import make_split
from gsparse.training import RunConfig, TaskBase, train
from gsparse.training.compare import folder_name
from gsparse.training.runner import deepspeed_config_for

ROOT = Path(__file__).resolve().parents[1]
COLLEGE_MSG = ROOT / "gsparse" / "tasks" / "graphs" / "cards" / "samples" / "CollegeMsg.txt"
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "MASTER_ADDR", "MASTER_PORT",
                      "LOCAL_WORLD_SIZE", "LOCAL_SIZE")


def cli_error(main, argv, capsys, prog):
    """Run a command line in-process; its exit code must be 2 with one error line and no traceback."""
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"{prog}: error: ") and "Traceback" not in error, error
    return error


# ---- 1. a huge node id in an edge list -------------------------------------------------------------

HUGE_ID_GRAPH = "1 2 10\n2 3 11\n3 100000000 12\n4 1 13\n2 4 14\n"


def test_a_huge_node_id_is_refused_at_load_naming_its_line(tmp_path, capsys):
    path = tmp_path / "huge.txt"
    path.write_text(HUGE_ID_GRAPH)
    with pytest.raises(GraphFormatError) as caught:
        load_edges(path)
    # 5 distinct ids; max id + 1 = 100,000,001 > 10 x 5 + 1,000,000
    assert caught.value.line_number == 3
    message = str(caught.value)
    assert f"{path}, line 3" in message and "node id 100000000" in message and "only 5 distinct" in message
    assert "remap=True (--remap)" in message and "'3 100000000 12'" in message
    remapped = load_edges(path, remap=True)
    assert remapped.num_nodes == 5 and remapped.node_ids.tolist() == [1, 2, 3, 4, 100000000]
    error = cli_error(linkpred_main, ["--dataset", str(path), "--run_dir", str(tmp_path / "run"), "--no-progress"],
                      capsys, "train_linkpred")
    assert "line 3" in error and "--remap" in error


def test_ids_just_inside_the_sparse_bound_load_as_they_are(tmp_path):
    # 2 distinct ids: the bound is max id + 1 <= 10 x 2 + 1,000,000, i.e. max id 1,000,019
    path = tmp_path / "edge.txt"
    path.write_text("0 1000019 1\n")
    assert load_edges(path).num_nodes == 1_000_020
    path.write_text("0 1000020 1\n")
    with pytest.raises(GraphFormatError, match="line 1: node id 1000020"):
        load_edges(path)


# ---- 2. DeepSpeed configs of the wrong shape ----------------------------------------------------------

@pytest.mark.parametrize("text, key, expected", [
    ('{"zero_optimization": 2}', "'zero_optimization'", 'expected a mapping such as {"stage": 2}, got 2'),
    ('{"zero_optimization": {"stage": 2, "offload_optimizer": "cpu"}}', "'zero_optimization.offload_optimizer'",
     "expected a mapping such as {\"device\": \"none\"}, got 'cpu'"),
    ('{"bf16": true}', "'bf16'", 'expected a mapping such as {"enabled": true}, got True'),
    ('{"zero_optimization": {"stage": 4}}', "'zero_optimization.stage'", "expected 0, 1, 2 or 3, got 4"),
    ('{"train_micro_batch_size_per_gpu": "64"}', "'train_micro_batch_size_per_gpu'",
     "expected a positive integer, got '64'"),
    # line 3 is '  "zero_optimization": {"stage": 2,}': the '}' after the trailing comma is column 36
    ('{\n  "train_batch_size": 8,\n  "zero_optimization": {"stage": 2,}\n}', "", "line 3, column 36: not valid JSON"),
    ('{"bf16": {"enabled": true}, "bf16": {"enabled": false}}', "'bf16'", "is given twice"),
    ("[1, 2]", "", "expected a JSON object of DeepSpeed keys"),
])
def test_deepspeed_configs_of_the_wrong_shape_name_file_key_and_expectation(tmp_path, capsys, text, key, expected):
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(DeepSpeedConfigError) as caught:
        load_deepspeed_config(path)
    assert str(caught.value).startswith(f"DeepSpeed config {path}: {key}")
    assert expected in str(caught.value)
    error = cli_error(linkpred_main, ["--deepspeed_config", str(path), "--run_dir", str(tmp_path / "run")], capsys,
                      "train_linkpred")
    assert expected in error


def test_a_missing_deepspeed_config_and_a_dict_are_named(tmp_path):
    with pytest.raises(DeepSpeedConfigError, match=f"DeepSpeed config {tmp_path / 'nope.json'}: no such file"):
        load_deepspeed_config(tmp_path / "nope.json")
    with pytest.raises(DeepSpeedConfigError, match="DeepSpeed config <dict>: 'fp16.enabled' expected true or false"):
        load_deepspeed_config({"fp16": {"enabled": "yes"}})
    assert load_deepspeed_config(ROOT / "ds_configs" / "zero2_dst_ee_linkpred.json")["zero_optimization"] == {"stage": 2}


def test_the_image_command_reports_a_bad_deepspeed_config(tmp_path, capsys):
    missing = tmp_path / "ds.json"
    error = cli_error(gsparse_main, ["cnn", "--deepspeed_config", str(missing), "--run_dir", str(tmp_path / "run")],
                      capsys, "train_cnn")
    assert f"DeepSpeed config {missing}: no such file" in error


def test_gsparse_initialize_checks_the_config_before_deepspeed_builds_anything(tmp_path):
    import gsparse.deepspeed as gds

    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2, "offload_param": "nvme"}}')
    model = torch.nn.Linear(4, 4)
    with pytest.raises(DeepSpeedConfigError, match="'zero_optimization.offload_param' expected a mapping"):
        gds.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=str(path))
    assert not torch.distributed.is_initialized()  # refused before any process group



def test_deepspeed_universal_loading_is_refused_with_the_route_that_works():
    import gsparse.deepspeed as gds

    with pytest.raises(gds.UnsupportedLayout, match=r"checkpoint.load_universal is not needed with gsparse, which "
                                                    r"reshards its checkpoints itself: engine.load_checkpoint\(dir\)"):
        gds.check_config({"zero_optimization": {"stage": 2}, "checkpoint": {"load_universal": True}})
    gds.check_config({"zero_optimization": {"stage": 2}, "checkpoint": {"load_universal": False}})


def test_collective_timeout_is_checked_before_training(monkeypatch):
    with pytest.raises(ValueError, match="collective_timeout: expected a positive number of seconds, got -1"):
        RunConfig(collective_timeout=-1)
    monkeypatch.setenv("GSPARSE_COLLECTIVE_TIMEOUT", "ten")
    with pytest.raises(ValueError, match=r"\$GSPARSE_COLLECTIVE_TIMEOUT: expected a number of seconds, got 'ten'"):
        RunConfig()
    monkeypatch.setenv("GSPARSE_COLLECTIVE_TIMEOUT", "2.5")
    from gsparse.training.watchdog import resolve_timeout

    assert resolve_timeout() == 2.5 and resolve_timeout(7) == 7.0

# ---- 3. --deepspeed_config without a launcher -----------------------------------------------------------

def test_a_launcher_environment_is_left_to_the_launcher(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert ensure_process_group() is False and not torch.distributed.is_initialized()


def test_deepspeed_config_without_a_launcher_runs_as_one_rank(tmp_path):
    env = {name: value for name, value in os.environ.items() if name not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", GSPARSE_THREADS="1")
    # zero2.json sets micro-batch 512 with 1 accumulation step: on 1 rank the global batch is 512
    command = [sys.executable, str(ROOT / "scripts" / "train_linkpred.py"), "--deepspeed_config",
               str(ROOT / "ds_configs" / "zero2.json"), "--epochs", "1", "--no-progress", "--run_dir", str(tmp_path),
               "--no-pair_features", "--no-baselines", "--batch_size", "512"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "running DeepSpeed as a single process (rank 0 of 1" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and metrics["status"] == "finished" and metrics["batch_size"] == 512


# ---- 4. the DeepSpeed config's batch size against the task's ----------------------------------------------

def test_a_deepspeed_batch_that_agrees_with_the_task_is_kept():
    # ds_configs/zero2_dst_ee_linkpred.json: micro 512 x 1 accumulation x 2 ranks = the default 1024
    config = load_deepspeed_config(ROOT / "ds_configs" / "zero2_dst_ee_linkpred.json")
    filled, accumulation = deepspeed_config_for(config, 1024, 2, None)
    assert (filled["train_micro_batch_size_per_gpu"], accumulation) == (512, 1)
    # no batch in the config: the task's 96 over 3 ranks x 4 accumulation steps = 8 per micro-batch
    filled, accumulation = deepspeed_config_for({"zero_optimization": {"stage": 1}}, 96, 3, 4)
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"], accumulation) == (8, 4, 4)
    filled, _ = deepspeed_config_for({"train_batch_size": 96, "gradient_accumulation_steps": 2}, 96, 3, None)
    assert filled["train_micro_batch_size_per_gpu"] == 16 and "train_batch_size" not in filled


@pytest.mark.parametrize("config, world, accumulation, expected", [
    ({"train_micro_batch_size_per_gpu": 512, "gradient_accumulation_steps": 1}, 1, None,
     "'train_micro_batch_size_per_gpu' sets a global batch of 512 x gradient_accumulation_steps 1 x 1 rank(s) = 512, "
     "but the task's batch_size (--batch_size) is 1024"),
    ({"train_batch_size": 256}, 2, None, "'train_batch_size' sets a global batch of 256, but the task's batch_size "
                                         "(--batch_size) is 1024"),
    ({"gradient_accumulation_steps": 2}, 2, 4, "'gradient_accumulation_steps' is 2, but the run's accumulation_steps "
                                               "(--accumulation_steps) is 4"),
])
def test_a_deepspeed_batch_that_contradicts_the_task_is_refused(config, world, accumulation, expected):
    with pytest.raises(DeepSpeedConfigError) as caught:
        deepspeed_config_for(config, 1024, world, accumulation, source="ds.json")
    assert str(caught.value).startswith("DeepSpeed config ds.json: ") and expected in str(caught.value)


# ---- 5. compare --dataset with a file path ------------------------------------------------------------------

def test_folder_names_of_dataset_paths():
    assert folder_name("collegemsg") == "collegemsg"
    assert folder_name("/data/graphs/My Graph (v2).txt.gz") == "My_Graph_v2"
    assert folder_name("bitcoin-otc.csv") == "bitcoin-otc"


def test_compare_with_an_absolute_dataset_path_writes_under_its_stem(tmp_path):
    graph = tmp_path / "data" / "My Graph.txt"
    graph.parent.mkdir()
    shutil.copy(COLLEGE_MSG, graph)
    out = tmp_path / "out"
    argv = ["--dataset", str(graph), "--methods", "dense", "--sparsities", "0.9", "--seeds", "0", "--explore-c",
            "--only-table", "--out", str(out), "--options", "baselines=false"]
    assert compare.main(argv) == 1  # nothing trained (--only-table), so no finished cell
    results = json.loads((out / "My_Graph" / "results.json").read_text())
    assert results["dataset"] == "My_Graph" and results["settings"]["dataset"] == str(graph)
    assert (out / "My_Graph" / "results.md").is_file()


# ---- 6. a run directory that cannot be written ------------------------------------------------------------

class ParityTask(TaskBase):
    name, batch_size = "parity", 8

    def build_model(self):
        raise AssertionError("the run folder is checked before the model is built")

    def steps_per_epoch(self):
        return 1


def test_an_unwritable_run_dir_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    run_dir = blocker / "run"  # cannot be created: its parent is a file
    with pytest.raises(ValueError, match=f"run_dir '{run_dir}' cannot be created or written"):
        train(ParityTask(), RunConfig(run_dir=str(run_dir), progress=False))
    error = cli_error(linkpred_main, ["--run_dir", str(run_dir)], capsys, "train_linkpred")
    assert str(run_dir) in error and "--run_dir" in error


# ---- 7. evaluation slices with too few pairs ------------------------------------------------------------

def path_graph(edges: int):
    """Edges i -> i + 1 at time i: every pair distinct, so a slice of n edges scores n pairs."""
    return np.arange(edges), np.arange(edges) + 1, np.arange(edges), edges + 1


@pytest.mark.parametrize("graph, options, expected", [
    # 60 edges: validation floor(0.15 x 60) = 9 edges
    (60, {}, "slice 'val' has 9 pair(s) to score (from 9 edge(s)); at least 10"),
    # test floor(0.1 x 60) = 6 edges
    (60, {"val_fraction": 0.3, "test_fraction": 0.1}, "slice 'test' has 6 pair(s) to score (from 6 edge(s))"),
    # paper: test = the last floor(0.2 x 45) = 9 edges
    (45, {"protocol": "paper"}, "slice 'test' has 9 pair(s) to score; at least 10 are needed for its metrics: use a "
                                "larger graph (protocol 'paper')"),
    (45, {"protocol": "random"}, "slice 'test' has"),
])
def test_an_evaluation_slice_with_fewer_than_ten_pairs_is_refused(graph, options, expected):
    with pytest.raises(ValueError) as caught:
        make_split(*path_graph(graph), seed=0, train_windows=2, **options)
    assert expected in str(caught.value)


def test_ten_pairs_per_evaluation_slice_are_enough():
    split = make_split(*path_graph(50), seed=0, protocol="paper")  # floor(0.2 x 50) = 10 each
    assert split.info["positives"] == {"train1": 30, "val": 10, "test": 10}


# ---- 8. duplicate keys in a YAML recipe -------------------------------------------------------------------

def test_a_duplicate_recipe_key_is_refused_with_its_lines(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("method: rigl\nsparsity: 0.9\nschedule:\n  update_interval: 10\n  drop_fraction: 0.3\n"
                    "  update_interval: 20\n")
    with pytest.raises(RecipeError, match=rf"recipe key 'schedule.update_interval': is given twice in one mapping "
                                          rf"\({path}, lines 4 and 6\)"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"'layer_sparsity.fc\*': is given twice .*line 1\)"):
        load_recipe("{method: rigl, sparsity: 0.9, layer_sparsity: {fc*: 0.5, fc*: 0.8}}")
    path.write_text("method: rigl\nsparsity: 0.9\nmethod: set\n")
    error = cli_error(gsparse_main, ["check-recipe", str(path)], capsys, "gsparse")
    assert "recipe key 'method': is given twice" in error and "lines 1 and 3" in error


# ---- 9. extreme distribution values ----------------------------------------------------------------------

SMALL = {"a": [4, 8], "b": [8, 16]}  # ERK scores 12/32 = 0.375 and 24/128 = 0.1875


@pytest.mark.parametrize("power", [1e4, 1e300])
def test_a_huge_erk_power_gives_the_budget_to_the_largest_score(power):
    # s=0.5: 80 active of 160. The power sends everything to a: eps = 80/32 > 1, so a is dense;
    # then b: rhs = 64 - 16 = 48 over 128 -> 0.375
    assert layer_densities(SMALL, 0.5, "erk", erk_power_scale=power) == {"a": 1.0, "b": 0.375}


def test_a_tiny_erk_power_is_uniform():
    # every score ** 1e-300 = 1: 80 active of 160 weights, density 0.5 everywhere
    densities = layer_densities(SMALL, 0.5, "erk", erk_power_scale=1e-300)
    assert densities == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-12)


def test_a_one_weight_layer_under_a_huge_power():
    # one [1]: score 1 (the largest) -> dense; b keeps 128 - floor(115.2) = 13 of its weights
    densities = layer_densities({"one": [1], "b": [8, 16]}, 0.9, "erk", erk_power_scale=1e300)
    assert densities == pytest.approx({"one": 1.0, "b": 13 / 128}, abs=1e-15)


def test_erk_that_empties_a_layer_warns_naming_it():
    # s=0.9: active 4 + 13 = 17; a's score wins all of it: eps = 17/32 <= 1, a = 17/32, b = 0
    with pytest.warns(RecipeWarning, match=r"leaves 1 layer\(s\) with 0 active weights \(always zero\): b$"):
        densities = layer_densities(SMALL, 0.9, "erk", erk_power_scale=1e4)
    assert densities == {"a": 17 / 32, "b": 0.0}


def test_a_sparsity_that_empties_every_layer_is_refused():
    # uniform 0.999: a keeps round(0.032) = 0, b round(0.128) = 0
    with pytest.raises(RecipeError, match=r"recipe key 'sparsity': sparsity 0.999, distribution uniform leaves no "
                                          r"active weight in any of the 2 sparse layer\(s\) \(160 weights\)"):
        layer_densities(SMALL, 0.999, "uniform")
    model = torch.nn.Linear(8, 4)
    with pytest.raises(RecipeError, match="'sparsity'"):
        gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), {"method": "rigl", "sparsity": 0.99})


def test_a_near_one_sparsity_keeps_one_weight_per_layer():
    # ER/ERK at 0.999999: each layer keeps numel - floor(0.999999 x numel) = 1 weight
    shapes = {"a": [64, 32], "b": [128, 64], "c": [10, 128]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        densities = layer_densities(shapes, 0.999999, "erk")
    assert gsparse.active_counts(shapes, densities) == {"a": 1, "b": 1, "c": 1}


# ---- 10. ADMM's rho ---------------------------------------------------------------------------------------

def admm_recipe(**args):
    return {"method": "admm", "sparsity": 0.5,
            "method_args": {"pretrain_steps": 0, "admm_steps": 100, "admm_interval": 10, **args}}


def test_an_admm_rho_beyond_the_bound_is_refused():
    with pytest.raises(RecipeError, match=r"'method_args.rho': expected a number in \(0.0, 1000000.0\], got 1e\+300"):
        load_recipe(admm_recipe(rho=1e300))
    # 10 rounds: rho 0.01 x growth^9 <= 1e6 needs growth <= (1e8)^(1/9) = 10^(8/9) = 7.74264
    assert math.isclose(10 ** (8 / 9), 7.742636826811269)
    model = torch.nn.Linear(8, 8)
    with pytest.raises(RecipeError, match=r"'method_args.rho_growth': 10.0 grows rho 0.01 over 10 ADMM rounds .* "
                                          r"rho_growth <= 7.74264"):
        gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), admm_recipe(rho=0.01, rho_growth=10.0))
    gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), admm_recipe(rho=0.01, rho_growth=7.7))
