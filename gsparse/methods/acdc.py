"""AC/DC, alternating compressed / decompressed training (Peste et al., NeurIPS 2021), and its
extended-training schedule AC/DC++ (from "Accurate Neural Network Pruning Requires Rethinking Sparse
Optimization").

Rules implemented (lengths in epochs of ``steps_per_epoch`` optimizer steps, ``s = length_scale``):

* A dense warm-up of ``s * warmup_epochs``.
* Then alternating phases, starting compressed: ``compressed_epochs`` compressed, then
  ``decompressed_epochs`` decompressed, ... as many compressed phases as fit before the
  fine-tune while leaving the last decompressed phase at least ``s * last_decompressed_epochs``
  long (it takes the remainder). The reference 1x ImageNet schedule (10 / 5 / 5 / 10 / 15 of
  100 epochs) compresses at epochs 10, 20, ..., 70, decompresses at 15, ..., 65 and 75, and
  fine-tunes from 85.
* A compressed fine-tune over the last ``s * finetune_epochs`` of ``s * total_epochs`` (and any
  step after it).
* Compressed phase: at its first step the mask becomes the top-k by magnitude ``|w|`` over all
  weights of each layer (``selection: layer``, the recipe's per-layer counts) or over all sparse
  layers at once (``selection: global``, their sum); the mask is then fixed and pruned weights
  are held at zero. Decompressed phase: every weight is active; the pruned ones restart from 0
  (the engine grows them at zero with a reset optimizer state, as the reference restores them).
* AC/DC++ scales the run length: the warm-up, the last decompressed phase, the fine-tune and the
  total scale with ``length_scale`` (the schedule keeps its proportions), while the compressed
  and decompressed phases keep their length and their number grows with the run (the paper's
  1000-epoch runs checkpoint "at the end of every AC/DC step", every 10 epochs from epoch 109).

The budget alternates between dense and the target; the engine counts every active weight in
every step (``layer_active_steps``), so the dense phases' training FLOPs are reported in full.
"""
from __future__ import annotations

from dataclasses import dataclass

from gsparse.distributions import round_half_up
from gsparse.methods.base import MaskChange, SparseMethod
from gsparse.methods.registry import register_method
from gsparse.options import Option, RecipeError, RunProblem, choice, integer, number, or_from_run

WARMUP, COMPRESSED, DECOMPRESSED, FINETUNE = "warmup", "compressed", "decompressed", "finetune"


@dataclass(frozen=True)
class PhaseSchedule:
    """The AC/DC phases in optimizer steps (step ``t`` counts from 1)."""

    warmup: int  # steps 1..warmup are dense
    compressed: int
    decompressed: int
    cycles: int  # compressed phases between the warm-up and the fine-tune
    finetune_start: int  # first step of the final compressed phase

    def phase_at(self, step: int) -> str:
        index = step - 1  # steps already taken
        if index < self.warmup:
            return WARMUP
        if step >= self.finetune_start:
            return FINETUNE
        cycle, offset = divmod(index - self.warmup, self.compressed + self.decompressed)
        return COMPRESSED if cycle < self.cycles and offset < self.compressed else DECOMPRESSED

    def is_compressed(self, step: int) -> bool:
        return step >= 1 and self.phase_at(step) in (COMPRESSED, FINETUNE)


