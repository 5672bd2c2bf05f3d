"""Resuming the training runner: a checkpoint of another run is refused (ResumeMismatch naming each
difference), a truncated or corrupted one is never loaded (manifest checksums; fallback to the
previous epoch), and the logs of a resumed run have exactly one row per epoch and per mask update."""
import json
from pathlib import Path

import pytest
import torch

from gsparse import checkpoint
from gsparse.checkpoint import CheckpointError
from gsparse.training import RunConfig, TaskBase, train
from gsparse.training.runner import ResumeMismatch, fingerprint_differences
from tests.conftest import killed_after_epoch

pytestmark = pytest.mark.filterwarnings("ignore::gsparse.options.RecipeWarning")  # short runs, few updates

RIGL = {"method": "rigl", "sparsity": 0.75, "distribution": "uniform",
        "schedule": {"update_interval": 2, "drop_fraction": 0.3, "last_update_step": 14}}


class ShuffledTask(TaskBase):
    """4 steps of 16 examples per epoch, shuffled per epoch (a resume from the wrong epoch shows)."""

    name, batch_size, eval_splits, selection_metric, selection_mode = "shuffled", 16, ("val",), "val_loss", "min"

    def __init__(self, dataset="a"):
        self.dataset = dataset
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(96, 12, generator=generator)
        self.y = self.x[:, :4].argmax(1)

    def fingerprint(self):
        return {"name": self.name, "batch_size": self.batch_size, "dataset": self.dataset}

    def build_model(self):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def steps_per_epoch(self):
        return 4

    def train_batches(self, epoch, context):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for step in range(4):
            rows = order[step * 16:(step + 1) * 16]
            yield self.x[rows], self.y[rows]

    def loss(self, model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    def evaluate(self, model, split):
        with torch.no_grad():
            return {"loss": torch.nn.functional.cross_entropy(model(self.x[64:]), self.y[64:]).item()}


def run(run_dir, epochs=4, recipe=RIGL, task=None, lines=None, **options):
    return train(task or ShuffledTask(), RunConfig(epochs=epochs, recipe=recipe, run_dir=str(run_dir), progress=False,
                                                   threads=1, log=(lines.append if lines is not None else
                                                                   lambda line: None), **options))


def rows(run_dir, name="log.jsonl"):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (Path(run_dir) / name).read_text().splitlines()]


