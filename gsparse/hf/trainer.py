"""gsparse inside a Hugging Face ``transformers.Trainer`` (plain, DDP, or its DeepSpeed
integration at any ZeRO stage)::

    trainer = Trainer(model=model, args=args, train_dataset=train, ...)
    gsparse.hf.sparsify_trainer(trainer, "recipes/bert_gmp.yaml")   # the one added line
    trainer.train()                       # or trainer.train(resume_from_checkpoint=True)

The callback attaches when training begins (the Trainer has then built its optimizer and, with
DeepSpeed, its engine), fits run-relative recipe values (``"75%"``, ``auto`` epochs) to the
Trainer's ``max_steps`` and epoch length, and from then on the masks are exact every step and
updated on schedule inside the optimizer step. The sparse state goes into the Trainer's own
checkpoints: with DeepSpeed inside ``checkpoint-N/global_stepN/gsparse/`` (one file per rank,
written by ``engine.save_checkpoint``), otherwise ``checkpoint-N/gsparse/sparse_state.pt``; and
``trainer.train(resume_from_checkpoint=...)`` restores it bitwise. Density, exploration degree
and update counts are added to every log the Trainer's loggers receive (``sparsity/...``).
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from gsparse.hf.common import attach_prepared, checked_recipe, log_values, unwrap_model, unwrap_optimizer
from gsparse.recipe import Recipe
from gsparse.sparsifier import SparseState

__all__ = ["SparseTrainingCallback", "sparsify_trainer", "PLAIN_STATE_FILE"]

PLAIN_STATE_FILE = Path("gsparse") / "sparse_state.pt"  # under checkpoint-N/ without DeepSpeed


class SparseTrainingCallback(TrainerCallback):
    """Keeps ``trainer``'s model sparse as ``recipe`` says; build it with :func:`sparsify_trainer`.

    ``sparsifier`` (a :class:`gsparse.sparsifier.SparseState`: masks, metrics, gathering) exists
    from ``on_train_begin`` on. ``log_metrics`` adds the ``sparsity/...`` values to the Trainer's logs.
    """

    def __init__(self, trainer, recipe: str | Mapping[str, Any] | Recipe, *, log_metrics: bool = True,
                 elastic_checkpoints: bool = False):
        self.trainer = trainer
        self.recipe = checked_recipe(recipe)
        self.log_metrics = log_metrics
        self.elastic_checkpoints = elastic_checkpoints
        self.sparsifier: SparseState | None = None
        self.resume_from: str | None = None  # set by the wrapped trainer.train
        self._attached_to = None
        self._run: tuple | None = None  # (max_steps, steps per epoch) the recipe was fitted to

    # ---- attaching -----------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        trainer = self.trainer
        prepared = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
        resume = self.resume_from
        steps_per_epoch = None
        if train_dataloader is not None and hasattr(train_dataloader, "__len__"):
            # the Trainer's own count: a last partial accumulation still makes an optimizer step
            steps_per_epoch = max(math.ceil(len(train_dataloader) / max(args.gradient_accumulation_steps, 1)), 1)
        run = (state.max_steps, steps_per_epoch)
        if self.sparsifier is not None:
            if self._attached_to is prepared and resume is None and self.sparsifier.step > 0 and self._run == run:
                return  # train() again on the same model and run length: the sparse state carries on
            # a resume restores the checkpoint's state; a run of another length (auto_find_batch_size's
            # retry) gets the recipe fitted to it
            self.sparsifier.remove()
        self._run = run
        if resume is None and state.global_step > 0:
            raise RuntimeError("gsparse: the Trainer resumed (global step {}) from a checkpoint gsparse was not told "
                               "of: call trainer.train(...) after gsparse.hf.sparsify_trainer(trainer, recipe), which "
                               "records resume_from_checkpoint".format(state.global_step))
        if trainer.is_deepspeed_enabled:
            self.sparsifier = attach_prepared(prepared, trainer.optimizer, self.recipe, total_steps=state.max_steps,
                                              steps_per_epoch=steps_per_epoch,
                                              elastic_checkpoints=self.elastic_checkpoints)
            if resume is not None:
                # DeepSpeed loaded this checkpoint before gsparse attached; attaching masked the weights
                # with the initial masks, so load it again, now with the sparse state (bitwise). The
                # Trainer's load has just checked it against the model (strictly, unless PEFT).
                prepared.load_checkpoint(resume, load_module_strict=False, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        else:
            self.sparsifier = self._attach_plain(prepared, trainer.optimizer, state, steps_per_epoch, resume)
        self._attached_to = prepared

    def _attach_plain(self, model, optimizer, state, steps_per_epoch, resume) -> SparseState:
        if resume is None:
            return attach_prepared(model, optimizer, self.recipe, total_steps=state.max_steps,
                                   steps_per_epoch=steps_per_epoch)
        path = Path(resume) / PLAIN_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"gsparse: {path} is missing: checkpoint {resume} was not written by a sparse run "
                                    "(or the run stopped while saving it); resume from an earlier checkpoint")
        # Attaching masks weights and resets optimizer state with the initial masks; the Trainer
        # has already restored both from the checkpoint, so keep them and put them back.
        module, inner = unwrap_model(model), unwrap_optimizer(optimizer)
        weights = {name: value.detach().clone() for name, value in module.state_dict().items()}
        optimizer_state = copy.deepcopy(inner.state_dict())
        sparsifier = attach_prepared(model, optimizer, self.recipe, total_steps=state.max_steps,
                                     steps_per_epoch=steps_per_epoch)
        sparsifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
        module.load_state_dict(weights)
        inner.load_state_dict(optimizer_state)
        return sparsifier

    # ---- checkpoints and logs ------------------------------------------------------------------

    def save_plain_state(self, checkpoint_folder: str | Path) -> None:
        """Write the replicated sparse state into ``checkpoint_folder`` (without DeepSpeed; the main
        process only). Under DeepSpeed the engine's save_checkpoint, wrapped by gsparse, writes the shards."""
        if self.sparsifier is None or self.trainer.is_deepspeed_enabled or not self.trainer.args.should_save:
            return
        path = Path(checkpoint_folder) / PLAIN_STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save(self.sparsifier.state_dict(), temporary)
        os.replace(temporary, path)

    def on_train_end(self, args, state, control, **kwargs):
        # load_best_model_at_end: without DeepSpeed the Trainer reloads the best checkpoint's weights
        # only (with DeepSpeed its engine load, wrapped by gsparse, restores the sparse state too)
        best = state.best_model_checkpoint
        if (self.sparsifier is None or self.trainer.is_deepspeed_enabled or not args.load_best_model_at_end
                or best is None):
            return
        path = Path(best) / PLAIN_STATE_FILE
        if not path.is_file():  # as the Trainer does for its own missing files: warn, keep training's result
            warnings.warn(f"gsparse: {path} is missing: the best checkpoint's weights were loaded without their "
                          "masks; the sparsifier keeps the masks of the last step", stacklevel=2)
            return
        self.sparsifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.log_metrics or self.sparsifier is None or logs is None:
            return
        values = log_values(self.sparsifier)
        logs.update(values)
        # Trainer.log appended its copy to the history before calling us
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)


