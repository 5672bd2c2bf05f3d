"""Sparse fine-tuning with the Hugging Face Trainer, self-contained: a tiny BERT built from a config
on generated sentiment sentences (gsparse.tasks.tiny_text), no download. One line makes the Trainer
sparse: ``gsparse.hf.sparsify_trainer(trainer, recipe)``.

    python scripts/hf_tiny_bert.py --recipe recipes/bert_gmp.yaml
    deepspeed --num_accelerators 2 scripts/hf_tiny_bert.py --deepspeed ds_configs/hf_zero3.json
    python scripts/hf_tiny_bert.py --resume                          # from the last checkpoint in --output_dir

It prints the evaluation accuracy after every epoch, the density of the sparse layers and where
the checkpoints are. The first phase (--pretrain_epochs) trains the same model dense, so that the
recipe starts from a trained dense model as sparse fine-tuning does (skipped with --resume).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

RECIPE_HELP = "a gsparse recipe (YAML): recipes/bert_gmp.yaml, bert_acdc.yaml, bert_sparse_transfer.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--recipe", default="recipes/bert_gmp.yaml", help=RECIPE_HELP)
    parser.add_argument("--deepspeed", default=None, help="a DeepSpeed JSON (ds_configs/hf_zero2.json, hf_zero3.json)")
    parser.add_argument("--output_dir", default="runs/hf_tiny_bert")
    parser.add_argument("--epochs", type=int, default=4, help="sparse fine-tuning epochs")
    parser.add_argument("--pretrain_epochs", type=int, default=4, help="dense training before the sparse phase")
    parser.add_argument("--train_size", type=int, default=3000)
    parser.add_argument("--eval_size", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32, help="per process")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="resume the sparse phase from its last checkpoint")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def accuracy(prediction) -> dict:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def pretrain_dense(model, train_rows, eval_rows, args) -> float:
    """The dense model the sparse phase starts from: a plain loop, the same on every process (seeded,
    full data), so that no second DeepSpeed engine is needed; returns its evaluation accuracy."""
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    model.train()
    for _ in range(args.pretrain_epochs):
        order = torch.randperm(len(train_rows), generator=generator).tolist()
        for start in range(0, len(order), args.batch_size):
            rows = [train_rows[i] for i in order[start:start + args.batch_size]]
            loss = model(**{key: torch.stack([row[key] for row in rows]) for key in rows[0]}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        batch = {key: torch.stack([row[key] for row in eval_rows]) for key in eval_rows[0]}
        predicted = model(**batch).logits.argmax(-1)
    model.train()
    return float((predicted == batch["labels"]).float().mean())


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import Trainer, TrainingArguments

    import gsparse.hf
    from gsparse.recipe import load_recipe
    from gsparse.tasks.tiny_text import WordTokenizer, encoded_dataset, sentiment_corpus, tiny_bert
    from gsparse.training import shutdown_distributed

    load_recipe(args.recipe)  # a bad recipe fails here, before anything trains
    tokenizer = WordTokenizer()
    train_rows = encoded_dataset(sentiment_corpus(args.train_size, seed=args.seed), tokenizer)
    eval_rows = encoded_dataset(sentiment_corpus(args.eval_size, seed=args.seed + 10_000), tokenizer)
    for row in train_rows + eval_rows:
        row.pop("idx")
    output = Path(args.output_dir)
    model = tiny_bert(len(tokenizer), hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                      dropout=0.1, seed=args.seed)

    dense_accuracy = None
    if not args.resume and args.pretrain_epochs:
        dense_accuracy = pretrain_dense(model, train_rows, eval_rows, args)
    training = TrainingArguments(output_dir=str(output / "sparse"), num_train_epochs=args.epochs,
                                 per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=256,
                                 learning_rate=args.learning_rate, eval_strategy="epoch", save_strategy="epoch",
                                 logging_steps=20, report_to=[], seed=args.seed, use_cpu=True,
                                 deepspeed=args.deepspeed, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=train_rows,
                      eval_dataset=eval_rows, compute_metrics=accuracy)
    callback = gsparse.hf.sparsify_trainer(trainer, args.recipe)  # the one line gsparse adds
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    metrics = {"dense_eval_accuracy": dense_accuracy, "sparse_eval_accuracy": trainer.evaluate()["eval_accuracy"],
               **{key: value for key, value in callback.sparsifier.metrics().items() if key != "layers"},
               "checkpoints": str(output / "sparse")}
    if trainer.is_world_process_zero():
        print(json.dumps(metrics, indent=2), flush=True)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutdown_distributed()
    return metrics


if __name__ == "__main__":
    main()
