"""MEST's data-efficient two-phase training (gsparse.training.forgetting): forgetting events counted
by hand, Toneva's never-learned convention, the threshold and drop-count rules, the sampler against
DistributedSampler and over the kept set, resume, and a 2-rank run equal to one process."""
import io
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from gsparse.training.forgetting import ForgettingSampler, ForgettingTracker, IndexedDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import forgetting_worker as worker  # noqa: E402
from conftest import small_mlp  # noqa: E402

INF = math.inf


def naive_counts(presentations, num_examples):
    """Reference: walk the presentations one by one (Toneva's definition)."""
    last, events, learned = [False] * num_examples, [0] * num_examples, [False] * num_examples
    for index, correct in presentations:
        events[index] += last[index] and not correct
        learned[index] |= correct
        last[index] = correct
    return [float(e) if l else INF for e, l in zip(events, learned)]


# ------------------------------------------------------------------------------------------- counting
def test_hand_counted_forgetting_events_and_never_learned_is_infinite():
    tracker = ForgettingTracker(7)
    T, F = True, False
    # example: sequence of outcomes over its presentations -> forgetting events
    # 0: T F T F -> 2   1: F F F -> never learned (inf)   2: T T T -> 0   3: F T F T T -> 1
    # 4: never presented (inf)   5: T F within one batch, then F -> 1   6: F (first) T -> 0
    tracker.update([0, 1, 2, 3, 6], [T, F, T, F, F])
    tracker.update(torch.tensor([3, 0, 5, 5]), torch.tensor([1, 0, 1, 0]))  # 0/1 ints are fine; 5: T then F
    tracker.merge()  # state carries across merges
    tracker.update([1, 0, 2, 3], [F, T, T, F])
    tracker.update([3, 2, 0, 1, 5, 6], [T, T, F, F, F, T])
    tracker.update([3], [T])
    scores = tracker.merge()
    assert scores.tolist() == [2, INF, 0, 1, INF, 1, 0]
    assert tracker.forgetting_events.tolist() == [2, 0, 0, 1, 0, 1, 0]
    assert tracker.ever_correct.tolist() == [T, F, T, T, F, T, T]
    assert tracker.presentations.tolist() == [4, 3, 3, 5, 0, 3, 2]
    assert tracker.last_correct.tolist() == [F, F, T, T, F, F, T]
    assert tracker.pending == 0 and tracker.updates == 5


def test_threshold_and_drop_count_rules():
    tracker = ForgettingTracker(7)
    tracker.load_state_dict({**tracker.state_dict(),
                             "forgetting_events": torch.tensor([2, 0, 0, 1, 0, 1, 0]),
                             "ever_correct": torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)})
    # MEST eq. (2) as the text reads it: drop f <= th; never-learned (inf) examples are always kept
    assert tracker.kept_indices(threshold=0).tolist() == [0, 1, 3, 4, 5]
    assert tracker.kept_indices(threshold=1).tolist() == [0, 1, 4]
    assert tracker.kept_indices(threshold=5).tolist() == [1, 4]
    # MEST's code (--remove-n): drop the n lowest scores, ties by index: 2, 6 (0), then 3 (1)
    assert tracker.kept_indices(drop_count=3).tolist() == [0, 1, 4, 5]
    assert tracker.kept_mask(drop_count=0).all()


def test_matches_naive_reference_on_random_stream():
    generator = torch.Generator().manual_seed(3)
    tracker, stream = ForgettingTracker(20), []
    for step in range(30):
        indices = torch.randint(0, 20, (6,), generator=generator)  # repeats inside a batch too
        correct = torch.rand(6, generator=generator) < 0.2 + step / 40
        tracker.update(indices, correct)
        stream += list(zip(indices.tolist(), correct.tolist()))
        if step % 7 == 3:
            tracker.merge()
    assert tracker.merge().tolist() == naive_counts(stream, 20)


def test_bad_arguments_name_the_problem():
    tracker = ForgettingTracker(4)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        tracker.update([0, 4], [True, False])
    with pytest.raises(ValueError, match="one per index"):
        tracker.update([0, 1], [True])
    with pytest.raises(ValueError, match="0/1"):
        tracker.update([0], [0.5])
    with pytest.raises(ValueError, match="threshold"):
        tracker.kept_mask(threshold=-1)
    with pytest.raises(ValueError, match="exactly one"):
        tracker.kept_mask(threshold=0, drop_count=1)
    with pytest.raises(ValueError, match="num_examples"):
        ForgettingTracker(0)
    with pytest.raises(ValueError, match="first_phase_epochs"):
        ForgettingSampler(tracker, first_phase_epochs=-2)
    with pytest.raises(ValueError, match="rank"):
        ForgettingSampler(tracker, 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="drop_count"):
        ForgettingSampler(tracker, 1, threshold=None, drop_count=4)
    tracker.update([0, 1, 2, 3], [True] * 4)  # all learned, never forgotten: th=0 drops everything
    sampler = ForgettingSampler(tracker, first_phase_epochs=1, threshold=0)
    with pytest.raises(ValueError, match="no data"):
        sampler.set_epoch(1)
    with pytest.raises(ValueError, match="examples"):
        ForgettingTracker(5).load_state_dict(tracker.state_dict())


