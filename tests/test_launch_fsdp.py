"""FSDP's render-time decisions: the layer class and mixed precision the accelerate config names, the plan note,
and that the accelerate config and the Trainer's fsdp_config carry the same FSDP settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stjobs.config import validate_spec
from stjobs.launch import build_launch, fsdp_note, fsdp_settings
from stjobs.spec import JobSpec

V100x4 = {"gpus_per_node": 4, "gpu_type": "v100"}
H100x8 = {"gpus_per_node": 8, "gpu_type": "h100"}


def spec(model_args: list[str] | None = None, module: str = "stjobs.train", **fields: Any) -> JobSpec:
    return validate_spec({"name": "job", "launcher": "accelerate", "strategy": "fsdp",
                          "entrypoint": {"module": module, "args": model_args or []}, **fields})


def accelerate_yaml(job: JobSpec) -> dict[str, Any]:
    (_, text), = build_launch(job).files
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@pytest.mark.parametrize("args,module,fields,layer,precision,note", [
    # The docs' scenario: mpnet-base on 4 x V100: its layer class by name, fp16 (bf16 is emulated on Volta).
    (["--model", "microsoft/mpnet-base"], "stjobs.train", V100x4, "MPNetLayer", "fp16",
     "(--model microsoft/mpnet-base)"),
    (["--model", "sentence-transformers/all-MiniLM-L6-v2"], "stjobs.train", H100x8, "BertLayer", "bf16", "BertLayer"),
    (["--model", "tiny-bert"], "stjobs.train", {"procs_per_node": 2}, "BertLayer", "no", "BertLayer"),
    (["--model", "org/own", "--fsdp-layer-class", "OwnLayer"], "stjobs.train", H100x8, "OwnLayer", "bf16",
     "(--fsdp-layer-class)"),
    # Not known by name: the rank resolves it (the Trainer's own plugin names it), and the plan says so.
    (["--model", "org/own"], "stjobs.train", H100x8, None, "bf16", "each rank resolves it"),
    (["--model", "org/own", "--precision", "fp32"], "stjobs.train", H100x8, None, "no", "each rank resolves it"),
    (["--model", "org/own", "--precision=fp16"], "stjobs.train", H100x8, None, "fp16", "each rank resolves it"),
    # A GPU type stjobs does not know, or none: the rank picks the precision (its flags override the variable).
    (["--model", "microsoft/mpnet-base"], "stjobs.train", {"gpus_per_node": 2}, "MPNetLayer", "no", "MPNetLayer"),
    # A custom entrypoint: only the spec's env can name the class; without it the plan warns of one flat unit.
    ([], "mypkg.train", {**V100x4, "env": {"FSDP_TRANSFORMER_CLS_TO_WRAP": "MyLayer"}}, "MyLayer", "fp16",
     "(env FSDP_TRANSFORMER_CLS_TO_WRAP)"),
    (["--model", "microsoft/mpnet-base"], "mypkg.train", V100x4, None, "fp16", "one flat FSDP unit"),
], ids=["mpnet-v100", "minilm-h100", "tiny-cpu", "option", "unknown", "unknown-fp32", "unknown-fp16",
        "untyped-gpu", "custom-env", "custom-bare"])
def test_accelerate_config_layer_class_and_precision(args: list[str], module: str, fields: dict[str, Any],
                                                     layer: str | None, precision: str, note: str) -> None:
    job = spec(args, module, **fields)
    config = accelerate_yaml(job)
    assert config["fsdp_config"].get("fsdp_transformer_layer_cls_to_wrap") == layer
    assert config["mixed_precision"] == precision
    said = fsdp_note(job)
    assert said is not None and note in said and said.startswith("fsdp: FSDP2 through accelerate's config")


@pytest.mark.parametrize("strategy,fields,precision", [
    ("ddp", V100x4, "fp16"), ("ddp", {"gpus_per_node": 4, "gpu_type": "a100"}, "bf16"),
    ("ddp", {"procs_per_node": 2}, "no"), ("single", {"gpus_per_node": 1, "gpu_type": "t4"}, "fp16"),
])
def test_accelerate_precision_follows_the_gpu_type_for_every_strategy(strategy: str, fields: dict[str, Any],
                                                                      precision: str) -> None:
    config = accelerate_yaml(spec(["--model", "tiny-bert"], strategy=strategy, **fields))
    assert config["mixed_precision"] == precision and "fsdp_config" not in config


def test_torchrun_fsdp_note_names_the_trainer_path() -> None:
    job = validate_spec({"name": "job", "strategy": "fsdp", **V100x4,
                         "entrypoint": {"module": "stjobs.train", "args": ["--model", "microsoft/mpnet-base"]}})
    assert fsdp_note(job) == ("fsdp: FSDP2 through the Trainer's fsdp_config, full sharding, FULL_STATE_DICT for "
                              "the final save; one unit per MPNetLayer (--model microsoft/mpnet-base)")
    assert fsdp_note(validate_spec({"name": "job", "strategy": "ddp"})) is None


@pytest.mark.parametrize("layer", ["MPNetLayer", None])
def test_both_launchers_carry_the_same_fsdp_settings(layer: str | None) -> None:
    """The accelerate config is the Trainer's fsdp_config (stjobs.train.trainer) with fsdp_ prefixed."""
    job = spec(["--model", "microsoft/mpnet-base" if layer else "org/own"], **V100x4)
    written = accelerate_yaml(job)["fsdp_config"]
    assert {key.removeprefix("fsdp_"): value for key, value in written.items()} == fsdp_settings(layer)
    assert fsdp_settings(layer)["version"] == 2 and fsdp_settings(layer)["state_dict_type"] == "FULL_STATE_DICT"


def test_accelerates_own_launcher_reads_fsdp2_and_the_layer_class(tmp_path: Path) -> None:
    """accelerate's launcher, as installed, turns the config into the FSDP_* variables its plugin reads: version 2
    (its default would be 1), the layer class, no meta-device loading, and the precision."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    (_, text), = build_launch(spec(["--model", "microsoft/mpnet-base"], **V100x4)).files
    (tmp_path / "accelerate.yaml").write_text(text)
    args = launch_command_parser().parse_args(["--config_file", str(tmp_path / "accelerate.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert {name: env[name] for name in ("FSDP_VERSION", "FSDP_TRANSFORMER_CLS_TO_WRAP", "FSDP_AUTO_WRAP_POLICY",
                                         "FSDP_STATE_DICT_TYPE", "FSDP_RESHARD_AFTER_FORWARD",
                                         "FSDP_CPU_RAM_EFFICIENT_LOADING", "ACCELERATE_MIXED_PRECISION")} == {
        "FSDP_VERSION": "2", "FSDP_TRANSFORMER_CLS_TO_WRAP": "MPNetLayer",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
        "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "false",
        "ACCELERATE_MIXED_PRECISION": "fp16"}
