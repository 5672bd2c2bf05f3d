"""The DeepSpeed integration with 1-3 CPU processes (gloo), against single-process runs.

All checks run inside five launches of tests/distributed/zero_worker.py (module fixture): each
launch costs ~15 s of DeepSpeed start-up, so every scenario that can share one does.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.method_cases import load_cases

WORKER = Path(__file__).resolve().parent / "distributed" / "zero_worker.py"
TRAIN_CONFIGS = ["0-dst_ee", "0-rigl", "1-dst_ee", "1-rigl", "2-dst_ee", "2-rigl", "3-dst_ee", "3-rigl",
                 "2-dst_ee-gas2", "0-rigl-bf16", "1-dst_ee-bf16", "2-rigl-bf16", "3-dst_ee-bf16",
                 "0-admm", "1-admm", "2-admm", "3-admm", "2-gmp", "3-gmp", "3-dst_ee-always", "1-rigl-always",
                 "0-dst_ee-fp16", "1-rigl-fp16", "2-dst_ee-fp16", "3-rigl-fp16",
                 "0-rigl-csr", "1-dst_ee-csr", "2-rigl-csr", "3-dst_ee-csr", "2-dst_ee-csr-gas2", "1-rigl-auto",
                 "3-rigl-auto", "1-set-fanin", "2-rigl-fanin", "3-dst_ee-fanin", "1-dst_ee-block", "2-rigl-block",
                 "3-dst_ee-block", "1-rigl-nm", "2-dst_ee-nm", "3-rigl-nm"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("GSPARSE_TEST_STEPS", None)
    return env


def _run(commands: list[list[str]], log: Path, timeout: int = 900) -> None:
    """Start the processes of one launch (one per node) and wait for all of them."""
    with log.open("w") as output:
        processes = [subprocess.Popen(c, stdout=output, stderr=subprocess.STDOUT, env=_environment()) for c in commands]
        codes = [p.wait(timeout=timeout) for p in processes]
    if any(codes):
        raise AssertionError(f"launch failed with exit codes {codes}; log tail:\n" + log.read_text()[-6000:])


def _torchrun(processes: int, scenarios: str, workdir: Path, name: str, extra: tuple = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            str(WORKER), "--scenarios", scenarios, "--workdir", str(workdir),
            "--out", str(workdir / f"{name}.json"), *extra]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("zero")
    # 1. Two ranks: training equality at every stage, selection on real partitions, resume,
    #    and the checkpoint the resharding launches read.
    _run([_torchrun(2, "train,select,resume,reshard_save,seams,admm_groups,gather,nonfinite,method_cases,cnn,runner_save,"
                    "elastic_save,runner_export", workdir, "two",
                    ("--train-configs", ",".join(TRAIN_CONFIGS)))], workdir / "two.log")
    # 2. One rank: resume the two-rank checkpoint, then save one of its own.
    _run([_torchrun(1, "reshard_load_from_2,reshard_save,refusals,fp16_overflow,runner_resume,elastic_load", workdir, "one")],
         workdir / "one.log")
    # 3. Three ranks: selection again, and 2 -> 3 resharding (sparse state, then weights, optimizer state, buffers).
    _run([_torchrun(3, "select,reshard_load_from_2,elastic_load", workdir, "three")], workdir / "three.log")
    # 4. DeepSpeed's own launcher, two ranks: 1 -> 2 resharding.
    _run([["deepspeed", "--num_accelerators", "2", "--master_port", str(_free_port()), str(WORKER), "--scenarios",
           "reshard_load_from_1", "--workdir", str(workdir), "--out", str(workdir / "launcher.json")]],
         workdir / "launcher.log")
    # 5. Two "nodes" of one process each, rendezvous on loopback, as on a real cluster.
    port = _free_port()
    nodes = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
              "--master_addr=127.0.0.1", f"--master_port={port}", str(WORKER), "--scenarios", "train",
              "--train-configs", "2-dst_ee,3-rigl", "--workdir", str(workdir), "--out", str(workdir / "nodes.json")]
             for rank in (0, 1)]
    _run(nodes, workdir / "nodes.log")
    merged = {}
    for name in ("two", "one", "three", "launcher", "nodes"):
        for key, value in json.loads((workdir / f"{name}.json").read_text()).items():
            merged[f"{name}:{key}"] = value
    return merged


@pytest.mark.parametrize("config", TRAIN_CONFIGS)
def test_sparsity_exact_every_step_and_low_precision_zero(results, config):
    entry = results[f"two:train/{config}"]
    assert entry["violations"] == {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
    assert entry["low_precision_dtype"] == {"bf16": "torch.bfloat16", "fp16": "torch.float16"}.get(
        config.split("-")[-1], "torch.float32")
    assert entry["steps"] == 200 - entry["skipped"]  # fp16: loss-scale overflows are no steps
    assert entry["skipped"] <= (3 if "fp16" in config else 0)
    assert entry["updates"] == {"admm": 1, "gmp": 14}.get(config.split("-")[1], 15)
    assert entry["density"] == pytest.approx(0.5 if config.endswith("-nm") else 0.15, abs=0.01)  # 2:4: exactly 0.5


@pytest.mark.parametrize("config", [c for c in TRAIN_CONFIGS if not {"bf16", "fp16", "csr", "auto"} & set(c.split("-"))])
def test_masks_and_counters_equal_single_process(results, config):
    entry = results[f"two:train/{config}"]
    assert entry["masks_equal"] and entry["counters_equal"]
    assert entry["max_weight_diff"] <= 1e-6
    assert entry["exploration"] == entry["reference_exploration"]


@pytest.mark.parametrize("config", [c for c in TRAIN_CONFIGS if "csr" in c])
def test_sparse_execution_under_zero_equals_single_process_dense_execution(results, config):
    """Sparse layers run with CSR kernels inside the DeepSpeed engine (structure built from the
    gathered mask at each update, inside the step); masks, counters and weights equal the
    single-process masked dense run's."""
    entry = results[f"two:train/{config}"]
    assert entry["execution"] == ["sparse"]
    assert entry["builds"] == [entry["updates"] + 1] * 3  # at attach, then once per mask update
    assert entry["masks_equal"] and entry["counters_equal"]
    assert entry["max_weight_diff"] <= 1e-5
    assert entry["violations"] == {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}


