"""gsparse with Hugging Face Accelerate (plain, DDP, or its DeepSpeed plugin at any ZeRO stage)::

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    sparsifier = gsparse.hf.prepare_sparse(accelerator, model, optimizer, "recipes/bert_gmp.yaml",
                                           total_steps=len(loader) * epochs)
    for batch in loader:                  # the loop stays Accelerate's own
        accelerator.backward(model(**batch).loss)
        optimizer.step(); optimizer.zero_grad()
    accelerator.save_state("ckpt")        # the sparse state goes with it; load_state restores it

With the DeepSpeed plugin ``model`` is the DeepSpeed engine and the sparse state is sharded like
its ZeRO partitions (saved by the engine's ``save_checkpoint``, which ``save_state`` calls);
otherwise it is replicated and registered with ``accelerator.register_for_checkpointing``.
"""
from __future__ import annotations

from typing import Any, Mapping

from gsparse.hf.common import attach_prepared, checked_recipe, is_deepspeed_engine
from gsparse.recipe import Recipe
from gsparse.sparsifier import SparseState

__all__ = ["prepare_sparse"]


def prepare_sparse(accelerator, model, optimizer, recipe: str | Mapping[str, Any] | Recipe, *,
                   total_steps: int | None = None, steps_per_epoch: int | None = None,
                   elastic_checkpoints: bool = True) -> SparseState:
    """Attach ``recipe`` to what ``accelerator.prepare`` returned; returns the sparsifier.

    Call it right after ``prepare`` and before ``accelerator.load_state`` (which then restores the
    sparse state too). ``total_steps`` / ``steps_per_epoch`` (optimizer steps) fit run-relative
    recipe values, as in :class:`gsparse.Sparsifier`. Steps count real optimizer steps, so
    gradient accumulation (``accelerator.accumulate``) is handled.
    """
    recipe = checked_recipe(recipe)
    sparsifier = attach_prepared(model, optimizer, recipe, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                 elastic_checkpoints=elastic_checkpoints)
    if not is_deepspeed_engine(model):
        accelerator.register_for_checkpointing(sparsifier)
    return sparsifier