class ACDC(SparseMethod):
    name = "acdc"
    options = {
        "steps_per_epoch": Option(check=or_from_run(integer(1), "steps_per_epoch"),
                                  help="optimizer steps per epoch; every *_epochs length is multiplied by it (1: the "
                                       "lengths are in steps; auto: the run's)"),
        "total_epochs": Option(100, or_from_run(integer(1), "epochs"),
                               "length of the 1x run (the fine-tune ends there; auto: the run's epochs)"),
        "warmup_epochs": Option(10, integer(0), "dense warm-up at the start"),
        "compressed_epochs": Option(5, integer(1), "length of each alternating compressed phase (not scaled)"),
        "decompressed_epochs": Option(5, integer(1), "length of each alternating decompressed phase (not scaled)"),
        "last_decompressed_epochs": Option(10, integer(0), "minimum length of the last decompressed phase "
                                                           "before the fine-tune"),
        "finetune_epochs": Option(15, integer(1), "final compressed fine-tune, at the end of the run"),
        "length_scale": Option(1.0, number(0.0, min_open=True),
                               "AC/DC++: scales the run (total, warm-up, last decompressed phase, fine-tune); "
                               "2.5, 5, 10 in the paper"),
        "selection": Option("layer", choice("layer", "global"), "top-k by magnitude per layer (the recipe's "
                                                                "counts) or over all sparse layers (their sum)"),
    }

    def __init__(self, **args):
        super().__init__(**args)
        self.phases = self._phase_schedule()

    def _phase_schedule(self) -> PhaseSchedule:
        a, scale = self.args, self.args.length_scale

        def scaled(epochs: int) -> int:
            return round_half_up(scale * epochs * a.steps_per_epoch)

        warmup, total = scaled(a.warmup_epochs), scaled(a.total_epochs)
        finetune, last_decompressed = scaled(a.finetune_epochs), scaled(a.last_decompressed_epochs)
        compressed = a.compressed_epochs * a.steps_per_epoch
        decompressed = a.decompressed_epochs * a.steps_per_epoch
        span = total - finetune - warmup  # the alternating phases, the last decompressed one included
        cycles = (span - last_decompressed + decompressed) // (compressed + decompressed)
        if cycles < 1:
            raise RecipeError("method_args.total_epochs", f"{a.total_epochs} x length_scale {scale} is too short for "
                              f"warm-up {a.warmup_epochs}, one compressed phase ({a.compressed_epochs}), the last "
                              f"decompressed phase ({a.last_decompressed_epochs}) and the fine-tune "
                              f"({a.finetune_epochs}); lengthen it or shorten those")
        return PhaseSchedule(warmup, compressed, decompressed, cycles, total - finetune + 1)

    def check_run(self, recipe, total_steps: int) -> list[RunProblem]:
        start = self.phases.finetune_start
        if start <= total_steps:
            return []
        return [RunProblem("method_args.total_epochs", f"AC/DC's compressed fine-tune starts at step {start:,} but the "
                           f"run has {total_steps:,} steps: it would end in a {self.phase_at(total_steps)} phase, not "
                           f"at its target; set total_epochs x length_scale to the run's epochs (auto at length_scale 1)")]

    def phase_at(self, step: int) -> str:
        """``warmup``, ``compressed``, ``decompressed`` or ``finetune`` at optimizer step ``step``."""
        return self.phases.phase_at(step)

    def initial_change(self) -> MaskChange:
        # dense; without a warm-up the first step prunes by magnitude (not the engine's random init)
        return MaskChange.reselect(layer_counts=[layer.numel for layer in self.layers])

    def needs_dense_gradient(self, step: int) -> bool:
        return self.phases.is_compressed(step) != self.phases.is_compressed(step - 1)  # a phase starts

    def mask_change(self, step: int) -> MaskChange | None:
        compressed = self.phases.is_compressed(step)
        if compressed == self.phases.is_compressed(step - 1):
            return None
        if compressed:
            if self.args.selection == "global":
                return MaskChange.reselect(total=sum(layer.target_active for layer in self.layers))
            return MaskChange.reselect(layer_counts=[layer.target_active for layer in self.layers])
        if self.args.selection == "global":
            return MaskChange.resize(total=sum(layer.numel for layer in self.layers))
        return MaskChange.resize(layer_counts=[layer.numel for layer in self.layers])

    def forced_change(self, step: int) -> MaskChange | None:
        return None  # the phases are keyed to steps: an update outside them changes nothing

    # keep_score (compression): the default |w|. grow_score (decompression): every inactive
    # weight is grown, so the default random score only orders a selection of all of them.


    @classmethod
    def harness_recipe(cls, total_steps: int, steps_per_epoch: int, update_interval: int) -> dict:
        """The reference 10/5/5/10/15-of-100 shape scaled to a comparison run of ``total_steps``."""
        epochs = max(total_steps // steps_per_epoch, 5)

        def part(share: float, minimum: int) -> int:
            return max(minimum, round(share * epochs))

        return {"method_args": {"steps_per_epoch": steps_per_epoch, "total_epochs": epochs,
                                "warmup_epochs": part(0.10, 0), "compressed_epochs": part(0.05, 1),
                                "decompressed_epochs": part(0.05, 1), "last_decompressed_epochs": part(0.10, 0),
                                "finetune_epochs": part(0.15, 1), "selection": "global"}}


register_method("acdc", ACDC)