@pytest.mark.parametrize("config", [c for c in TRAIN_CONFIGS if "auto" in c])
def test_auto_execution_under_zero_decides_every_layer_and_equals_single_process(results, config):
    """auto under ZeRO: rank 0 times the layers after step 1 (at ZeRO-3 outside the forward, from the
    structure's shape) and every rank takes its outcomes; results equal the single-process run."""
    entry = results[f"two:train/{config}"]
    assert entry["execution"] == ["dense", "sparse"]  # rank 0 chose 2.weight sparse (injected timing); all follow
    assert entry["builds"][1] == entry["updates"] + 1
    assert entry["masks_equal"] and entry["counters_equal"] and entry["max_weight_diff"] <= 1e-5


@pytest.mark.parametrize("config", [c for c in TRAIN_CONFIGS if "fanin" in c])
def test_constant_fan_in_under_zero_keeps_rows_equal_and_equals_single_process(results, config):
    """structure: fan_in with 2 ranks: rows cut between the ranks' partitions go through the
    distributed selection, whole rows are selected locally; every row holds the same count and the
    masks equal the single-process run's (also in test_masks_and_counters_equal_single_process)."""
    entry = results[f"two:train/{config}"]
    assert all(len(counts) == 1 for counts in entry["row_counts"].values()), entry["row_counts"]
    assert entry["masks_equal"] and entry["updates"] == 15


@pytest.mark.parametrize("config", [c for c in TRAIN_CONFIGS if "block" in c])
def test_block_structure_under_zero_keeps_whole_blocks_and_equals_single_process(results, config):
    """structure: block (4 x 4) with 2 ranks: block-rows cut between the ranks' partitions are
    scored from their element scores summed over ranks and decided by the rank holding their first
    element; every block is all or nothing and the masks and counters equal the single-process
    run's (also in test_masks_and_counters_equal_single_process)."""
    entry = results[f"two:train/{config}"]
    assert all(set(counts) <= {0, 16} for counts in entry["block_counts"].values()), entry["block_counts"]
    assert entry["masks_equal"] and entry["counters_equal"] and entry["updates"] == 15


