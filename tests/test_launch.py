"""The launch plan: the torchrun / accelerate argv and env every backend runs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from stjobs.config import validate_spec
from stjobs.launch import Ref, build_launch, shell_line, shell_word
from stjobs.spec import JobSpec


def spec(**fields: Any) -> JobSpec:
    return validate_spec({"name": "job", **fields})


def argv(**fields: Any) -> list[str]:
    plan = build_launch(spec(**fields))
    return [arg.template if isinstance(arg, Ref) else arg for arg in plan.argv]


def test_single_node_is_standalone_without_fixed_port() -> None:
    words = argv(procs_per_node=2)
    assert words[:3] == ["${STJOBS_PYTHON:-python3}", "-m", "torch.distributed.run"]
    assert "--standalone" in words
    assert not any(word.startswith("--rdzv") or word in ("--master-port", "--node-rank") for word in words)
    assert words[words.index("--nproc-per-node") + 1] == "2"
    assert words[-2:] == ["--module", "stjobs.train"]


def test_multi_node_uses_c10d_and_never_node_rank() -> None:
    words = argv(nodes=4, gpus_per_node=8, rendezvous={"timeout_s": 120})
    assert "--standalone" not in words
    assert "--node-rank" not in words and "--node_rank" not in words
    assert words[words.index("--rdzv-backend") + 1] == "c10d"
    assert words[words.index("--rdzv-endpoint") + 1] == "${STJOBS_RDZV_HOST}:${STJOBS_RDZV_PORT}"
    assert words[words.index("--rdzv-id") + 1] == "${STJOBS_RDZV_ID}"
    assert words[words.index("--nnodes") + 1] == "4"
    assert words[words.index("--nproc-per-node") + 1] == "8"
    assert words[words.index("--rdzv-conf") + 1] == "join_timeout=120"


def test_required_vars_follow_the_argv() -> None:
    assert build_launch(spec()).required_vars == ("STJOBS_LOG_DIR",)
    assert build_launch(spec(nodes=2)).required_vars == (
        "STJOBS_LOG_DIR", "STJOBS_RDZV_HOST", "STJOBS_RDZV_ID", "STJOBS_RDZV_PORT")


@pytest.mark.parametrize("cpus,procs,threads", [(None, 2, 1), (8, 2, 4), (7, 2, 3), (64, 8, 8)])
def test_omp_threads_split_the_node(cpus: int | None, procs: int, threads: int) -> None:
    fields: dict[str, Any] = {"procs_per_node": procs}
    if cpus is not None:
        fields["cpus_per_task"] = cpus
    env = dict(build_launch(spec(**fields)).env)
    assert env["OMP_NUM_THREADS"] == str(threads)


def test_user_env_wins_and_job_env_is_set() -> None:
    env = dict(build_launch(spec(env={"OMP_NUM_THREADS": "3", "HF_HUB_OFFLINE": 1}, strategy="fsdp")).env)
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["STJOBS_STRATEGY"] == "fsdp"
    assert env["STJOBS_OUTPUT_DIR"] == "outputs/job"


def test_script_entrypoint_and_args_are_kept_verbatim() -> None:
    words = argv(entrypoint={"script": "my train.py", "args": ["--name", "a b; rm -rf /"]})
    assert words[-3:] == ["my train.py", "--name", "a b; rm -rf /"]
    line = shell_line(build_launch(spec(entrypoint={"script": "my train.py", "args": ["a b; rm -rf /"]})).argv)
    assert "'my train.py' 'a b; rm -rf /'" in line


def test_dp_is_one_plain_process() -> None:
    words = argv(strategy="dp", gpus_per_node=4)
    assert words == ["${STJOBS_PYTHON:-python3}", "-u", "-m", "stjobs.train"]


def test_accelerate_argv_and_config() -> None:
    plan = build_launch(spec(launcher="accelerate", nodes=2, procs_per_node=2))
    words = [arg.template if isinstance(arg, Ref) else arg for arg in plan.argv]
    assert words[:3] == ["${STJOBS_PYTHON:-python3}", "-m", "accelerate.commands.launch"]
    assert words[words.index("--config_file") + 1] == "${STJOBS_JOB_DIR}/accelerate.yaml"
    assert words[words.index("--machine_rank") + 1] == "${STJOBS_NODE_RANK}"
    (name, text), = plan.files
    config = yaml.safe_load(text)
    assert name == "accelerate.yaml"
    # accelerate's CPU mode would start a single process: MULTI_GPU runs torchrun's launcher, gloo on CPU.
    assert config["distributed_type"] == "MULTI_GPU" and config["use_cpu"] is False
    assert words[words.index("--max_restarts") + 1] == "0"
    assert "max_restarts" not in config  # accelerate refuses unknown config keys
    assert (config["num_machines"], config["num_processes"], config["rdzv_backend"]) == (2, 4, "c10d")


def test_accelerate_fsdp_is_fsdp2_and_never_syncs_module_states() -> None:
    """FSDP2 (as the Trainer runs it) fully sharded, full state dict; FSDP1's module-state broadcast from rank 0,
    which failed on CPU, is no FSDP2 setting at all. The layer class and precision: tests/test_launch_fsdp.py."""
    for gpus in (0, 2):
        fields = {"gpus_per_node": gpus} if gpus else {"procs_per_node": 2}
        (_, text), = build_launch(spec(launcher="accelerate", strategy="fsdp", **fields)).files
        config = yaml.safe_load(text)
        assert config["distributed_type"] == "FSDP"
        assert config["fsdp_config"]["fsdp_version"] == 2
        assert config["fsdp_config"]["fsdp_reshard_after_forward"] is True  # FULL_SHARD in FSDP1's words
        assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert "fsdp_sync_module_states" not in config["fsdp_config"]


def test_ref_quoting_and_resolution() -> None:
    ref = Ref("${STJOBS_RDZV_HOST}:${STJOBS_RDZV_PORT}")
    assert shell_word(ref) == '"${STJOBS_RDZV_HOST}:${STJOBS_RDZV_PORT}"'
    assert ref.resolve({"STJOBS_RDZV_HOST": "n1", "STJOBS_RDZV_PORT": "29500"}) == "n1:29500"
    assert Ref("${STJOBS_PYTHON:-python3}").resolve({}) == "python3"
    with pytest.raises(KeyError):
        ref.resolve({})
    with pytest.raises(ValueError):
        Ref('${A}"; rm -rf /')