def sparsify_trainer(trainer, recipe: str | Mapping[str, Any] | Recipe, *, log_metrics: bool = True,
                     elastic_checkpoints: bool = False) -> SparseTrainingCallback:
    """Make ``trainer`` train sparse with ``recipe`` (a YAML path, a dict, a :class:`Recipe`).

    The recipe is validated now. The callback is put first among the Trainer's callbacks (so the
    loggers see its values), ``trainer.train`` is wrapped to learn the checkpoint it resumes from,
    and (without DeepSpeed) the Trainer's checkpoint writer to save the sparse state first. Returns
    the callback; its ``sparsifier`` exists once training has begun.

    ``elastic_checkpoints`` (DeepSpeed) also writes each rank's piece of the optimizer state
    (:func:`gsparse.deepspeed.attach`); it is off because the Trainer itself loads a ZeRO checkpoint
    only at the world size that wrote it, before gsparse attaches.
    """
    callback = SparseTrainingCallback(trainer, recipe, log_metrics=log_metrics,
                                      elastic_checkpoints=elastic_checkpoints)
    trainer.callback_handler.callbacks.insert(0, callback)
    train = trainer.train

    def train_sparse(resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        resume = resume_from_checkpoint
        if resume is True:
            resume = get_last_checkpoint(trainer.args.output_dir)  # what Trainer.train resolves it to
        callback.resume_from = None if resume in (None, False) else str(resume)
        return train(resume_from_checkpoint, *args, **kwargs)

    trainer.train = train_sparse
    save_checkpoint = trainer._save_checkpoint

    def save_checkpoint_with_sparse_state(model, trial, *args, **kwargs):
        # before the Trainer's own files (trainer_state.json, rotation, hub upload), into the folder
        # it is about to write, also under a hyperparameter search (run-<trial>/checkpoint-N)
        folder = Path(trainer._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        callback.save_plain_state(folder)
        return save_checkpoint(model, trial, *args, **kwargs)

    trainer._save_checkpoint = save_checkpoint_with_sparse_state
    return callback