@pytest.mark.parametrize("config", [c for c in TRAIN_CONFIGS if c.endswith("-nm")])
def test_n_m_under_zero_keeps_two_of_every_four_and_equals_single_process(results, config):
    """structure: n_m (2:4) with 2 ranks: every group of 4 consecutive weights holds exactly 2 active
    after training, and masks and counters equal the single-process run's (also in
    test_masks_and_counters_equal_single_process). At ZeRO-1/2 the partition boundary falls inside a
    group of 2.weight (element 538 of 1536), which goes through the distributed selection."""
    entry = results[f"two:train/{config}"]
    assert entry["group_counts"] == {"0.weight": [2], "2.weight": [2], "4.weight": [2]}
    assert entry["density"] == 0.5 and entry["violations"]["active_count"] == 0
    assert entry["masks_equal"] and entry["counters_equal"] and entry["updates"] == 15
    assert entry["cut_groups"] == (0 if config.startswith("3-") else 1)  # ZeRO-3 halves every weight: 288, 768, 64


def test_runner_at_zero3_runs_sparse_and_exports_the_gathered_model(results):
    entry = results["two:runner_export"]
    assert entry["execution"] == {"3.weight": "sparse"} and entry["exported"] == ["3"] and entry["csr"] == "CSRLinear"
    assert entry["nonzero"] == {"0.weight": 3600, "0.bias": 300, "3.weight": 9000, "3.bias": 300, "5.weight": 1200,
                                "5.bias": 4}  # gathered whole from the ZeRO-3 partitions, exactly 90% sparse
    assert entry["max_difference"] <= 1e-5


def test_partitioned_stages_hold_only_their_share(results):
    total = 48 * 12 + 32 * 48 + 4 * 32
    for stage in (1, 2, 3):
        held = sum(results[f"two:train/{stage}-dst_ee"]["local_numel"].values())
        assert held <= total // 2 + 64, (stage, held)  # ZeRO pads partitions a little
    assert sum(results["two:train/0-dst_ee"]["local_numel"].values()) == total  # ZeRO-0 replicates


def test_dst_ee_explores_more_than_rigl(results):
    assert results["two:train/2-dst_ee"]["exploration"] > results["two:train/2-rigl"]["exploration"] + 0.1


@pytest.mark.parametrize("key", ["two:select/stage2/world2", "two:select/stage3/world2", "three:select/stage2/world3",
                                 "three:select/stage3/world3"])
def test_distributed_selection_equals_single_process(results, key):
    assert results[key]["mismatches"] == 0
    assert results[key]["straddling_layers"] >= 1  # some layer is split between ranks


@pytest.mark.parametrize("case", ["1-dst_ee", "1-rigl", "2-dst_ee", "2-rigl", "3-dst_ee", "3-rigl", "2-admm",
                                  "3-admm"])
def test_resume_is_bitwise(results, case):
    assert results[f"two:resume/{case}"] == {"loaded": True, "resumed_step": 75, "masks_equal": True,
                                             "counters_equal": True, "weights_equal": True}


@pytest.mark.parametrize("key", ["one:reshard/2->1", "three:reshard/2->3", "launcher:reshard/1->2"])
def test_resume_at_another_world_size(results, key):
    assert results[key] == {"loaded_step": 60, "masks_at_load_equal": True, "masks_equal": True,
                            "counters_equal": True}


def test_runner_checkpoints_keep_two_verified_epochs_and_resume_elastically(results):
    """The training runner at ZeRO-2: 3 epochs on 2 ranks keep epochs 2 and 3, each with a manifest
    covering every rank's files; on 1 rank another sparsity is refused, a truncated shard of epoch 3
    makes it resume from epoch 2, with the ZeRO-2 optimizer state resharded, and say so."""
    saved = results["two:runner_checkpoints/saved"]
    assert saved["folders"] == ["epoch3", "epoch2"] and saved["world_size"] == 2 and saved["epoch"] == 3
    assert saved["shards"] == ["gsparse/optimizer/rank00000-of-00002.pt", "gsparse/optimizer/rank00001-of-00002.pt",
                               "gsparse/rank00000-of-00002.pt", "gsparse/rank00001-of-00002.pt"]
    assert saved["intact"] == [[], []]
    resumed = results["one:runner_checkpoints/resumed_on_1"]
    assert "it is of another run\n  sparsity: 0.75 in the checkpoint, 0.5 in this run" in resumed["mismatch"]
    [not_loaded] = resumed["not_loaded"]
    assert "epoch3 is not loaded: gsparse/rank00001-of-00002.pt: 64 bytes, the manifest records " in not_loaded
    assert not_loaded.endswith("(truncated or rewritten)")
    assert resumed["resumed_from"] == 2 and resumed["optimizer_state_restored"] is True
    assert resumed["optimizer_line"] == ["resuming on 1 process(es) a checkpoint saved by 2: weights, optimizer "
                                         "state, masks, schedule and RNG resharded"]
    assert resumed["log_epochs"] == [1, 2, 3, 4] and resumed["update_steps"] == [4, 8, 12, 16, 20]
    assert [name for name in resumed["folders"] if name.startswith("epoch")] == ["epoch3", "epoch4"]


