"""Run by tests/test_hf.py under torchrun (2 ranks): a tiny BERT trained sparse by the Hugging
Face Trainer (DeepSpeed ZeRO-2 and ZeRO-3), by gsparse's own runner on the same batches, and by
an Accelerate loop (plain DDP and the DeepSpeed plugin); each full run saves mid-way and a second
run resumes from that checkpoint. Usage: hf_worker.py OUT trainer|accelerate"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsparse.tasks.tiny_text import WordTokenizer, encoded_dataset, sentiment_corpus, tiny_bert  # noqa: E402
from gsparse.training import RunConfig, TaskBase, train  # noqa: E402
from gsparse.training.runner import shutdown_distributed  # noqa: E402

RECIPE = {"method": "dst_ee", "sparsity": 0.8, "distribution": "uniform",
          "params": {"include": ["*encoder.layer.*.weight"], "exclude": ["*LayerNorm.weight"]},
          "schedule": {"update_interval": 3, "drop_fraction": 0.3}}
PER_RANK_BATCH, STEPS, SAVE_EVERY, RESUME_AT, EXAMPLES, LR = 4, 12, 4, 8, 48, 2e-3


def ds_config(stage: int, accumulation: int = 1) -> dict:
    return {"train_micro_batch_size_per_gpu": PER_RANK_BATCH, "gradient_accumulation_steps": accumulation,
            "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
            "steps_per_print": 10 ** 6}


def dataset():
    return encoded_dataset(sentiment_corpus(EXAMPLES, seed=0), WordTokenizer())


def initial_model():
    return tiny_bert(len(WordTokenizer()), seed=0)


def decay_groups(model, lr: float) -> list[dict]:
    """The Trainer's two AdamW groups (weight decay 0 here, but the same partition layout)."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if n in decay], "weight_decay": 0.0},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


class ExactSparsity:
    """Checks after every optimizer step that each layer has exactly its active count and that
    inactive weights are zero (on this rank's fp32 pieces; counts summed over ZeRO partitions)."""

    def __init__(self):
        self.steps = 0

    def check(self, sparsifier) -> None:
        engine = sparsifier.engine
        counts = torch.tensor([int(layer.mask.sum()) for layer in engine.layers], dtype=torch.int64)
        engine.backend.communicator.all_reduce_sum(counts)  # a no-op where every rank holds everything
        expected = [layer.spec.active_count for layer in engine.layers]
        assert counts.tolist() == expected, (engine.step, counts.tolist(), expected)
        for index, layer in enumerate(engine.layers):
            weight = engine.backend.weight(index)
            assert not bool(weight[~layer.mask].any()), (engine.step, layer.spec.name)
        self.steps += 1


def collate_recording(record: list):
    def collate(rows):
        record.append([int(row["idx"]) for row in rows])
        return {key: torch.stack([row[key] for row in rows]) for key in ("input_ids", "attention_mask", "labels")}
    return collate


def reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


# ---- Hugging Face Trainer ----------------------------------------------------------------------

def run_trainer(stage: int, output_dir: Path, resume: str | None) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import gsparse.hf

    reset_accelerate()
    model = initial_model()  # before TrainingArguments: no zero.Init, DeepSpeed partitions at initialize
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=PER_RANK_BATCH, max_steps=STEPS,
                             save_steps=SAVE_EVERY, logging_steps=2, learning_rate=LR, lr_scheduler_type="constant",
                             optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, report_to=[], use_cpu=True,
                             deepspeed=ds_config(stage), remove_unused_columns=False, seed=0, data_seed=0,
                             disable_tqdm=True, save_only_model=False)
    batches: list = []
    trainer = Trainer(model=model, args=args, train_dataset=dataset(), data_collator=collate_recording(batches))
    callback = gsparse.hf.sparsify_trainer(trainer, RECIPE)
    checker = ExactSparsity()

    class Check(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            checker.check(callback.sparsifier)

    trainer.add_callback(Check())
    trainer.train(resume_from_checkpoint=resume)
    logged = [row for row in trainer.state.log_history if "sparsity/density" in row]
    return {"batches": batches, "checked_steps": checker.steps, "sparse_step": callback.sparsifier.step,
            "logged": logged}


class ReplayTask(TaskBase):
    """A Trainer or Accelerate run for gsparse's runner: the same model, optimizer groups and
    per-rank micro-batches (``batches_by_rank[rank]``: example indices, in order)."""

    name = "hf_replay"

    def __init__(self, batches_by_rank: list[list[list[int]]], accumulation: int = 1, trainer_loss: bool = False):
        self.batches_by_rank = batches_by_rank
        self.accumulation = accumulation
        self.trainer_loss = trainer_loss
        self.rows = dataset()
        self.batch_size = PER_RANK_BATCH * len(batches_by_rank) * accumulation
        self.steps = STEPS // 2

    def build_model(self):
        return initial_model()

    def build_optimizer(self, model):
        return torch.optim.AdamW(decay_groups(model, LR), lr=LR)

    def steps_per_epoch(self) -> int:
        return self.steps

    def train_batches(self, epoch: int, context):
        per_epoch = self.steps * self.accumulation
        for indices in self.batches_by_rank[context.rank][(epoch - 1) * per_epoch:epoch * per_epoch]:
            yield batch_of(self.rows, indices)

    def loss(self, model, batch):
        if not self.trainer_loss:
            return model(**batch).loss
        # the Trainer's arithmetic: the loss sums over this rank's examples, divides by the examples of
        # all ranks (num_items_in_batch) and multiplies by the ranks (average_tokens_across_devices)
        world = len(self.batches_by_rank)
        return model(**batch, num_items_in_batch=torch.tensor(self.batch_size)).loss * world


def batch_of(rows, indices) -> dict:
    return {key: torch.stack([rows[i][key] for i in indices]) for key in ("input_ids", "attention_mask", "labels")}


def run_runner(stage: int, run_dir: Path, task: ReplayTask) -> None:
    config = RunConfig(epochs=2, recipe=RECIPE, deepspeed_config=ds_config(stage, task.accumulation), progress=False,
                       run_dir=str(run_dir), log=lambda line: None, count_flops=False)
    train(task, config)


def trainer_scenarios(out: Path) -> dict:
    results = {}
    for stage in (2, 3):
        full = run_trainer(stage, out / f"trainer_z{stage}", None)
        resumed = run_trainer(stage, out / f"trainer_z{stage}_resumed",
                              str(out / f"trainer_z{stage}" / f"checkpoint-{RESUME_AT}"))
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, full["batches"][:STEPS])
        run_runner(stage, out / f"runner_z{stage}", ReplayTask(gathered, trainer_loss=True))
        results[f"z{stage}"] = {"full": full, "resumed": resumed}
    return results


