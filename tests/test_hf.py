"""gsparse inside the Hugging Face Trainer and Accelerate (tests/hf_worker.py runs the 2-rank parts
in two launches): exact sparsity every step, the masks of gsparse's own runner on the same batches,
and bitwise resume from the framework's own checkpoints."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gsparse.options import RecipeError  # noqa: E402
from gsparse.tasks.tiny_text import WordTokenizer, encoded_dataset, sentiment_corpus, tiny_bert  # noqa: E402

WORKER = Path(__file__).resolve().parent / "hf_worker.py"
sys.path.insert(0, str(WORKER.parent))
import hf_worker  # noqa: E402

STEPS, RESUME_AT = hf_worker.STEPS, hf_worker.RESUME_AT


def _launch(which: str, out: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", str(WORKER), str(out), which]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = out / f"{which}.log"
    with log.open("w") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env, timeout=900).returncode
    assert code == 0, log.read_text()[-6000:]
    return json.loads((out / f"{which}.json").read_text())


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_trainer")
    return out, _launch("trainer", out)


@pytest.fixture(scope="module")
def accelerate_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_accelerate")
    return out, _launch("accelerate", out)


def shard_state(folder: Path) -> dict:
    """Full masks and counters from a checkpoint's gsparse shard files."""
    full = {}
    shards = sorted(folder.glob("rank*-of-*.pt"))
    assert shards, folder
    for path in shards:
        for name, entry in torch.load(path, weights_only=False)["layers"].items():
            numel = torch.Size(entry["shape"]).numel()
            target = full.setdefault(name, {key: torch.zeros(numel, dtype=entry[key].dtype)
                                            for key in ("mask", "counter")})
            for key in target:
                target[key][entry["start"]:entry["start"] + entry[key].numel()] = entry[key]
    return full


