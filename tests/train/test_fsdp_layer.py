"""The layer class a rank gives FSDP for a model named by hub id: its config from the HF cache (a fake cache under
a temp HF_HOME, no network), else the loaded model's own classes; and the class the accelerate config exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stjobs.train.args import TrainConfigError

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stjobs.train.models import build_tiny_model

    return build_tiny_model(["a small text", "another text here", "more words to learn"],
                            tmp_path_factory.mktemp("tiny") / "model", seed=1)


def fake_hub_cache(home: Path, repo: str, files: dict[str, object]) -> None:
    """huggingface_hub's cache layout: hub/models--org--name/{refs/main, snapshots/<rev>/...}."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REVISION)
    for name, content in files.items():
        path = root / "snapshots" / REVISION / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


@pytest.mark.parametrize("name,cached,expected", [
    # A plain Hugging Face model in the cache: its config.json decides.
    ("microsoft/mpnet-base", {"config.json": {"model_type": "mpnet"}}, "model type 'mpnet'"),
    ("org/bert-like", {"config.json": {"model_type": "bert"}}, "BertLayer"),
    # A SentenceTransformer repo: modules.json, the transformer's config in the module's folder.
    ("org/st-model", {"modules.json": [{"idx": 0, "name": "0", "path": "0_Transformer",
                                        "type": "sentence_transformers.models.Transformer"}],
                      "0_Transformer/config.json": {"model_type": "bert"}}, "BertLayer"),
    # Not in the cache at all: the loaded model's own config (a tiny BERT here).
    ("org/not-cached", {}, "BertLayer"),
], ids=["mpnet-cached", "bert-cached", "st-modules-cached", "not-cached"])
def test_hub_id_layer_class_from_the_cache_else_the_loaded_model(
        name: str, cached: dict[str, object], expected: str, tiny: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, hf_offline: None) -> None:
    from stjobs.train.models import cached_snapshot, fsdp_layer_class, load_model

    model = load_model(str(tiny), None)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if cached:
        fake_hub_cache(tmp_path / "hf", name, cached)
        assert cached_snapshot(name) == tmp_path / "hf" / "hub" / f"models--{name.replace('/', '--')}" / \
            "snapshots" / REVISION
    else:
        assert cached_snapshot(name) is None
    if expected.startswith("model type"):  # the cache says mpnet, the model loaded is a BERT: refused, named
        with pytest.raises(TrainConfigError, match=rf"{expected}: layer class 'MPNetLayer' is not in the model"):
            fsdp_layer_class(name, model, None)
    else:
        assert fsdp_layer_class(name, model, None) == expected


def test_repeated_layer_modules_when_no_table_knows_the_type(tiny: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            hf_offline: None) -> None:
    import torch

    from stjobs.train.models import fsdp_layer_class, load_model, repeated_layer_class

    class Block(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(width, width)

    class Own(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
            self.blocks = torch.nn.ModuleList([Block(16) for _ in range(3)])
            self.mixed = torch.nn.ModuleList([torch.nn.Linear(64, 64), Block(64)])  # two classes: not a stack

    assert repeated_layer_class(Own()) == "Block"
    assert repeated_layer_class(torch.nn.Linear(2, 2)) is None
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    assert fsdp_layer_class("org/own-arch", Own(), None) == "Block"
    model = load_model(str(tiny), None)
    assert repeated_layer_class(model) == "BertLayer"


@pytest.mark.parametrize("override,option,expected", [
    ("BertLayer", "FSDP_TRANSFORMER_CLS_TO_WRAP", "BertLayer"),
    ("MPNetLayer", "FSDP_TRANSFORMER_CLS_TO_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP: layer class 'MPNetLayer' is "
                                                   "not in the model"),
    ("MPNetLayer", "--fsdp-layer-class", "--fsdp-layer-class: layer class 'MPNetLayer' is not in the model"),
])
def test_the_class_the_accelerate_config_exported_is_checked(override: str, option: str, expected: str,
                                                             tiny: Path, hf_offline: None) -> None:
    from stjobs.train.models import fsdp_layer_class, load_model

    model = load_model(str(tiny), None)
    if expected.endswith("model"):
        with pytest.raises(TrainConfigError, match=expected):
            fsdp_layer_class(str(tiny), model, override, option)
    else:
        assert fsdp_layer_class(str(tiny), model, override, option) == expected


@pytest.mark.parametrize("exported", [None, "BertLayer"], ids=["torchrun", "accelerate-exported"])
def test_the_trainers_fsdp_plugin_is_the_accelerate_configs(exported: str | None, tiny: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            hf_offline: None) -> None:
    """What the Trainer hands accelerate (FSDP2, the layer class, full state dict) on either launcher."""
    from stjobs.launch import LAYER_CLASS_ENV
    from stjobs.train.args import parse_config
    from stjobs.train.models import load_model
    from stjobs.train.trainer import training_args

    if exported:
        monkeypatch.setenv(LAYER_CLASS_ENV, exported)
    else:
        monkeypatch.delenv(LAYER_CLASS_ENV, raising=False)
    config = parse_config(["--model", str(tiny), "--train-data", "t.jsonl", "--output-dir", str(tmp_path)],
                          {"STJOBS_STRATEGY": "fsdp"})
    args = training_args(config, str(tiny), load_model(str(tiny), None), 2, True, False)
    assert args.fsdp_plugin_args == {"fsdp_version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                     "transformer_cls_names_to_wrap": "BertLayer", "cpu_ram_efficient_loading": False,
                                     "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}
