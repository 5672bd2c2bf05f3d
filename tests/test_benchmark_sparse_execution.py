"""benchmarks/sparse_execution.py --quick: the JSON's shape and the dense/sparse mask agreement it records
(nothing about speed)."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sparse_execution.py"
MODES = {"dense", "sparse", "auto"}


def test_quick_run_records_layers_choices_memory_and_equal_masks():
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=SCRIPT.parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["benchmark"] == "sparse_execution" and report["quick"] is True
    assert {"cpu", "cores", "torch", "threads"} <= set(report["machine"])
    assert report["machine"]["threads"] == 1

    (linkpred,) = report["linkpred"]["results"]
    assert (linkpred["hidden"], linkpred["predictor_hidden"], linkpred["sparsity"]) == (64, 512, 0.95)
    # fc1 reads [h_src, h_dst, 7 pair features] = 2 * 64 + 7 = 135 inputs; uniform 95%: round(0.05 * 69120)
    # = 3456 of 69120 active in fc1 (0.05), round(0.05 * 512) = 26 of 512 in fc2 (0.0508)
    assert linkpred["sparse_layers"] == {
        "predictor.fc1.weight": {"shape": [512, 135], "runs": "sparse", "why": "execution: sparse", "density": 0.05},
        "predictor.fc2.weight": {"shape": [1, 512], "runs": "sparse", "why": "execution: sparse", "density": 0.0508}}
    assert set(linkpred["peak_training_memory"]) == {"dense", "sparse"}
    assert all(entry["growth_mb"] > 0 for entry in linkpred["peak_training_memory"].values())

    (vision,) = report["vision"]["results"]
    layers = vision["sparse_layers"]
    assert layers["fc.weight"]["shape"] == [10, 64] and layers["fc.weight"]["runs"] == "sparse"
    convolutions = [name for name in layers if name != "fc.weight"]
    assert convolutions and all(layers[name]["runs"] == "dense" and "Conv2d" in layers[name]["why"]
                                for name in convolutions)

    for row, linear_layers in ((linkpred, ["predictor.fc1.weight", "predictor.fc2.weight"]), (vision, ["fc.weight"])):
        assert set(row["speed"]) == MODES
        assert all(row["speed"][mode]["median_step_ms"] > 0 for mode in MODES)
        assert {"speedup", "throughput_ratio"} <= set(row["speed"]["sparse"]) and "speedup" not in row["speed"]["dense"]
        assert set(row["auto_chose"]) == set(row["sparse_layers"])
        for name in linear_layers:  # timed once after the first step, then decided
            choice = row["auto_chose"][name]
            assert choice["mode"] in ("sparse", "dense") and choice["dense_ms"] > 0 and choice["sparse_ms"] > 0
        # one mask update (step 4 of 6); sparse and auto execution end with the dense run's masks
        same = row["same_masks"]
        assert same["mask_updates"] == 1
        assert same["masks_equal"] is True
        assert same["mask_entries_differing"] == {"sparse": 0, "auto": 0}
        assert same["first_difference"] == {"sparse": None, "auto": None}
        assert all(0 <= difference < 1e-5 for difference in same["max_weight_difference_after_step_1"].values())