def csv_epochs(run_dir):
    lines = (Path(run_dir) / "log.csv").read_text().splitlines()
    column = lines[0].split(",").index("epoch")
    return [int(line.split(",")[column]) for line in lines[1:]]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 4-epoch run: the reference every resumed run must equal."""
    run_dir = tmp_path_factory.mktemp("straight")
    metrics = run(run_dir)
    return run_dir, metrics


def assert_same_as_straight(run_dir, straight):
    reference, _ = straight
    assert rows(run_dir) == rows(reference)
    assert [row["epoch"] for row in rows(run_dir)] == [1, 2, 3, 4] and csv_epochs(run_dir) == [1, 2, 3, 4]
    updates = rows(run_dir, "updates.jsonl")
    assert updates == rows(reference, "updates.jsonl")
    assert [row["step"] for row in updates] == [2, 4, 6, 8, 10, 12, 14]  # one row per update, none twice
    final, expected = (torch.load(Path(d) / "checkpoint.pt", weights_only=False)["model"] for d in (run_dir, reference))
    assert all(torch.equal(final[key], expected[key]) for key in expected)


# ---- checkpoints of another run --------------------------------------------------------------------


@pytest.fixture
def two_epochs(tmp_path):
    run(tmp_path, epochs=2)
    return tmp_path


@pytest.mark.parametrize("change, expected", [
    ({"recipe": {**RIGL, "sparsity": 0.5}}, ["sparsity: 0.75 in the checkpoint, 0.5 in this run"]),
    ({"recipe": {**RIGL, "method": "set"}}, ["method: 'rigl' in the checkpoint, 'set' in this run"]),
    ({"recipe": {**RIGL, "params": {"include": ["0.weight"]}}},
     ["layers.2.weight: [4, 32] in the checkpoint, absent in this run"]),
    ({"recipe": None}, ["method: 'rigl' in the checkpoint, 'dense' in this run",
                        "layers.0.weight: [32, 12] in the checkpoint, absent in this run"]),
])
def test_another_method_sparsity_or_layer_set_is_refused_even_with_resume_anyway(two_epochs, change, expected):
    before = (two_epochs / "log.jsonl").read_text(), checkpoint.file_sha256(two_epochs / "checkpoint.pt")
    for anyway in (False, True):
        with pytest.raises(ResumeMismatch) as error:
            run(two_epochs, resume=True, resume_anyway=anyway, **change)
        message = str(error.value)
        assert f"cannot resume from {two_epochs / 'checkpoint.pt'} (epoch 2): it is of another run" in message
        assert all(line in message for line in expected), message
    # refused before anything of the run changed
    assert ((two_epochs / "log.jsonl").read_text(), checkpoint.file_sha256(two_epochs / "checkpoint.pt")) == before


def test_another_schedule_is_refused_naming_the_recipe_key(two_epochs):
    other = {**RIGL, "schedule": {**RIGL["schedule"], "update_interval": 3}}
    with pytest.raises(ResumeMismatch, match=r"recipe\.schedule\.update_interval: 2 in the checkpoint, 3 in this run"):
        run(two_epochs, recipe=other, resume=True)


def test_another_dataset_is_refused_unless_resume_anyway(two_epochs):
    with pytest.raises(ResumeMismatch) as error:
        run(two_epochs, task=ShuffledTask(dataset="b"), resume=True)
    assert "task.dataset: 'a' in the checkpoint, 'b' in this run" in str(error.value)
    assert "resume_anyway=True (--resume_anyway) resumes despite it" in str(error.value)
    lines = []
    metrics = run(two_epochs, task=ShuffledTask(dataset="b"), resume=True, resume_anyway=True, lines=lines)
    assert metrics["resumed_from"] == 2 and metrics["resume_overridden"] == ["task.dataset"]
    assert any(line.startswith("WARNING: resuming from") and "task.dataset" in line for line in lines)
    assert [row["epoch"] for row in rows(two_epochs)] == [1, 2, 3, 4]


def test_fingerprint_differences_per_leaf():
    saved = {"method": "rigl", "layers": {"a": [2, 3]}, "task": {"split": {"seed": 0, "protocol": "paper"}}}
    current = {"method": "rigl", "layers": {"a": [2, 3], "b": [4]}, "task": {"split": {"seed": 1, "protocol": "paper"}}}
    assert fingerprint_differences(saved, current) == [("layers.b", "absent", "[4]"), ("task.split.seed", "0", "1")]


# ---- interrupted runs, corrupted checkpoints and the logs ----------------------------------------


def test_killed_run_resumes_to_the_uninterrupted_logs(tmp_path, straight):
    with killed_after_epoch(2):
        run(tmp_path)
    metrics = run(tmp_path, resume=True)
    assert metrics["resumed_from"] == 2 and metrics["optimizer_state_restored"] is True
    assert_same_as_straight(tmp_path, straight)
    assert straight[1]["resumed_from"] is None and straight[1]["optimizer_state_restored"] is None


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_epoch(tmp_path, straight):
    with killed_after_epoch(3):
        run(tmp_path)
    assert [row["epoch"] for row in rows(tmp_path)] == [1, 2, 3]
    newest = tmp_path / "checkpoint.pt"
    size = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[:size // 2])  # truncated, as by a full disk
    lines = []
    metrics = run(tmp_path, resume=True, lines=lines)
    assert f"checkpoint {newest} is not loaded: {size // 2} bytes, the manifest records" in lines[0]
    assert "(truncated or rewritten)" in lines[0]
    assert "resuming after epoch 2" in lines[1]
    assert metrics["resumed_from"] == 2
    assert_same_as_straight(tmp_path, straight)  # epoch 3's rows were dropped and trained again


def test_flipped_byte_is_a_checksum_mismatch_and_the_manifest_keeps_two_epochs(tmp_path):
    run(tmp_path, epochs=3)
    manifest = json.loads((tmp_path / "checkpoint.manifest.json").read_text())["checkpoints"]
    assert [(entry["epoch"], entry["file"]) for entry in manifest] == [(2, "checkpoint.previous.pt"),
                                                                       (3, "checkpoint.pt")]
    assert [entry["sha256"] for entry in manifest] == [checkpoint.file_sha256(tmp_path / entry["file"])
                                                       for entry in manifest]
    data = bytearray((tmp_path / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "checkpoint.pt").write_bytes(bytes(data))
    lines = []
    assert run(tmp_path, epochs=4, resume=True, lines=lines)["resumed_from"] == 2
    assert lines[0] == f"checkpoint {tmp_path / 'checkpoint.pt'} is not loaded: sha256 checksum mismatch (corrupted)"


def test_no_intact_checkpoint_is_one_error_naming_the_run_dir(tmp_path):
    run(tmp_path, epochs=2)
    for name in ("checkpoint.pt", "checkpoint.previous.pt"):
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:100])
    with pytest.raises(CheckpointError) as error:
        run(tmp_path, resume=True)
    message = str(error.value)
    assert message.startswith(f"no intact checkpoint to resume from in {tmp_path}: checkpoint.pt: 100 bytes")
    assert "; checkpoint.previous.pt: 100 bytes" in message and "start over without resume" in message
    assert [row["epoch"] for row in rows(tmp_path)] == [1, 2]  # nothing changed


def test_a_save_killed_between_its_renames_leaves_an_intact_checkpoint(tmp_path, monkeypatch):
    record = {"epoch": 1}
    first = checkpoint.save_plain(tmp_path, {"epoch": 1}, record, keep=None)
    second = checkpoint.save_plain(tmp_path, {"epoch": 2}, {"epoch": 2}, keep=first)
    replace = checkpoint.os.replace

    def die_on_the_new_file(source, target):
        if Path(source).name == "checkpoint.pt.tmp":
            raise KeyboardInterrupt("killed")
        replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", die_on_the_new_file)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_plain(tmp_path, {"epoch": 3}, {"epoch": 3}, keep=second)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint.pt").exists()  # epoch 2 was moved aside, epoch 3 never landed
    path, entry = checkpoint.find_plain(tmp_path, print)
    assert path.name == "checkpoint.previous.pt" and entry["epoch"] == 2
    assert torch.load(path, weights_only=False) == {"epoch": 2}


def test_a_checkpoint_without_manifest_loads_unverified(tmp_path):
    run(tmp_path, epochs=2)
    (tmp_path / "checkpoint.manifest.json").unlink()
    lines = []
    assert run(tmp_path, epochs=3, resume=True, lines=lines)["resumed_from"] == 2
    assert lines[0] == (f"{tmp_path / 'checkpoint.pt'}: no checkpoint.manifest.json (written by an older gsparse): "
                        "loaded without verification")


def test_a_fresh_run_removes_an_earlier_runs_checkpoints(tmp_path):
    run(tmp_path, epochs=3)
    lines = []
    run(tmp_path, epochs=1, lines=lines)
    assert "checkpoint.previous.pt" in lines[0] and lines[0].startswith("resume is off: removed")
    assert not (tmp_path / "checkpoint.previous.pt").exists()
    manifest = json.loads((tmp_path / "checkpoint.manifest.json").read_text())["checkpoints"]
    assert [entry["epoch"] for entry in manifest] == [1] and [row["epoch"] for row in rows(tmp_path)] == [1]
    assert [row["step"] for row in rows(tmp_path, "updates.jsonl")] == [2, 4]


def test_the_task_command_lines_offer_resume_anyway():
    from gsparse.tasks.linkpred.cli import build_parser as linkpred_parser
    from gsparse.tasks.vision.cli import build_parser as vision_parser

    for parser in (linkpred_parser(), vision_parser()):
        assert parser.parse_args(["--resume", "--resume_anyway"]).resume_anyway is True
        assert parser.parse_args([]).resume_anyway is False


def test_the_tasks_fingerprint_their_data():
    from types import SimpleNamespace

    from gsparse.tasks.linkpred.task import LinkPredTask
    from gsparse.tasks.linkpred.train import LinkPredConfig
    from gsparse.tasks.vision.task import VisionTask
    from gsparse.tasks.vision.train import VisionConfig

    assert VisionTask(VisionConfig(seed=3)).fingerprint() == {
        "name": "vision", "batch_size": 128, "dataset": "digits", "model": "small_resnet", "num_classes": 10, "seed": 3}
    task = LinkPredTask(LinkPredConfig(dataset="bitcoin-otc", batch_size=256))
    task.edges, task.split = [0] * 7, SimpleNamespace(num_nodes=5, info={"protocol": "paper", "seed": 1})
    assert task.fingerprint() == {"name": "linkpred", "batch_size": 256, "dataset": "bitcoin-otc", "num_nodes": 5,
                                  "num_edges": 7, "split": {"protocol": "paper", "seed": 1}}