ELASTIC_CASES = ("1-sgd", "2-adamw", "2-sgd-bf16", "3-sgd", "3-adamw")


@pytest.mark.parametrize("world", ["2->1", "2->3"])
@pytest.mark.parametrize("case", ELASTIC_CASES)
def test_zero_checkpoint_resumes_at_another_world_size_with_optimizer_state(results, world, case):
    """A ZeRO-1/2/3 checkpoint of the small ResNet (BatchNorm) with momentum SGD or AdamW, saved on 2
    ranks, loaded with plain ``engine.load_checkpoint`` on 1 or 3: fp32 weights, optimizer state
    (momentum, Adam moments and step), BatchNorm statistics and masks are bitwise those saved, read
    through DeepSpeed's own accessors; continuing 12 steps gives the uninterrupted run within fp32
    rounding of the different reduction (fp32 cases; bf16 rounds its reduction more coarsely)."""
    saved_files = results[f"two:elastic_saved/{case}"]["files"]
    assert saved_files == ["gsparse/optimizer/rank00000-of-00002.pt", "gsparse/optimizer/rank00001-of-00002.pt"]
    entry = results[f"{'one' if world == '2->1' else 'three'}:elastic/{world}/{case}"]
    assert entry["loaded"]
    at_load = entry["at_load"]
    for part in ("fp32", "optimizer", "buffers"):
        assert at_load[part] == {"equal": True, "max_abs": 0.0, "names": True}, part
    assert at_load["masks_equal"] and at_load["step"] == [20, 20]
    assert at_load["optimizer_steps"] == ([["20.0"], ["20.0"]] if "adamw" in case else [[], []])
    if "bf16" not in case:
        at_end = entry["at_end"]
        assert at_end["masks_equal"] and at_end["step"] == [32, 32]
        for part in ("fp32", "optimizer", "buffers"):
            assert at_end[part]["max_abs"] < 1e-5, (part, at_end[part])


@pytest.mark.parametrize("world", ["2->1", "2->3"])
def test_dropping_the_optimizer_state_would_be_visible(results, world):
    """The contrast that gives the test above its power: the same continuation without the AdamW
    state ends far from the uninterrupted run."""
    assert results[f"{'one' if world == '2->1' else 'three'}:elastic/{world}/2-adamw/without_optimizer_state"] > 1e-3


@pytest.mark.parametrize("config", ["2-dst_ee", "3-rigl"])
def test_two_node_launch_equals_single_process(results, config):
    entry = results[f"nodes:train/{config}"]
    assert entry["masks_equal"] and entry["counters_equal"] and entry["max_weight_diff"] <= 1e-6


@pytest.mark.parametrize("case, words", [("round_robin", "round_robin_gradients"), ("offload", "offload_optimizer"),
                                         ("bad_recipe", "recipe key 'sparsity'")])
def test_unsupported_options_are_refused_before_training(results, case, words):
    assert words in results[f"one:refusal/{case}"]


def test_overflow_skipped_step_is_no_step(results):
    """Real fp16 with DeepSpeed's loss scaler (on CPU too, see enable_cpu_fp16): two overflowing
    steps are skipped by DeepSpeed and are no steps for gsparse either."""
    optimizers = {0: "FP16_UnfusedOptimizer", 1: "DeepSpeedZeroOptimizer", 2: "DeepSpeedZeroOptimizer",
                  3: "DeepSpeedZeroOptimizer_Stage3"}
    for stage in (0, 1, 2, 3):
        entry = results[f"one:fp16/{stage}"]
        assert entry["dtype"] == "torch.float16" and entry["optimizer"] == optimizers[stage]
        assert entry["skipped"] == 2 and entry["sparse_steps"] == entry["engine_steps"] - 2 == 23
        # the update falls on the 10th real step, i.e. the 12th call, not on a skipped one
        assert entry["updates_after_step"][9:12] == [0, 0, 1]
        assert entry["low_precision_nonzero"] == 0


