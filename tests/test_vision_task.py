"""Image classification on the generic runner: the bundled digits smoke run, resume, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gsparse.tasks.vision import VisionConfig, train_image_classifier
from tests.conftest import killed_after_epoch

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path, **overrides) -> VisionConfig:
    values = {"dataset": "digits", "model": "small_resnet", "epochs": 6, "recipe": str(ROOT / "recipes/cnn_dst_ee.yaml"),
              "run_dir": str(tmp_path / "run"), "progress": False}
    return VisionConfig(**{**values, **overrides})


def test_digits_at_90_percent_learns_and_stays_exactly_sparse(tmp_path):
    metrics = train_image_classifier(config(tmp_path))
    assert metrics["test_accuracy"] >= 0.9  # 10 classes: chance is 0.1
    assert metrics["density"] == pytest.approx(0.1, abs=0.002) and metrics["num_updates"] >= 5
    assert metrics["training_flops"] < metrics["flops"]["dense_training"]  # conv FLOPs follow the masks
    # inference FLOPs of the final masks (Table 2 of the DST-EE paper): the layers' uses weighted by density
    layers, density = metrics["flops"]["layers"], metrics["layer_density"]
    expected = sum(layer["uses"] * layer["numel"] * density.get(name, 1.0) for name, layer in layers.items())
    assert metrics["inference_flops"] == pytest.approx(2 * expected, rel=1e-3)
    assert 0 < metrics["inference_flops_relative"] < 0.3
    assert metrics["training_flops_relative"] == pytest.approx(metrics["training_flops"] / metrics["flops"]["dense_training"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"density/conv1.weight", "density/fc.weight"} <= set(rows[-1])  # per-layer density every epoch


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    whole = train_image_classifier(config(tmp_path, epochs=3, run_dir=str(tmp_path / "whole")))
    with killed_after_epoch(2):
        train_image_classifier(config(tmp_path, epochs=3, run_dir=str(tmp_path / "part")))
    resumed = train_image_classifier(config(tmp_path, epochs=3, run_dir=str(tmp_path / "part"), resume=True))
    for key in ("test_accuracy", "final_loss", "density", "exploration_degree", "training_flops"):
        assert resumed[key] == whole[key], key
    logs = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (tmp_path / name / "log.jsonl").read_text().splitlines()] for name in ("whole", "part")]
    assert logs[0] == logs[1]


@pytest.mark.parametrize("arguments, words", [
    (["--dataset", "cifar10"], "needs --data_dir"),
    (["--dataset", "cifar10", "--data_dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--model", "resnet18"], "model: 'resnet18' is not one of"),
])
def test_bad_input_is_one_clear_error(arguments, words, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts/train_cnn.py"), "--run_dir", str(tmp_path),
                             "--no-progress", *arguments], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_the_comparison_harness_runs_the_vision_task(tmp_path):
    from gsparse.tasks.vision.compare import main

    main(["--out", str(tmp_path), "--methods", "dense", "rigl", "--sparsities", "0.9", "--seeds", "0",
          "--epochs", "3"])
    results = json.loads((tmp_path / "digits" / "results.json").read_text())
    records = {record["method"]: record for record in results["records"]}
    assert set(records) == {"dense", "rigl"} and not results["missing"]
    assert records["dense"]["flops_relative"] == 1.0 and records["rigl"]["flops_relative"] < 0.2
    table = (tmp_path / "digits" / "results.md").read_text()
    assert table.count("| rigl |") == 3  # accuracy, training FLOPs, inference FLOPs
    assert records["dense"]["inference_flops_relative"] == 1.0 and records["rigl"]["inference_flops_relative"] < 0.2


def test_batchnorm_keeps_float32_statistics_in_low_precision():
    import torch

    from gsparse.tasks.vision.models import BatchNorm2d

    torch.manual_seed(0)
    reference, low = BatchNorm2d(4), BatchNorm2d(4)
    low.load_state_dict(reference.state_dict())
    low = low.to(torch.bfloat16)
    assert low.weight.dtype == torch.bfloat16 and low.running_mean.dtype == torch.float32
    inputs = torch.randn(8, 4, 5, 5)
    expected, output = reference(inputs), low(inputs.to(torch.bfloat16))
    assert output.dtype == torch.bfloat16 and torch.allclose(output.float(), expected, atol=0.05)
    assert torch.allclose(low.running_mean, reference.running_mean, atol=1e-3)  # the bf16 input, float32 statistics


def test_deepspeed_launcher_bf16_zero2_run(tmp_path):
    """The `deepspeed` launcher, 2 ranks, ZeRO-2 in bf16: trains, stays exactly sparse, and the BN
    running statistics stay float32."""
    import torch

    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": 64, "steps_per_print": 10**6,
                                  "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": 2},
                                  "bf16": {"enabled": True}}))
    run_dir = tmp_path / "run"
    command = ["deepspeed", "--num_accelerators", "2", "--master_port", str(_free_port()),
               str(ROOT / "scripts/train_cnn.py"), "--deepspeed_config", str(config), "--recipe",
               str(ROOT / "recipes/cnn_dst_ee.yaml"), "--epochs", "4", "--run_dir", str(run_dir), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["density"] == pytest.approx(0.1, abs=0.002)
    assert metrics["test_accuracy"] > 0.8
    state = torch.load(next((run_dir / "checkpoints" / "epoch4").glob("*model_states.pt")), weights_only=False)
    module = state["module"]
    assert module["layer1.0.bn1.weight"].dtype == torch.bfloat16
    assert module["layer1.0.bn1.running_var"].dtype == torch.float32


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_image_folder_tree_trains_through_dataloader_workers(tmp_path):
    """The ImageNet path on a tiny generated ImageFolder tree: classes from the folders, images
    decoded and augmented by DataLoader workers, top-1 reported on val/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for label in ("ant", "bee", "cat"):
            folder = tmp_path / "tree" / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    metrics = train_image_classifier(VisionConfig(dataset="imagenet", data_dir=str(tmp_path / "tree"),
                                                  model="small_resnet", epochs=1, batch_size=8, workers=1,
                                                  recipe=None, run_dir=str(tmp_path / "run"), progress=False))
    assert metrics["num_classes"] == 3 and metrics["status"] == "finished"
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["total_steps"] == 3  # 24 images / batch 8