# -------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_first_phase_is_distributed_sampler(drop_last, shuffle):
    dataset = list(range(23))
    tracker = ForgettingTracker(len(dataset))
    for epoch in range(3):
        for rank in range(3):
            ours = ForgettingSampler(tracker, first_phase_epochs=5, num_replicas=3, rank=rank, shuffle=shuffle,
                                     seed=11, drop_last=drop_last)
            theirs = DistributedSampler(dataset, num_replicas=3, rank=rank, shuffle=shuffle, seed=11,
                                        drop_last=drop_last)
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs) and len(ours) == len(theirs)


def _phase_two_tracker(num_examples=30, kept_every=3):
    """Examples i % kept_every == 0 are forgotten twice, the others never: threshold 1 keeps the former."""
    tracker = ForgettingTracker(num_examples)
    everyone = list(range(num_examples))
    for outcome in ([True] * num_examples, [i % kept_every != 0 for i in everyone]) * 2:
        tracker.update(everyone, outcome)
    return tracker


@pytest.mark.parametrize("replicas,drop_last", [(3, False), (4, False), (4, True)])
def test_second_phase_epochs_cover_the_kept_examples_once_across_ranks(replicas, drop_last):
    tracker = _phase_two_tracker()  # 10 kept examples: 0, 3, ..., 27
    kept = list(range(0, 30, 3))
    samplers = [ForgettingSampler(tracker, first_phase_epochs=2, threshold=1, num_replicas=replicas, rank=rank,
                                  seed=7, drop_last=drop_last) for rank in range(replicas)]
    orders = {}
    for epoch in (2, 3):
        shares = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            assert not sampler.in_first_phase and sampler.kept.tolist() == kept
            shares.append(list(sampler))
        assert len({len(share) for share in shares}) == 1  # equal shares: same number of steps on every rank
        seen = Counter(i for share in shares for i in share)
        if replicas == 3 and not drop_last:  # 10 = 3 * 4 - 2: two examples padded in, each seen twice
            assert set(seen) == set(kept) and sum(seen.values()) == 12 and sorted(seen.values()) == [1] * 8 + [2] * 2
        elif drop_last:  # 10 -> 8: two examples left out this epoch, the rest exactly once
            assert set(seen) <= set(kept) and len(seen) == 8 and set(seen.values()) == {1}
        else:  # 4 ranks without drop_last: 12 = 10 + 2 padded
            assert set(seen) == set(kept) and sum(seen.values()) == 12
        orders[epoch] = shares
    assert orders[2] != orders[3]  # reshuffled per epoch


def test_second_phase_exactly_once_when_divisible_and_same_order_on_every_rank():
    tracker = _phase_two_tracker(num_examples=24, kept_every=4)  # 6 kept
    shares = []
    for rank in range(2):
        sampler = ForgettingSampler(tracker, first_phase_epochs=1, threshold=0, num_replicas=2, rank=rank, seed=1,
                                    first_epoch=1)  # gsparse's runner counts epochs from 1
        sampler.set_epoch(1)
        assert sampler.in_first_phase and len(sampler) == 12
        sampler.set_epoch(2)
        shares.append(list(sampler))
    assert sorted(shares[0] + shares[1]) == [0, 4, 8, 12, 16, 20]
    # both ranks cut the same permutation: interleaving the shares gives one order of the kept set
    interleaved = [i for pair in zip(*shares) for i in pair]
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(1 + 2)).tolist()
    assert interleaved == [[0, 4, 8, 12, 16, 20][p] for p in permutation]


# -------------------------------------------------------------------------------------------- resume
def test_resume_from_state_dict_continues_identically():
    def stream(step):
        generator = torch.Generator().manual_seed(100 + step)
        return torch.randint(0, 15, (5,), generator=generator), torch.rand(5, generator=generator) < 0.6

    straight = ForgettingTracker(15)
    for step in range(12):
        straight.update(*stream(step))
    straight.merge()
    interrupted = ForgettingTracker(15)
    for step in range(7):
        interrupted.update(*stream(step))
        if step == 2:
            interrupted.merge()
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)  # pending presentations (steps 3-6) travel in the state
    buffer.seek(0)
    resumed = ForgettingTracker(15)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.pending == interrupted.pending == 20
    for step in range(7, 12):
        resumed.update(*stream(step))
    resumed.merge()
    for key, value in straight.state_dict().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed.state_dict()[key])), key


