"""Torch threads per rank: usable cores shared by the local ranks, $GSPARSE_THREADS, RunConfig.threads."""
import os

import pytest
import torch

from gsparse.training import RunConfig
from gsparse.training import runner
from gsparse.training.runner import default_threads, resolve_threads
from tests.test_recipe_run_fit import TinyTask


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    monkeypatch.delenv("GSPARSE_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it: not consulted


@pytest.mark.parametrize("local_ranks,threads", [(None, 8), ("1", 8), ("3", 2), ("8", 1), ("16", 1), ("x", 8)])
def test_default_is_usable_cores_over_local_ranks(eight_cores, monkeypatch, local_ranks, threads):
    if local_ranks is not None:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_ranks)
    assert default_threads() == threads
    assert resolve_threads(None) == threads


def test_the_deepspeed_launchers_local_size_counts_when_torchruns_is_absent(eight_cores, monkeypatch):
    monkeypatch.setenv("LOCAL_SIZE", "4")
    assert default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's name first
    assert default_threads() == 4


def test_explicit_threads_beat_the_environment_which_beats_the_default(eight_cores, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_threads(None) == 4
    monkeypatch.setenv("GSPARSE_THREADS", "3")
    assert resolve_threads(None) == 3
    assert resolve_threads(5) == 5


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_environment_value_is_refused(eight_cores, monkeypatch, value):
    monkeypatch.setenv("GSPARSE_THREADS", value)
    with pytest.raises(ValueError, match="GSPARSE_THREADS"):
        resolve_threads(None)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_run_config_refuses_bad_threads(value):
    with pytest.raises(ValueError, match="threads"):
        RunConfig(threads=value)


def test_training_runs_with_the_threads_and_records_them(tmp_path, monkeypatch):
    monkeypatch.delenv("GSPARSE_THREADS", raising=False)
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    task, lines = TinyTask(), []
    metrics = runner.train(task, RunConfig(epochs=1, run_dir=str(tmp_path), progress=False, threads=wanted,
                                           log=lines.append))
    assert task.threads_seen == {wanted} and metrics["threads"] == wanted
    assert f"{wanted} thread(s) each" in lines[0]
    assert torch.get_num_threads() == before  # the caller's setting is restored
    monkeypatch.setenv("GSPARSE_THREADS", str(wanted))
    task = TinyTask()
    assert runner.train(task, RunConfig(epochs=1, run_dir=str(tmp_path / "env"), progress=False,
                                        log=lambda line: None))["threads"] == wanted
    assert task.threads_seen == {wanted}
