"""The generic training runner (gsparse.training): a toy task written here, gradient accumulation,
bitwise resume, divergence, FLOPs counting, and the runner under DeepSpeed (2 ranks, ZeRO-2 and -3)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gsparse.training import (RunConfig, TaskBase, TrainingDiverged, forward_flops, record_uses, train,
                              training_flops)
from tests.conftest import killed_after_epoch

ROOT = Path(__file__).resolve().parent.parent


class ToyTask(TaskBase):
    """Four-class toy data; 8 steps of 32 examples per epoch, split over ranks and micro-batches."""

    name, selection_metric, selection_mode, eval_splits = "toy", "val_accuracy", "max", ("val", "test")

    def __init__(self, seed=0, batch_size=32, steps=8, dropout=0.0, nan_after=None):
        self.seed, self.batch_size, self.steps, self.dropout, self.nan_after, self.calls = \
            seed, batch_size, steps, dropout, nan_after, 0
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(512, 12, generator=generator)
        self.y = self.x[:, :4].argmax(1)

    def build_model(self):
        torch.manual_seed(self.seed)
        return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Dropout(self.dropout),
                                   torch.nn.Linear(32, 4))

    def build_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def steps_per_epoch(self):
        return self.steps

    def train_batches(self, epoch, context):
        order = torch.randperm(256, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        micro = self.batch_size // context.micro_batches
        for step in range(self.steps):
            rows = order[step * self.batch_size:(step + 1) * self.batch_size]
            for piece in range(context.accumulation_steps):
                start = (context.rank * context.accumulation_steps + piece) * micro
                yield self.x[rows[start:start + micro]], self.y[rows[start:start + micro]]

    def loss(self, model, batch):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(model(batch[0].to(self.context.dtype)).float(), batch[1])
        return loss * float("nan") if self.nan_after is not None and self.calls > self.nan_after else loss

    def evaluate(self, model, split):
        rows = slice(256, 384) if split == "val" else slice(384, 512)
        model.eval()
        with torch.no_grad():
            predicted = model(self.x[rows].to(self.context.dtype)).argmax(1)
        model.train()
        return {"accuracy": (predicted == self.y[rows]).float().mean().item()}


RIGL = {"method": "rigl", "sparsity": 0.75, "distribution": "uniform", "params": {"include": ["0.weight", "3.weight"]},
        "schedule": {"update_interval": 4, "drop_fraction": 0.3, "last_update_step": 20}}


def _rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def _weights(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)["model"]


def test_toy_task_trains_and_reports_test_metrics_at_the_best_validation_epoch(tmp_path):
    metrics = train(ToyTask(), RunConfig(epochs=4, run_dir=str(tmp_path), progress=False, log=lambda line: None))
    rows = _rows(tmp_path)
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    assert metrics["status"] == "finished" and metrics["best_epoch"] == best["epoch"]
    assert metrics["test_accuracy"] == best["test_accuracy"] and metrics["final_test_accuracy"] == rows[-1]["test_accuracy"]
    assert metrics["test_accuracy"] > 0.6  # chance is 0.25
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    # dense FLOPs by hand: 6 x 32 examples x (12*32 + 32*4) weights x 32 steps
    assert metrics["training_flops"] == 6 * 32 * (12 * 32 + 32 * 4) * 32


def test_two_micro_batches_equal_one_batch_of_twice_the_size(tmp_path):
    quiet = dict(progress=False, log=lambda line: None, count_flops=False)
    train(ToyTask(batch_size=32), RunConfig(epochs=2, run_dir=str(tmp_path / "one"), **quiet))
    metrics = train(ToyTask(batch_size=32), RunConfig(epochs=2, run_dir=str(tmp_path / "two"), accumulation_steps=2,
                                                      **quiet))
    assert metrics["accumulation_steps"] == 2
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in _rows(tmp_path / "two")] == pytest.approx([r["loss"] for r in _rows(tmp_path / "one")],
                                                                         rel=1e-5)


def test_resume_after_an_interruption_is_bitwise_equal(tmp_path):
    """Sparse (RigL), with dropout: the global RNG state travels with the checkpoint."""
    config = dict(epochs=4, recipe=RIGL, progress=False, log=lambda line: None)
    train(ToyTask(dropout=0.2), RunConfig(run_dir=str(tmp_path / "straight"), **config))
    with killed_after_epoch(2):
        train(ToyTask(dropout=0.2), RunConfig(run_dir=str(tmp_path / "resumed"), **config))
    torch.manual_seed(12345)  # whatever the global RNG holds now must not matter
    resumed = train(ToyTask(dropout=0.2), RunConfig(run_dir=str(tmp_path / "resumed"), resume=True, **config))
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "resumed")
    for name, value in _weights(tmp_path / "straight").items():
        assert torch.equal(value, _weights(tmp_path / "resumed")[name]), name
    assert resumed["training_flops"] == straight["training_flops"] and resumed["num_updates"] == 5
    updates = (tmp_path / "resumed" / "updates.jsonl").read_text()
    assert updates == (tmp_path / "straight" / "updates.jsonl").read_text()


def test_nan_loss_stops_the_run_without_results(tmp_path):
    task = ToyTask(nan_after=10)  # steps 11.. are NaN: the 3rd in a row is step 13 (epoch 2, step 5)
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row.*epoch 2"):
        train(task, RunConfig(epochs=3, run_dir=str(tmp_path), max_nonfinite_steps=3, progress=False,
                              log=lambda line: None))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "not finite" in metrics["error"]
    assert not any(key.startswith(("test_", "val_", "final_")) for key in metrics)
    assert [r["epoch"] for r in _rows(tmp_path)] == [1]  # the diverged epoch is not logged
    # the skipped steps left the weights finite (plain PyTorch drops a non-finite step's gradients)
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path).values())


def test_an_epoch_without_a_finite_loss_stops_the_run(tmp_path):
    with pytest.raises(TrainingDiverged, match="epoch 1 ended without a finite loss"):
        train(ToyTask(nan_after=0), RunConfig(epochs=2, run_dir=str(tmp_path), progress=False, log=lambda line: None))
    assert "test_accuracy" not in json.loads((tmp_path / "metrics.json").read_text())


def test_cli_exits_non_zero_when_training_diverges(tmp_path, capsys):
    from gsparse.cli import main

    code = main(["linkpred", "--features", "walks", "--walks_per_node", "1", "--walk_length", "2", "--optimizer",
                 "sgd", "--lr", "1e30", "--epochs", "2", "--max_nonfinite_steps", "3", "--run_dir", str(tmp_path),
                 "--no-progress"])
    assert code != 0
    assert "training diverged" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "test_accuracy" not in metrics and "test_auc" not in metrics


def test_flops_of_a_conv2d_and_linear_model_with_masks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 10))
    uses = record_uses(model, lambda: model(torch.randn(5, 3, 8, 8)))
    assert uses["0.weight"].kind == "Conv2d" and uses["0.weight"].uses == 5 * 4 * 4  # batch x output positions
    assert uses["3.weight"].kind == "Linear" and uses["3.weight"].uses == 5
    conv_mask = torch.zeros(8, 3, 3, 3, dtype=torch.bool)
    conv_mask[:, 0] = True  # 8 * 9 = 72 active of 216
    linear_mask = torch.rand(10, 128) < 0.25
    active_linear = int(linear_mask.sum())
    # a multiply-add (2 FLOPs) per active weight and use: conv 72 weights at 16 positions of 5 images
    expected = 2 * (5 * 16 * 72) + 2 * (5 * active_linear)
    assert forward_flops(uses, {"0.weight": conv_mask, "3.weight": linear_mask}) == expected
    assert forward_flops(uses) == 2 * (5 * 16 * 216) + 2 * (5 * 1280)
    # training: 10 steps of 2 such calls, both layers sparse at a fixed count, 2 dense-gradient updates
    flops = training_flops(uses, steps=10, calls_per_step=2,
                           layer_active_steps={"0.weight": 10 * 72, "3.weight": 10 * active_linear},
                           sparse_steps=10, dense_gradient_updates=2)
    assert flops["training"] == 3 * expected * 2 * 10 + 2 * (5 * 16 * 216 + 5 * 1280) * 2 * 2
    # budgets that moved between layers (a global budget): each layer's own sum counts
    moved = training_flops(uses, steps=10, layer_active_steps={"0.weight": 5 * 216 + 5 * 72, "3.weight": 10 * 100},
                           sparse_steps=10)
    assert moved["training"] == 6 * (5 * 16 * (5 * 216 + 5 * 72) + 5 * 1000)
    # the weight gradient dense at every step (forward-only masks, e.g. AutoSparse): 4 per active use + 2 per weight
    annealed = training_flops(uses, steps=2, layer_active_steps={"0.weight": 2 * 72}, sparse_steps=2,
                              dense_weight_gradient=True)
    conv_uses, linear_uses = 5 * 16, 5
    assert annealed["training"] == (4 * conv_uses * 72 + 2 * conv_uses * 216 + 6 * linear_uses * 1280) * 2
    # a dense model: 6 FLOPs per weight use and step
    assert training_flops(uses, steps=3)["training"] == 3 * 3 * forward_flops(uses)


def test_runner_under_deepspeed_zero2_and_zero3_matches_one_process(tmp_path):
    """One torchrun launch, 2 ranks (gloo): the toy task with RigL and 2 micro-batches per rank at
    ZeRO-2 and ZeRO-3 ends where the single-process run (4 micro-batches) does, to float tolerance."""
    quiet = dict(progress=False, log=lambda line: None)
    single = train(ToyTask(batch_size=32), RunConfig(epochs=2, recipe=RIGL, accumulation_steps=4,
                                                     run_dir=str(tmp_path / "single"), **quiet))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "runner_worker.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in (2, 3):
        metrics = json.loads((tmp_path / f"zero{stage}" / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["accumulation_steps"] == 2 and metrics["method"] == "rigl"
        assert metrics["num_updates"] == single["num_updates"] == 4
        assert metrics["density"] == pytest.approx(single["density"])
        rows, expected = _rows(tmp_path / f"zero{stage}"), _rows(tmp_path / "single")
        assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in expected], rel=1e-4)
        assert metrics["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=1 / 128 + 1e-9)
        assert metrics["training_flops"] == pytest.approx(single["training_flops"])
        assert (tmp_path / f"zero{stage}" / "checkpoints" / "latest").is_file()
    bf16 = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert bf16["status"] == "finished" and bf16["num_updates"] == 4
    assert bf16["density"] == pytest.approx(single["density"])  # exact counts in bf16 too
    assert bf16["final_loss"] == pytest.approx(single["final_loss"], rel=0.05)  # bf16 rounding, same training
    monitor = {path.name: path.read_text() for path in (tmp_path / "monitor").rglob("*.csv")}
    assert any("val_accuracy" in name for name in monitor) and any("density" in name for name in monitor)
    assert all(len(text.strip().splitlines()) >= 2 for text in monitor.values())  # header + epochs


def test_the_comparison_harness_runs_any_task(tmp_path):
    from gsparse.training.compare import GridSettings, TaskStudy, run_comparison

    study = TaskStudy("toy", lambda seed: ToyTask(seed=seed), sparse_params=["0.weight", "3.weight"],
                      secondary_metric="val_accuracy")
    settings = GridSettings(methods=["dense", "rigl", "dst_ee"], sparsities=[0.5, 0.75], seeds=[0], dst_epochs=2,
                            dense_epochs=2, update_interval=4, explore_c=[], out=str(tmp_path))
    lines = []
    results = run_comparison(settings, study, quiet=True, log=lines.append)
    assert len(lines) == 5 and not results["missing"]
    records = {(r["method"], r["sparsity"]): r for r in results["records"]}
    assert set(records) == {("dense", 0.0), ("rigl", 0.5), ("rigl", 0.75), ("dst_ee", 0.5), ("dst_ee", 0.75)}
    cell = json.loads((tmp_path / "toy" / "rigl-s0.75-seed0" / "metrics.json").read_text())
    assert records[("rigl", 0.75)]["accuracy_mean"] == cell["test_accuracy"]
    assert cell["density"] == pytest.approx(0.25) and cell["config"]["recipe"]["params"]["include"] == ["0.weight",
                                                                                                        "3.weight"]
    assert records[("dense", 0.0)]["flops_relative"] == 1.0
    assert records[("rigl", 0.75)]["flops_relative"] < records[("rigl", 0.5)]["flops_relative"] < 1.0
    assert (tmp_path / "toy" / "results.md").read_text().startswith("# toy: dense vs prune-from-dense")
