"""Run by tests/test_forgetting.py under torchrun (2 ranks, gloo): each rank counts forgetting events
on its own share of every batch (ForgettingSampler), in three variants written to
<out>/rank<r>.json: merged every epoch over the world group; merged once (at the phase switch) over
an explicit data-parallel group; the same with a mid-epoch checkpoint/restore (pending presentations
in the state) on fresh objects."""
import io
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gsparse.training.forgetting import ForgettingSampler, ForgettingTracker  # noqa: E402

NUM_EXAMPLES, BATCH, FIRST_PHASE, EPOCHS, THRESHOLD, SEED = 37, 3, 4, 6, 1, 5


def correct_of(epoch: int, step: int, index: int) -> bool:
    """Synthetic classifier outcome of a presentation: a function of (epoch, step, example) only,
    so the single-process reference sees the same outcomes. Examples 4, 13, 22, 31 are never learned."""
    if index % 9 == 4:
        return False
    return (index * 31 + epoch * 17 + step * 7) % 11 < 3 + 2 * epoch


def run(group, merge_every_epoch: bool, restore_at=None) -> dict:
    tracker = ForgettingTracker(NUM_EXAMPLES, group=group)
    sampler = ForgettingSampler(tracker, FIRST_PHASE, threshold=THRESHOLD, seed=SEED, group=group)
    second_phase = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        order = list(sampler)
        if not sampler.in_first_phase:
            second_phase.append(order)
        for step, start in enumerate(range(0, len(order), BATCH)):
            if restore_at == (epoch, step):  # checkpoint with pending presentations, restore on fresh objects
                buffer = io.BytesIO()
                torch.save({"tracker": tracker.state_dict(), "sampler": sampler.state_dict()}, buffer)
                buffer.seek(0)
                state = torch.load(buffer, weights_only=False)
                tracker = ForgettingTracker(NUM_EXAMPLES, group=group)
                tracker.load_state_dict(state["tracker"])
                sampler = ForgettingSampler(tracker, FIRST_PHASE, threshold=THRESHOLD, seed=SEED, group=group)
                sampler.load_state_dict(state["sampler"])
            indices = order[start:start + BATCH]
            if sampler.in_first_phase:
                tracker.update(indices, [correct_of(epoch, step, i) for i in indices])
        if merge_every_epoch:
            tracker.merge()
    return {"events": tracker.forgetting_events.tolist(), "scores": tracker.scores().tolist(),
            "presentations": tracker.presentations.tolist(), "kept": sampler.kept.tolist(),
            "second_phase": second_phase}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    data_parallel = dist.new_group([0, 1])
    result = {"world": dist.get_world_size(),
              "every_epoch": run(None, merge_every_epoch=True),
              "once": run(data_parallel, merge_every_epoch=False),
              "restored": run(data_parallel, merge_every_epoch=False, restore_at=(2, 1))}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()