def checkpoint_weights(folder: Path, tag: str) -> dict:
    """The fp32 weights of a DeepSpeed checkpoint (ZeRO-1-3 partitions assembled; ZeRO-0's module)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if not list((folder / tag).glob("*optim_states.pt")):
        return torch.load(folder / tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag)


def assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        for key in ("mask", "counter"):
            assert torch.equal(first[name][key].reshape(-1), second[name][key].reshape(-1)), (name, key)


def assert_same_weights(first: dict, second: dict, atol: float = 0.0) -> None:
    assert set(first) == set(second)
    for name in first:
        torch.testing.assert_close(first[name].float(), second[name].float(), rtol=0.0, atol=atol, msg=name)


# ---- the Trainer, 2 ranks, DeepSpeed ZeRO-2 and ZeRO-3 -------------------------------------------

@pytest.mark.parametrize("stage", [2, 3])
def test_trainer_keeps_exact_sparsity_every_step_and_logs_it(trainer_runs, stage):
    _, results = trainer_runs
    full, resumed = results[f"z{stage}"]["full"], results[f"z{stage}"]["resumed"]
    assert full["checked_steps"] == STEPS and full["sparse_step"] == STEPS
    assert resumed["checked_steps"] == STEPS - RESUME_AT and resumed["sparse_step"] == STEPS
    logged = {row["step"]: row for row in full["logged"] if "loss" in row}
    assert sorted(logged) == [2, 4, 6, 8, 10, 12]
    # 12 layers at 80%: 205/1024 per 32x32 layer (round half up), 410/2048 per MLP layer
    assert logged[2]["sparsity/density"] == pytest.approx((8 * 205 + 4 * 410) / (8 * 1024 + 4 * 2048))
    assert [logged[s]["sparsity/num_updates"] for s in (2, 4, 6, 8, 10, 12)] == [0, 1, 2, 2, 3, 4]
    assert logged[12]["sparsity/exploration_degree"] > logged[2]["sparsity/exploration_degree"]


@pytest.mark.parametrize("stage", [2, 3])
def test_trainer_masks_and_weights_equal_gsparse_runner_on_the_same_batches(trainer_runs, stage):
    out, _ = trainer_runs
    trainer_checkpoint = out / f"trainer_z{stage}" / f"checkpoint-{STEPS}"
    runner_checkpoint = out / f"runner_z{stage}" / "checkpoints"
    trainer_state = shard_state(trainer_checkpoint / f"global_step{STEPS}" / "gsparse")
    assert_same_state(trainer_state, shard_state(runner_checkpoint / "epoch2" / "gsparse"))
    assert max(int(entry["counter"].max()) for entry in trainer_state.values()) == 5  # 4 updates happened
    assert_same_weights(checkpoint_weights(trainer_checkpoint, f"global_step{STEPS}"),
                        checkpoint_weights(runner_checkpoint, "epoch2"))


@pytest.mark.parametrize("stage", [2, 3])
def test_trainer_resumes_from_its_checkpoint_bitwise(trainer_runs, stage):
    out, _ = trainer_runs
    full = out / f"trainer_z{stage}" / f"checkpoint-{STEPS}"
    resumed = out / f"trainer_z{stage}_resumed" / f"checkpoint-{STEPS}"
    tag = f"global_step{STEPS}"
    assert_same_state(shard_state(full / tag / "gsparse"), shard_state(resumed / tag / "gsparse"))
    assert_same_weights(checkpoint_weights(full, tag), checkpoint_weights(resumed, tag))
    # the checkpoint resumed from holds the sparse state of step 8 inside DeepSpeed's folder
    assert (out / f"trainer_z{stage}" / f"checkpoint-{RESUME_AT}" / f"global_step{RESUME_AT}" / "gsparse"
            / "rank00001-of-00002.pt").is_file()


# ---- Accelerate, 2 ranks: plain DDP and the DeepSpeed plugin at ZeRO-2 / ZeRO-3 ----------------

@pytest.mark.parametrize("kind, stage", [("plain", 0), ("zero2", 2), ("zero3", 3)])
def test_accelerate_exact_sparsity_runner_equality_and_bitwise_resume(accelerate_runs, kind, stage):
    out, results = accelerate_runs
    assert results[kind]["full"] == {"checked_steps": STEPS, "sparse_step": STEPS}
    assert results[kind]["resumed"] == {"checked_steps": STEPS - RESUME_AT, "sparse_step": STEPS}
    full = torch.load(out / f"accelerate_{kind}" / "final.pt", weights_only=False)
    resumed = torch.load(out / f"accelerate_{kind}_resumed" / "final.pt", weights_only=False)
    assert_same_state(full["sparse"], resumed["sparse"])
    assert_same_weights(full["weights"], resumed["weights"])
    runner = out / f"runner_{kind}" / "checkpoints"
    assert_same_state(full["sparse"], shard_state(runner / "epoch2" / "gsparse"))
    # Accelerate drives the DeepSpeed engine itself (it sets the accumulation boundary and calls
    # engine.step() only there; the runner steps the engine after every micro-batch): at ZeRO-2/3 the
    # weights then differ by a few float32 ulps (at most 1.2e-7 measured), the masks not at all.
    assert_same_weights(full["weights"], checkpoint_weights(runner, "epoch2"), atol=0.0 if kind == "plain" else 1e-6)


# ---- one process: the plain Trainer, validation up front ---------------------------------------

def _plain_trainer(output_dir: Path, recipe, max_steps: int = 8):
    from transformers import Trainer, TrainingArguments

    import gsparse.hf

    model = tiny_bert(len(WordTokenizer()), seed=0)
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=max_steps,
                             save_steps=4, logging_steps=4, learning_rate=2e-3, report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0, lr_scheduler_type="constant")
    data = encoded_dataset(sentiment_corpus(40, seed=1), WordTokenizer())
    for row in data:
        row.pop("idx")
    trainer = Trainer(model=model, args=args, train_dataset=data)
    return trainer, gsparse.hf.sparsify_trainer(trainer, recipe)


def test_plain_trainer_saves_sparse_state_with_its_checkpoints_and_resumes_bitwise(tmp_path):
    recipe = dict(hf_worker.RECIPE, schedule={"update_interval": 3, "drop_fraction": 0.3})
    trainer, callback = _plain_trainer(tmp_path / "full", recipe)
    trainer.train()
    assert (tmp_path / "full" / "checkpoint-4" / "gsparse" / "sparse_state.pt").is_file()
    full_masks = callback.sparsifier.masks
    full_weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert callback.sparsifier.engine.num_updates == 2  # steps 3 and 6
    resumed_trainer, resumed = _plain_trainer(tmp_path / "resumed", recipe)
    resumed_trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed.sparsifier.step == 8
    for name, mask in full_masks.items():
        assert torch.equal(mask, resumed.sparsifier.masks[name]), name
        assert torch.equal(resumed.sparsifier.counters[name], callback.sparsifier.counters[name]), name
    for name, weight in resumed_trainer.model.named_parameters():
        assert torch.equal(weight, full_weights[name]), name


def test_plain_trainer_refuses_a_checkpoint_without_sparse_state(tmp_path):
    trainer, _ = _plain_trainer(tmp_path / "full", hf_worker.RECIPE, max_steps=4)
    trainer.train()
    (tmp_path / "full" / "checkpoint-4" / "gsparse" / "sparse_state.pt").unlink()
    resumed_trainer, _ = _plain_trainer(tmp_path / "resumed", hf_worker.RECIPE, max_steps=6)
    with pytest.raises(FileNotFoundError, match="sparse_state.pt is missing"):
        resumed_trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))


def test_recipe_errors_and_forward_transform_methods_fail_before_training(tmp_path):
    with pytest.raises(RecipeError, match="sparsity"):
        _plain_trainer(tmp_path, {"method": "rigl", "sparsity": 1.5})
    with pytest.raises(ValueError, match="per-layer parameters"):
        _plain_trainer(tmp_path, str(Path(__file__).resolve().parents[1] / "recipes" / "autosparse.yaml"))


# ---- sparse fine-tuning of BERT-style models ---------------------------------------------------

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BERT_PROJECTIONS = [f"bert.encoder.layer.{layer}.{name}.weight" for layer in (0, 1)
                    for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                                 "attention.output.dense", "intermediate.dense", "output.dense")]


@pytest.mark.parametrize("recipe", ["bert_gmp.yaml", "bert_acdc.yaml", "bert_sparse_transfer.yaml"])
def test_bert_recipes_make_exactly_the_attention_and_mlp_projections_sparse(recipe):
    from gsparse.params import sparse_param_specs
    from gsparse.recipe import load_recipe

    specs = sparse_param_specs(tiny_bert(len(WordTokenizer())), load_recipe(RECIPES / recipe))
    assert [spec.name for spec in specs] == BERT_PROJECTIONS  # no embedding, LayerNorm, pooler or classifier
    assert all(spec.density == pytest.approx(0.1, abs=1e-3) for spec in specs)


class _MaskLog(transformers.TrainerCallback):
    def __init__(self, sparse):
        self.sparse, self.masks, self.densities = sparse, {}, {}

    def on_step_end(self, args, state, control, **kwargs):
        sparsifier = self.sparse.sparsifier
        self.masks[state.global_step] = {name: mask.clone() for name, mask in sparsifier.masks.items()}
        self.densities[state.global_step] = sparsifier.metrics()["density"]


def test_gmp_fine_tuning_prunes_a_dense_model_then_keeps_the_mask_fixed(tmp_path):
    trainer, sparse = _plain_trainer(tmp_path, str(RECIPES / "bert_gmp.yaml"), max_steps=50)
    log = _MaskLog(sparse)
    trainer.add_callback(log)
    trainer.train()
    schedule = sparse.sparsifier.recipe.schedule  # fitted to the Trainer's 50 steps: 10%, 75%, every 2%
    assert (schedule.first_update_step, schedule.last_update_step, schedule.update_interval) == (5, 38, 1)
    assert all(log.densities[step] == 1.0 for step in range(1, 6))  # dense until the ramp starts at step 5
    assert log.densities[6] < 1.0 and log.densities[30] > log.densities[38]
    targets = {spec.name: spec.active_count for spec in sparse.sparsifier.specs}
    for step in range(38, 51):  # the target reached at 75%, then the mask stays as it is
        for name, mask in log.masks[step].items():
            assert int(mask.sum()) == targets[name]
            assert torch.equal(mask, log.masks[38][name]), (step, name)
    for name, weight in trainer.model.named_parameters():
        if name in targets:
            assert not bool(weight[~log.masks[50][name]].any())


def test_sparse_transfer_keeps_a_sparse_pretrained_models_nonzeros(tmp_path):
    trainer, sparse = _plain_trainer(tmp_path, str(RECIPES / "bert_sparse_transfer.yaml"), max_steps=6)
    parameters = dict(trainer.model.named_parameters())
    generator = torch.Generator().manual_seed(3)
    pretrained = {}
    with torch.no_grad():  # a "pretrained" 90%-sparse model: 10% of each projection kept at random places
        for name in BERT_PROJECTIONS:
            weight = parameters[name]
            keep = torch.zeros(weight.numel(), dtype=torch.bool)
            keep[torch.randperm(weight.numel(), generator=generator)[:round(0.1 * weight.numel())]] = True
            weight.mul_(keep.view_as(weight))
            pretrained[name] = (keep.view_as(weight), weight.detach().clone())
    log = _MaskLog(sparse)
    trainer.add_callback(log)
    trainer.train()
    for step in range(1, 7):
        for name, (keep, _) in pretrained.items():
            assert torch.equal(log.masks[step][name], keep), (step, name)
    for name, (keep, before) in pretrained.items():
        after = parameters[name].detach()
        assert not bool(after[~keep].any()) and not torch.equal(after[keep], before[keep]), name


def test_glue_metrics_equal_scikit_learns():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from hf_glue import glue_metrics

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 2, generator=generator).numpy()
    labels = torch.randint(0, 2, (200,), generator=generator).numpy()
    predicted = logits.argmax(-1)
    assert glue_metrics("mrpc", logits, labels) == pytest.approx(
        {"accuracy": sklearn_metrics.accuracy_score(labels, predicted), "f1": sklearn_metrics.f1_score(labels, predicted)})
    assert glue_metrics("cola", logits, labels)["matthews_correlation"] == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predicted))
    scores, targets = torch.randn(100, 1, generator=generator).numpy(), torch.rand(100, generator=generator).numpy()
    import numpy as np
    pearson = np.corrcoef(scores[:, 0], targets)[0, 1]
    assert glue_metrics("stsb", scores, targets)["pearson"] == pytest.approx(pearson)
    stats = pytest.importorskip("scipy.stats")
    tied = np.round(targets * 5) / 5  # STS-B-like labels with ties
    assert glue_metrics("stsb", scores, tied)["spearman"] == pytest.approx(stats.spearmanr(scores[:, 0], tied)[0])
    assert glue_metrics("stsb", scores[::-1], tied[::-1])["spearman"] == pytest.approx(
        stats.spearmanr(scores[:, 0], tied)[0])


def test_acdc_fine_tuning_alternates_then_ends_compressed_with_a_fixed_mask(tmp_path):
    from transformers import Trainer, TrainingArguments

    import gsparse.hf

    data = encoded_dataset(sentiment_corpus(40, seed=1), WordTokenizer())
    for row in data:
        row.pop("idx")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=6,
                             save_strategy="no", learning_rate=2e-3, report_to=[], use_cpu=True, disable_tqdm=True,
                             seed=0)
    trainer = Trainer(model=tiny_bert(len(WordTokenizer()), seed=0), args=args, train_dataset=data)
    sparse = gsparse.hf.sparsify_trainer(trainer, str(RECIPES / "bert_acdc.yaml"))
    log = _MaskLog(sparse)
    trainer.add_callback(log)
    trainer.train()
    # 5 steps per epoch (auto), 6 epochs (auto): dense 1, compressed 1, decompressed 1, then the last
    # dense epoch and a compressed fine-tune of 2 epochs with the mask fixed
    phases = [log.densities[step] for step in range(1, 31)]
    assert phases[:5] == [1.0] * 5
    assert all(density == pytest.approx(0.1, abs=1e-3) for density in phases[5:10])
    assert phases[10:15] == [1.0] * 5
    assert all(density == pytest.approx(0.1, abs=1e-3) for density in phases[20:30])
    for step in range(21, 31):
        for name, mask in log.masks[step].items():
            assert torch.equal(mask, log.masks[21][name]), (step, name)


def test_plain_trainer_resumes_again_on_the_same_trainer_like_a_fresh_one(tmp_path):
    recipe = dict(hf_worker.RECIPE, schedule={"update_interval": 3, "drop_fraction": 0.3})
    trainer, callback = _plain_trainer(tmp_path / "full", recipe)
    trainer.train()
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))  # the same trainer again
    fresh_trainer, fresh = _plain_trainer(tmp_path / "fresh", recipe)
    fresh_trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert callback.sparsifier.step == fresh.sparsifier.step == 8
    for name, mask in fresh.sparsifier.masks.items():
        assert torch.equal(callback.sparsifier.masks[name], mask), name
    for (name, weight), fresh_weight in zip(trainer.model.named_parameters(), fresh_trainer.model.parameters()):
        assert torch.equal(weight, fresh_weight), name


def test_epoch_length_counts_a_last_partial_accumulation_like_the_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    import gsparse.hf

    data = encoded_dataset(sentiment_corpus(40, seed=1), WordTokenizer())  # 5 batches of 8
    for row in data:
        row.pop("idx")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=2,
                             num_train_epochs=6, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=tiny_bert(len(WordTokenizer()), seed=0), args=args, train_dataset=data)
    callback = gsparse.hf.sparsify_trainer(trainer, str(RECIPES / "bert_acdc.yaml"))
    trainer.train()
    assert trainer.state.global_step == 18  # 3 optimizer steps per epoch: 2 + 2 + 1 micro-batches
    assert callback.sparsifier.recipe.fitted_to["steps_per_epoch"] == 3
    assert callback.sparsifier.step == 18


def test_best_model_at_end_brings_its_masks_and_hp_search_folders_get_the_state(tmp_path):
    from transformers import Trainer, TrainingArguments

    import gsparse.hf

    rows = encoded_dataset(sentiment_corpus(40, seed=1), WordTokenizer())
    for row in rows:
        row.pop("idx")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=12, save_steps=4,
                             eval_steps=4, eval_strategy="steps", load_best_model_at_end=True, learning_rate=2e-3,
                             metric_for_best_model="loss", greater_is_better=True,  # the worst loss: not the last
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=tiny_bert(len(WordTokenizer()), seed=0), args=args, train_dataset=rows, eval_dataset=rows)
    trainer._get_output_dir = lambda trial: str(tmp_path / "run-0")  # as a hyperparameter search trial does
    callback = gsparse.hf.sparsify_trainer(trainer, dict(hf_worker.RECIPE, schedule={"update_interval": 2}))
    trainer.train()
    assert sorted(p.name for p in (tmp_path / "run-0").glob("checkpoint-*/gsparse/sparse_state.pt")) == \
        ["sparse_state.pt"] * 3 and not list(tmp_path.glob("checkpoint-*"))
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-12")
    saved = torch.load(Path(best) / "gsparse" / "sparse_state.pt", weights_only=False)["engine"]["layers"]
    parameters = dict(trainer.model.named_parameters())
    for name, mask in callback.sparsifier.masks.items():
        assert torch.equal(mask.reshape(-1), saved[name]["mask"]), name
        assert not bool(parameters[name][~mask].any()), name


def test_a_second_run_of_another_length_refits_the_recipe(tmp_path):
    recipe = dict(hf_worker.RECIPE, schedule={"update_interval": "25%"})
    trainer, callback = _plain_trainer(tmp_path, recipe, max_steps=8)
    trainer.train()
    assert callback.sparsifier.recipe.schedule.update_interval == 2 and callback.sparsifier.step == 8
    trainer.args.max_steps = 12  # as auto_find_batch_size's retry changes the run's length
    trainer.train()
    assert callback.sparsifier.recipe.schedule.update_interval == 3 and callback.sparsifier.step == 12