# ---- Accelerate ------------------------------------------------------------------------------

def run_accelerate(kind: str, output_dir: Path, resume: bool) -> dict:
    """12 optimizer steps of 2 accumulated micro-batches; state saved after step RESUME_AT; with
    ``resume``, load it and train the remaining steps."""
    from accelerate import Accelerator, DeepSpeedPlugin

    import gsparse.hf

    reset_accelerate()
    accumulation = 2
    if kind == "plain":
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    else:
        stage = int(kind[-1])
        plugin = DeepSpeedPlugin(hf_ds_config=ds_config(stage, accumulation))
        accelerator = Accelerator(cpu=True, deepspeed_plugin=plugin, gradient_accumulation_steps=accumulation)
    model = initial_model()
    optimizer = torch.optim.AdamW(decay_groups(model, LR), lr=LR)
    model, optimizer = accelerator.prepare(model, optimizer)
    sparsifier = gsparse.hf.prepare_sparse(accelerator, model, optimizer, RECIPE, total_steps=STEPS)
    rows, rank, world = dataset(), accelerator.process_index, accelerator.num_processes
    checker = ExactSparsity()
    first_step = 0
    if resume:
        accelerator.load_state(str(output_dir.parent / f"{output_dir.name.replace('_resumed', '')}" / "state"))
        first_step = RESUME_AT
    for step in range(first_step, STEPS):
        for micro in range(accumulation):
            batch = batch_of(rows, rotation(step * accumulation + micro, rank, world))
            with accelerator.accumulate(model):
                accelerator.backward(model(**batch).loss)
                optimizer.step()
                optimizer.zero_grad()
        checker.check(sparsifier)
        if not resume and step + 1 == RESUME_AT:
            accelerator.save_state(str(output_dir / "state"))
    accelerator.save_state(str(output_dir / "final"))
    final = {"sparse": sparsifier.gather_state(("mask", "counter"), rank=0), "weights": full_weights(model)}
    if rank == 0:
        torch.save(final, output_dir / "final.pt")
    return {"checked_steps": checker.steps, "sparse_step": sparsifier.step}


def full_weights(model) -> dict:
    """Every parameter in full (gathered at ZeRO-3), by name."""
    import contextlib

    import deepspeed

    module = model.module if hasattr(model, "module") else model
    params = list(module.parameters())
    zero3 = any(hasattr(p, "ds_id") for p in params)
    with deepspeed.zero.GatheredParameters(params) if zero3 else contextlib.nullcontext():
        return {name: p.detach().clone() for name, p in module.named_parameters()}


def rotation(micro_step: int, rank: int, world: int) -> list[int]:
    """The examples of one rank's micro-batch in the Accelerate runs: a fixed rotation."""
    start = (micro_step * world + rank) * PER_RANK_BATCH % EXAMPLES
    return [(start + i) % EXAMPLES for i in range(PER_RANK_BATCH)]


def accelerate_scenarios(out: Path) -> dict:
    results, world = {}, dist.get_world_size()
    for kind, stage in (("plain", 0), ("zero2", 2), ("zero3", 3)):
        results[kind] = {"full": run_accelerate(kind, out / f"accelerate_{kind}", False),
                         "resumed": run_accelerate(kind, out / f"accelerate_{kind}_resumed", True)}
        batches = [[rotation(micro, rank, world) for micro in range(STEPS * 2)] for rank in range(world)]
        run_runner(stage, out / f"runner_{kind}", ReplayTask(batches, accumulation=2))
    return results


def main():
    out, which = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    results = trainer_scenarios(out) if which == "trainer" else accelerate_scenarios(out)
    if dist.get_rank() == 0:
        (out / f"{which}.json").write_text(json.dumps(results))
    shutdown_distributed()


if __name__ == "__main__":
    main()