def _train_two_phase(epochs, resume_after=None):
    """small_mlp on 40 synthetic examples, 2 phase-one epochs, threshold 0; bitwise-resumable at an
    epoch boundary via the model, optimizer, tracker and sampler state_dicts."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(40, 12, generator=generator)
    targets = (inputs[:, :4].argmax(1) + (inputs[:, 4] > 1).long()) % 4
    dataset = IndexedDataset(TensorDataset(inputs, targets))

    def build():
        model = small_mlp(0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tracker = ForgettingTracker(len(dataset))
        return model, optimizer, tracker, ForgettingSampler(tracker, first_phase_epochs=2, threshold=0, seed=3)

    model, optimizer, tracker, sampler = build()
    seen_per_epoch = []
    for epoch in range(epochs):
        if epoch == resume_after:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "tracker": tracker.state_dict(), "sampler": sampler.state_dict()}
            buffer = io.BytesIO()
            torch.save(state, buffer)
            buffer.seek(0)
            state = torch.load(buffer, weights_only=False)
            model, optimizer, tracker, sampler = build()
            for name, target in {"model": model, "optimizer": optimizer, "tracker": tracker,
                                 "sampler": sampler}.items():
                target.load_state_dict(state[name])
        sampler.set_epoch(epoch)
        seen = 0
        for index, x, y in DataLoader(dataset, batch_size=8, sampler=sampler):
            logits = model(x)
            if sampler.in_first_phase:
                tracker.update(index, logits.argmax(1) == y)
            loss = torch.nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(index)
        tracker.merge()
        seen_per_epoch.append(seen)
    return model, tracker, sampler, seen_per_epoch


def test_two_phase_training_drops_the_unforgotten_and_resumes_bitwise():
    model, tracker, sampler, seen = _train_two_phase(epochs=4)
    kept = tracker.kept_indices(threshold=0)
    assert torch.equal(sampler.kept, kept) and 0 < len(kept) < 40
    assert seen == [40, 40, len(kept), len(kept)]  # the second phase trains on the kept examples only
    assert int(tracker.presentations.sum()) == 80  # counted during the first phase only
    for resume_after in (1, 3):  # inside the first phase; inside the second
        resumed_model, resumed_tracker, resumed_sampler, resumed_seen = _train_two_phase(4, resume_after)
        assert resumed_seen == seen and torch.equal(resumed_sampler.kept, sampler.kept)
        assert torch.equal(resumed_tracker.forgetting_events, tracker.forgetting_events)
        for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- 2 ranks
def _single_process_reference():
    """One process seeing, step after step, rank 0's then rank 1's share of every batch."""
    tracker = ForgettingTracker(worker.NUM_EXAMPLES)
    samplers = [ForgettingSampler(tracker, worker.FIRST_PHASE, threshold=worker.THRESHOLD, num_replicas=2, rank=r,
                                  seed=worker.SEED) for r in range(2)]
    stream = []
    for epoch in range(worker.FIRST_PHASE):
        orders = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            orders.append(list(sampler))
        for step, start in enumerate(range(0, len(orders[0]), worker.BATCH)):
            indices = orders[0][start:start + worker.BATCH] + orders[1][start:start + worker.BATCH]
            correct = [worker.correct_of(epoch, step, i) for i in indices]
            tracker.update(indices, correct)
            stream += list(zip(indices, correct))
    tracker.merge()
    return tracker, stream


def test_two_rank_run_equals_one_process(tmp_path):
    """torchrun, 2 ranks (gloo): each rank counts its own share; merged every epoch (world group),
    once at the phase switch (an explicit data-parallel group), and with a mid-epoch checkpoint
    restore, every rank ends with the single process's counts and kept set."""
    reference, stream = _single_process_reference()
    assert reference.scores().tolist() == naive_counts(stream, worker.NUM_EXAMPLES)
    kept = reference.kept_indices(threshold=worker.THRESHOLD).tolist()
    assert 0 < len(kept) < worker.NUM_EXAMPLES and any(math.isinf(s) for s in reference.scores().tolist())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "forgetting_worker.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for out in ranks:
        assert out["world"] == 2
        for variant in ("every_epoch", "once", "restored"):
            assert out[variant]["events"] == reference.forgetting_events.tolist(), variant
            assert out[variant]["scores"] == reference.scores().tolist(), variant
            assert out[variant]["presentations"] == reference.presentations.tolist(), variant
            assert out[variant]["kept"] == kept, variant
    for variant in ("every_epoch", "once", "restored"):
        epochs = [(a, b) for a, b in zip(ranks[0][variant]["second_phase"], ranks[1][variant]["second_phase"])]
        assert len(epochs) == worker.EPOCHS - worker.FIRST_PHASE
        for share0, share1 in epochs:
            seen = Counter(share0 + share1)
            padding = (-len(kept)) % 2
            assert len(share0) == len(share1) and set(seen) == set(kept)
            assert sum(seen.values()) == len(kept) + padding
