"""Sparse fine-tuning of a BERT-style model on a GLUE task with the Hugging Face Trainer and gsparse.

Needs internet (the model and the GLUE data come from the Hugging Face Hub) and the `datasets`
package; the self-contained example that runs offline is scripts/hf_tiny_bert.py.

    pip install -e ".[deepspeed,hf]" datasets
    # dense BERT-base, pruned to 90% by GMP while fine-tuning (recipes/bert_gmp.yaml), 4 GPUs, ZeRO-2
    deepspeed --num_gpus 4 scripts/hf_glue.py --task sst2 --model bert-base-uncased \\
        --recipe recipes/bert_gmp.yaml --deepspeed ds_configs/hf_zero2.json --epochs 8 --bf16
    # a 90%-sparse pretrained BERT-base fine-tuned with its mask fixed (the AC/DC++ paper's sparse transfer)
    python scripts/hf_glue.py --task rte --model neuralmagic/oBERT-12-upstream-pruned-unstructured-90 \\
        --recipe recipes/bert_sparse_transfer.yaml --epochs 8 --learning_rate 1e-4

It reports the task's GLUE metric on the validation split (MNLI: validation_matched) after every
epoch and writes metrics.json to --output_dir.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# task: (text fields, number of labels, validation split, metric)
GLUE_TASKS = {
    "cola": (("sentence", None), 2, "validation", "matthews_correlation"),
    "sst2": (("sentence", None), 2, "validation", "accuracy"),
    "mrpc": (("sentence1", "sentence2"), 2, "validation", "f1"),
    "qqp": (("question1", "question2"), 2, "validation", "f1"),
    "stsb": (("sentence1", "sentence2"), 1, "validation", "pearson"),
    "mnli": (("premise", "hypothesis"), 3, "validation_matched", "accuracy"),
    "qnli": (("question", "sentence"), 2, "validation", "accuracy"),
    "rte": (("sentence1", "sentence2"), 2, "validation", "accuracy"),
}


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, tied values sharing their mean rank (STS-B's labels have ties)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end - 1) / 2
    return ranks


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy for every classification task, plus the task's GLUE metric (F1, Matthews correlation,
    Pearson / Spearman for STS-B's regression)."""
    if task == "stsb":
        predicted = predictions.reshape(-1)
        return {"pearson": float(np.corrcoef(predicted, labels)[0, 1]),
                "spearman": float(np.corrcoef(average_ranks(predicted), average_ranks(labels))[0, 1])}
    predicted = predictions.argmax(-1)
    metrics = {"accuracy": float((predicted == labels).mean())}
    if task in ("mrpc", "qqp"):
        true_positive = float(((predicted == 1) & (labels == 1)).sum())
        metrics["f1"] = 2 * true_positive / max(float((predicted == 1).sum() + (labels == 1).sum()), 1.0)
    if task == "cola":
        tp, tn = float(((predicted == 1) & (labels == 1)).sum()), float(((predicted == 0) & (labels == 0)).sum())
        fp, fn = float(((predicted == 1) & (labels == 0)).sum()), float(((predicted == 0) & (labels == 1)).sum())
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        metrics["matthews_correlation"] = float((tp * tn - fp * fn) / denominator) if denominator else 0.0
    return metrics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(GLUE_TASKS))
    parser.add_argument("--model", default="bert-base-uncased", help="a Hub model id or a local folder")
    parser.add_argument("--recipe", default="recipes/bert_gmp.yaml", help="a gsparse recipe (YAML)")
    parser.add_argument("--deepspeed", default=None, help="a DeepSpeed JSON (ds_configs/hf_zero2.json, hf_zero3.json)")
    parser.add_argument("--output_dir", default=None, help="default: runs/glue_<task>")
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--batch_size", type=int, default=32, help="per device")
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output_dir")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    import gsparse.hf
    from gsparse.recipe import load_recipe
    from gsparse.training import shutdown_distributed

    load_recipe(args.recipe)  # a bad recipe fails here, before any download
    (first, second), num_labels, validation, metric = GLUE_TASKS[args.task]
    output_dir = Path(args.output_dir or f"runs/glue_{args.task}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    raw = load_dataset("nyu-mll/glue", args.task)

    def tokenize(batch):
        texts = (batch[first],) if second is None else (batch[first], batch[second])
        return tokenizer(*texts, truncation=True, max_length=args.max_length)

    data = raw.map(tokenize, batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    training = TrainingArguments(output_dir=str(output_dir), num_train_epochs=args.epochs,
                                 per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
                                 learning_rate=args.learning_rate, eval_strategy="epoch", save_strategy="epoch",
                                 save_total_limit=2, logging_steps=50, seed=args.seed, bf16=args.bf16,
                                 deepspeed=args.deepspeed, report_to=[])
    trainer = Trainer(model=model, args=training, train_dataset=data["train"], eval_dataset=data[validation],
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=lambda p: glue_metrics(args.task, p.predictions, p.label_ids))
    callback = gsparse.hf.sparsify_trainer(trainer, args.recipe)  # the one line gsparse adds
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    evaluation = trainer.evaluate()
    metrics = {"task": args.task, "model": args.model, "recipe": args.recipe,
               "metric": metric, "value": evaluation[f"eval_{metric}"],
               **{key: value for key, value in callback.sparsifier.metrics().items() if key != "layers"}}
    if trainer.is_world_process_zero():
        print(json.dumps(metrics, indent=2), flush=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutdown_distributed()
    return metrics


if __name__ == "__main__":
    main()
