"""gsparse from the trainers people already use (the ``gsparse[hf]`` extra).

- :func:`sparsify_trainer` - a ``transformers.Trainer`` trains sparse (plain, DDP or DeepSpeed
  ZeRO 0-3); checkpoints and ``resume_from_checkpoint`` carry the sparse state.
- :func:`prepare_sparse` - the same after ``accelerator.prepare(...)`` with Hugging Face
  Accelerate (plain, DDP, or its DeepSpeed plugin); ``accelerator.save_state`` / ``load_state``
  carry the sparse state.

Recipes for BERT-style models (attention and MLP projections sparse; embeddings, LayerNorm,
pooler and heads dense) are ``recipes/bert_*.yaml``; see docs/huggingface.md.
"""
from __future__ import annotations

__all__ = ["SparseTrainingCallback", "prepare_sparse", "sparsify_trainer"]


def __getattr__(name):
    # transformers and accelerate are imported only by the part that is used
    if name in ("SparseTrainingCallback", "sparsify_trainer"):
        from gsparse.hf import trainer

        return getattr(trainer, name)
    if name == "prepare_sparse":
        from gsparse.hf.accelerator import prepare_sparse

        return prepare_sparse
    raise AttributeError(f"module 'gsparse.hf' has no attribute '{name}'")