SEAM_CASES = [f"{stage}-{method}" for stage in (2, 3)
              for method in ("toy_dense_then_global", "toy_soft_threshold", "toy_learned_threshold")]


@pytest.mark.parametrize("case", SEAM_CASES)
def test_toy_methods_on_the_seams_equal_single_process(results, case):
    """tests/test_method_seams.py's toys (moving global budgets from an observed score; a learnable
    soft threshold in forward) at ZeRO-2/3 on 2 ranks: exact counts every step, same masks."""
    entry = results[f"two:seams/{case}"]
    violations = entry["violations"]
    assert violations["active_count"] == 0 and violations["budget"] == 0
    if "learned_threshold" in case:  # the mask records what forward keeps; weights are not zeroed
        assert violations["master_nonzero"] > 0
    else:
        assert violations["master_nonzero"] == violations["low_precision_nonzero"] == 0
    assert entry["masks_equal"] and entry["counters_equal"]
    assert entry["max_weight_diff"] <= 1e-6
    assert entry["updates"] == {"toy_dense_then_global": 4, "toy_soft_threshold": 10,
                                "toy_learned_threshold": 100}[case.split("-", 1)[1]]
    assert entry["local_numel"] <= (48 * 12 + 32 * 48 + 4 * 32) // 2 + 64  # sharded like the partitions
    if "threshold" in case:
        assert {"0.weight_threshold", "2.weight_threshold", "4.weight_threshold"} <= set(entry["weights_compared"])
        assert entry["layer_parameter_values"] == entry["reference_layer_parameter_values"]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_admm_rho_grows_once_per_round_with_several_groups(results, stage):
    entry = results[f"two:admm_groups/{stage}"]
    assert entry["groups"] >= 2
    assert entry["rho"] == pytest.approx(0.05 * 1.5 ** 3) and entry["rho"] == entry["reference_rho"]
    assert entry["masks_equal"] and entry["counters_equal"] and entry["max_weight_diff"] <= 1e-6


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_gather_full_state_on_every_rank_or_one(results, stage):
    assert results[f"two:gather/{stage}"] == {"masks_equal": True, "counters_equal": True, "shapes_equal": True,
                                              "rank0_only": True}


@pytest.mark.parametrize("stage", [2, 3])
def test_nonfinite_under_zero(results, stage):
    loss = results[f"two:nonfinite_loss/{stage}"]
    assert loss["ds_skipped_steps"] == 1 and loss["sparse_steps"] == 11  # DeepSpeed skips a NaN step
    assert loss["violations"] == {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
    scores = results[f"two:nonfinite_scores/{stage}"]
    # NaN in the last layer, on the last rank only, at step 10: every rank keeps that layer's mask
    # and updates the others, in step groups as in one process (updates at steps 10 and 20)
    assert scores["groups"] >= 2
    assert scores["skipped_updates"] == scores["reference_skipped_updates"] == 1
    assert scores["num_updates"] == scores["reference_num_updates"] == 2
    assert scores["masks_equal"] and scores["counters_equal"] and scores["max_weight_diff"] <= 1e-6
    assert scores["violations"] == {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}


METHOD_CASES = load_cases()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_method_case_equals_single_process_and_resumes_bitwise(results, case, stage):
    """Each method's cases (tests/method_cases/) at ZeRO 0-3 on 2 ranks against one process."""
    entry = results[f"two:method_cases/{case}/{stage}"]
    assert entry["violations"]["active_count"] == 0  # exact global counts every step
    if entry["enforces_mask"]:
        assert entry["violations"]["master_nonzero"] == entry["violations"]["low_precision_nonzero"] == 0
    assert entry["masks_equal"] and entry["counters_equal"]
    assert entry["max_weight_diff"] <= 1e-6
    if METHOD_CASES[case].resume_at:
        assert entry["resume_equal"]


@pytest.mark.parametrize("stage", [2, 3])
def test_small_resnet_with_batchnorm_equals_single_process(results, stage):
    """Digits on the small ResNet (BatchNorm, per-rank statistics; every rank sees the batch the
    single process sees, so the statistics match): exact sparsity every step, same masks."""
    entry = results[f"two:cnn/{stage}"]
    assert entry["violations"] == {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
    assert entry["sparse_layers"] == 10 and entry["updates"] == 8
    assert entry["masks_equal"] and entry["counters_equal"] and entry["max_weight_diff"] <= 1e-6
