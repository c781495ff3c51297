"""The launch plan: the one argv and environment every backend runs on each node, computed once here.

Values that only exist when the job runs (the rendezvous host, the job id, the interpreter) are :class:`Ref`
placeholders over ``STJOBS_*`` variables. Each backend's node script sets those variables; the argv itself never
changes between backends, so a bug fixed here is fixed everywhere.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from stjobs import gpus
from stjobs.errors import SpecError
from stjobs.spec import Fabric, JobSpec, Launcher, Strategy

# The variables a node script must provide, and what they mean.
RUNTIME_VARS: dict[str, str] = {
    "STJOBS_PYTHON": "the Python interpreter (the spec's python, else python3)",
    "STJOBS_JOB_DIR": "the directory holding the rendered files (set by the node script itself)",
    "STJOBS_LOG_DIR": "where torchrun writes one log per rank",
    "STJOBS_RDZV_HOST": "the host every node meets at (multi-node only)",
    "STJOBS_RDZV_PORT": "the TCP port of the rendezvous (multi-node only)",
    "STJOBS_RDZV_ID": "an id shared by the nodes of one job run (multi-node only)",
    "STJOBS_NODE_RANK": "this node's index (accelerate multi-node only; torchrun c10d assigns ranks itself)",
}
_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}\"'`\\$]*))?\}")


@dataclass(frozen=True)
class Ref:
    """An argument built from run-time variables, e.g. ``${STJOBS_RDZV_HOST}:${STJOBS_RDZV_PORT}``.

    Only stjobs code builds these (never user input), so the text is safe inside double quotes in a shell.
    """

    template: str

    def __post_init__(self) -> None:
        leftover = _REF.sub("", self.template)
        if any(char in leftover for char in "\"`\\$"):
            raise ValueError(f"unsafe characters in Ref template {self.template!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(match.group(1) for match in _REF.finditer(self.template))

    def resolve(self, values: Mapping[str, str]) -> str:
        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in values and values[name] != "":
                return values[name]
            if default is not None:
                return default
            raise KeyError(name)

        return _REF.sub(one, self.template)


Arg = str | Ref


def shell_word(arg: Arg) -> str:
    """One shell word: user strings single-quoted by shlex, our run-time refs double-quoted so they expand."""
    return f'"{arg.template}"' if isinstance(arg, Ref) else shlex.quote(arg)


def shell_line(argv: tuple[Arg, ...]) -> str:
    return " ".join(shell_word(arg) for arg in argv)


@dataclass(frozen=True)
class LaunchPlan:
    argv: tuple[Arg, ...]
    env: tuple[tuple[str, str], ...]
    secrets: tuple[str, ...]
    # Extra files the argv refers to, relative to the job directory (e.g. the accelerate config).
    files: tuple[tuple[str, str], ...]
    required_vars: tuple[str, ...]
    # What the interpreter must be able to import for this argv to start (the launcher's and the entry module's
    # top-level packages): checked where the job is submitted and again on each node, before any rank starts.
    python_modules: tuple[str, ...] = ()


PYTHON = Ref("${STJOBS_PYTHON:-python3}")
LOG_DIR = Ref("${STJOBS_LOG_DIR}")
RDZV_ENDPOINT = Ref("${STJOBS_RDZV_HOST}:${STJOBS_RDZV_PORT}")
ACCELERATE_CONFIG = "accelerate.yaml"
PREEMPTION_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"


def build_launch(spec: JobSpec, rendezvous_from_env: bool = False) -> LaunchPlan:
    """``rendezvous_from_env``: the scheduler injects torchrun's own ``PET_*`` variables (Kubeflow's operators set
    PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR/PORT, PET_NPROC_PER_NODE and, for elastic jobs, PET_RDZV_*), so the
    argv leaves the job's shape out and torchrun reads it from there."""
    argv: list[Arg]
    files: tuple[tuple[str, str], ...] = ()
    if rendezvous_from_env and spec.launcher is Launcher.accelerate:
        # accelerate reads no PET_* variables; its rendezvous flags would have to be wired to them by hand.
        raise SpecError("launcher", "accelerate", "torchrun on Kubernetes (the operators configure torchrun)")
    if spec.launcher is Launcher.accelerate:
        argv, files = _accelerate_argv(spec)
    elif spec.strategy is Strategy.dp:
        # DataParallel: one plain process sees every GPU of the node; torchrun would add nothing but a rank 0.
        argv = [PYTHON, "-u", *_target(spec, module_flag="-m")]
    else:
        argv = _torchrun_argv(spec, rendezvous_from_env)
    required = sorted({name for arg in argv if isinstance(arg, Ref) for name in arg.names} - {"STJOBS_PYTHON"})
    return LaunchPlan(argv=tuple(argv), env=tuple(sorted(launch_env(spec).items())), secrets=spec.secrets,
                      files=files, required_vars=tuple(required), python_modules=python_modules(spec))


def python_modules(spec: JobSpec) -> tuple[str, ...]:
    """Top-level packages the node's interpreter must have: finding them costs no import (find_spec)."""
    modules = ["torch"]
    if spec.launcher is Launcher.accelerate:
        modules.append("accelerate")
    if spec.entrypoint.module is not None:
        modules.append(spec.entrypoint.module.split(".")[0])
    return tuple(dict.fromkeys(modules))


def launch_env(spec: JobSpec) -> dict[str, str]:
    env = {
        # One rank per core slice: torch's default (all cores per rank) oversubscribes and collapsed our
        # CPU throughput about ten-fold with two ranks.
        "OMP_NUM_THREADS": str(spec.threads_per_proc),
        "MKL_NUM_THREADS": str(spec.threads_per_proc),
        # Fast tokenizers fork-warn and can deadlock once the DataLoader forks.
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        # Console lines carry the global rank, so one combined log can be split per rank later.
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}]:",
        "STJOBS_JOB_NAME": spec.name,
        "STJOBS_STRATEGY": spec.strategy.value,
        "STJOBS_OUTPUT_DIR": spec.output_dir,
        # The CPUs each node's task was given: every rank checks its affinity mask holds them (a site whose srun
        # did not get --cpus-per-task binds each task to one CPU, and the ranks crawl).
        "STJOBS_CPUS_PER_TASK": str(spec.cpus_per_task),
    }
    if spec.max_restarts > 0 or spec.elastic:
        # torchrun hands every round's workers the one TCPStore of its first rendezvous, with no per-attempt
        # prefix: a restarted rank can read the address a killed rank published and fail to connect (seen in our
        # fault tests: gloo "connectFullMesh failed ... Connection refused"). Opting out gives each round a new store.
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if spec.launcher is Launcher.accelerate:
        # accelerate starts torchrun's agent in-process with torchrun's own parser, whose --signals-to-handle
        # defaults to this variable: without it USR2 kills the launcher (exit 140) and leaves the ranks running.
        env["PET_SIGNALS_TO_HANDLE"] = PREEMPTION_SIGNALS
    env.update(nccl_env(spec))
    env.update(spec.env)  # the user's explicit values win (e.g. a different OMP_NUM_THREADS)
    return env


def nccl_env(spec: JobSpec) -> dict[str, str]:
    """Communication presets. The timeout reaches the training as STJOBS_PG_TIMEOUT_S (the Trainer's
    ddp_timeout): a hung collective then fails the job instead of holding the allocation."""
    env = {"STJOBS_PG_TIMEOUT_S": str(spec.nccl.timeout_s)}
    if spec.gpus_per_node:
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    if spec.nccl.debug:
        env.update({"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET", "TORCH_DISTRIBUTED_DEBUG": "DETAIL"})
    if spec.nccl.fabric is Fabric.infiniband:
        env.update({"NCCL_IB_DISABLE": "0", "NCCL_SOCKET_IFNAME": "^lo,docker0"})
    elif spec.nccl.fabric is Fabric.efa:
        # AWS EFA through the aws-ofi-nccl plugin; fork safety because DataLoader workers fork.
        env.update({"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "FI_EFA_FORK_SAFE": "1",
                    "NCCL_SOCKET_IFNAME": "^lo,docker0"})
    return env


def _target(spec: JobSpec, module_flag: str) -> tuple[str, ...]:
    entry = spec.entrypoint
    head = (module_flag, entry.module) if entry.module is not None else (entry.script or "",)
    return (*head, *entry.args)


def _torchrun_argv(spec: JobSpec, rendezvous_from_env: bool = False) -> list[Arg]:
    argv: list[Arg] = [PYTHON, "-m", "torch.distributed.run"]
    if rendezvous_from_env:
        if not spec.elastic:  # elastic: PET_MAX_RESTARTS comes from the operator's elasticPolicy
            argv += ["--max-restarts", str(spec.max_restarts)]
    elif spec.nodes == 1:
        # --standalone picks a free port itself: single-node jobs never collide on a fixed one.
        argv += ["--standalone", "--nnodes", "1"]
    else:
        # c10d rendezvous; no --node-rank: c10d ignores it and assigns ranks in arrival order.
        argv += ["--nnodes", str(spec.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", RDZV_ENDPOINT,
                 "--rdzv-id", Ref("${STJOBS_RDZV_ID}"), "--rdzv-conf", f"join_timeout={spec.rendezvous.timeout_s}"]
    if not rendezvous_from_env:
        argv += ["--nproc-per-node", str(spec.procs_per_node), "--max-restarts", str(spec.max_restarts)]
    # SIGUSR2 is the preemption notice (SLURM --signal; NCCL owns USR1): torchrun forwards the signals it
    # handles to every worker, which checkpoints and exits. Without this, USR2 kills the agent and orphans them.
    argv += ["--signals-to-handle", PREEMPTION_SIGNALS]
    # Every rank's output goes to its own file and, prefixed with its rank, to the node's console.
    argv += ["--log-dir", LOG_DIR, "--redirects", "3", "--tee", "3"]
    argv += list(_target(spec, module_flag="--module"))
    return argv


def _accelerate_argv(spec: JobSpec) -> tuple[list[Arg], tuple[tuple[str, str], ...]]:
    argv: list[Arg] = [PYTHON, "-m", "accelerate.commands.launch",
                       "--config_file", Ref("${STJOBS_JOB_DIR}/" + ACCELERATE_CONFIG),
                       # Not a config-file key in accelerate: only the command line takes it.
                       "--max_restarts", str(spec.max_restarts)]
    if spec.nodes > 1:
        argv += ["--machine_rank", Ref("${STJOBS_NODE_RANK}"), "--main_process_ip", Ref("${STJOBS_RDZV_HOST}"),
                 "--main_process_port", Ref("${STJOBS_RDZV_PORT}")]
    argv += list(_target(spec, module_flag="-m"))
    return argv, ((ACCELERATE_CONFIG, accelerate_config(spec)),)


def accelerate_config(spec: JobSpec) -> str:
    """accelerate's config file, built as data and dumped, so it is valid YAML by construction."""
    # accelerate's own CPU mode (use_cpu / MULTI_CPU) starts ONE process unless mpirun is configured: our trial
    # ran a 2-process spec as world size 1 without a word. MULTI_GPU goes through torchrun's launcher instead,
    # and on a machine without GPUs the workers then pick gloo themselves (the start event shows it).
    distributed = {Strategy.single: "NO", Strategy.fsdp: "FSDP"}.get(spec.strategy, "MULTI_GPU")
    config: dict[str, object] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": distributed,
        "num_machines": spec.nodes,
        "num_processes": spec.world_size,
        "machine_rank": 0,
        "mixed_precision": accelerate_precision(spec),
        "use_cpu": False,
        "same_network": True,
        "rdzv_backend": "c10d" if spec.nodes > 1 else "static",
        "main_training_function": "main",
        "debug": False,
    }
    if spec.strategy is Strategy.fsdp:
        # No FSDP1 keys (sync_module_states, use_orig_params): FSDP2 always trains the original parameters and
        # needs no broadcast from rank 0; accelerate would warn and drop them.
        layer, _how = fsdp_layer_at_render(spec)
        config["fsdp_config"] = {f"fsdp_{key}": value for key, value in fsdp_settings(layer).items()}
    import yaml  # accelerate jobs only: the import is a sixth of a render's whole-process time

    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


# FSDP as both launchers run it, from one set of values so they cannot drift: torchrun through the Trainer's
# fsdp_config (stjobs.train.trainer), accelerate through its config file. FSDP2: transformers 5's Trainer builds
# version 2 unless told otherwise, while `accelerate launch` defaults to version 1 when its config says nothing.
FSDP_VERSION = 2
FSDP_STATE_DICT = "FULL_STATE_DICT"  # the final save gathers full weights: an ordinary model directory
FSDP_WRAP = "TRANSFORMER_BASED_WRAP"
# The repeated block FSDP wraps as one unit, by the model_type in a Hugging Face config.json.
FSDP_LAYER_CLASSES = {
    "bert": "BertLayer", "mpnet": "MPNetLayer", "xlm-roberta": "XLMRobertaLayer", "roberta": "RobertaLayer",
    "camembert": "CamembertLayer", "distilbert": "TransformerBlock", "electra": "ElectraLayer",
    "deberta-v2": "DebertaV2Layer", "albert": "AlbertLayer", "modernbert": "ModernBertEncoderLayer",
    "t5": "T5Block", "mt5": "T5Block", "qwen2": "Qwen2DecoderLayer", "qwen3": "Qwen3DecoderLayer",
    "llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer", "gemma": "GemmaDecoderLayer",
    "gemma2": "Gemma2DecoderLayer", "gemma3_text": "Gemma3DecoderLayer",
}
# Models whose architecture the render knows by name alone (it reads no files, so the same spec always renders
# the same bytes). Any other --model is resolved on each rank; the rank also checks a name from here against the
# loaded model, so a wrong row fails in one line instead of wrapping nothing.
KNOWN_MODEL_TYPES = {
    "tiny-bert": "bert", "all-MiniLM-L6-v2": "bert", "sentence-transformers/all-MiniLM-L6-v2": "bert",
    "sentence-transformers/all-MiniLM-L12-v2": "bert", "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2":
    "bert", "google-bert/bert-base-uncased": "bert", "bert-base-uncased": "bert", "BAAI/bge-small-en-v1.5": "bert",
    "BAAI/bge-base-en-v1.5": "bert", "intfloat/e5-base-v2": "bert", "microsoft/mpnet-base": "mpnet",
    "sentence-transformers/all-mpnet-base-v2": "mpnet", "all-mpnet-base-v2": "mpnet",
    "FacebookAI/roberta-base": "roberta", "roberta-base": "roberta", "FacebookAI/xlm-roberta-base": "xlm-roberta",
    "distilbert/distilbert-base-uncased": "distilbert", "answerdotai/ModernBERT-base": "modernbert",
}
# accelerate's launcher exports the config's layer class under this name; the rank takes it as its override.
LAYER_CLASS_ENV = "FSDP_TRANSFORMER_CLS_TO_WRAP"


def fsdp_settings(layer: str | None) -> dict[str, object]:
    """FSDP's settings in the Trainer's fsdp_config spelling; the accelerate config is the same with ``fsdp_``
    prefixed (accelerate's launcher turns each into an FSDP_* variable its plugin reads)."""
    settings: dict[str, object] = {"version": FSDP_VERSION, "reshard_after_forward": True,  # = FULL_SHARD
                                   "auto_wrap_policy": FSDP_WRAP, "state_dict_type": FSDP_STATE_DICT,
                                   # accelerate's launcher defaults this to true, and transformers then loads
                                   # every rank but 0 on the meta device, to be filled by a broadcast the
                                   # Trainer's plugin (false) never does. Every rank loads the model itself.
                                   "cpu_ram_efficient_loading": False}
    if layer is not None:
        settings["transformer_layer_cls_to_wrap"] = layer
    return settings


def option_value(args: tuple[str, ...], flag: str) -> str | None:
    """The value of ``flag`` among an entrypoint's arguments (the last one wins, as argparse)."""
    found = None
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            found = args[index + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def fsdp_layer_at_render(spec: JobSpec) -> tuple[str | None, str]:
    """The layer class FSDP wraps, when the spec alone says it, and where that came from (or why not)."""
    builtin = spec.entrypoint.module == "stjobs.train"
    args = spec.entrypoint.args
    if builtin and option_value(args, "--fsdp-layer-class"):
        return option_value(args, "--fsdp-layer-class"), "--fsdp-layer-class"
    if spec.env.get(LAYER_CLASS_ENV):
        return spec.env[LAYER_CLASS_ENV], f"env {LAYER_CLASS_ENV}"
    model = option_value(args, "--model") if builtin else None
    if model in KNOWN_MODEL_TYPES:
        return FSDP_LAYER_CLASSES[KNOWN_MODEL_TYPES[model]], f"--model {model}"
    if builtin:
        return None, (f"the layer class of --model {model} is not known at render: each rank resolves it (the "
                      "model's config.json, locally or in the HF cache, else its repeated layer module); "
                      "--fsdp-layer-class names it")
    return None, ("a custom entrypoint names no layer class: unless the script's own FSDP plugin names one, "
                  "accelerate wraps by the model's _no_split_modules (none for a SentenceTransformer: one flat "
                  f"FSDP unit); set env {LAYER_CLASS_ENV}, e.g. BertLayer")


def accelerate_precision(spec: JobSpec) -> str:
    """accelerate's mixed_precision, from the same rule the training applies (stjobs.gpus): the launcher exports it
    as ACCELERATE_MIXED_PRECISION, which the Trainer keeps when its own choice is fp32, so "no" unless the render
    knows the GPU. An unknown GPU type: the rank decides (its bf16/fp16 flags override the variable)."""
    capability = gpus.capability_of(spec.gpu_type) if spec.gpus_per_node else None
    if capability is None:
        return "no"
    builtin = spec.entrypoint.module == "stjobs.train"
    requested = (option_value(spec.entrypoint.args, "--precision") or "auto") if builtin else "auto"
    try:
        precision = gpus.resolve_precision(requested, capability)
    except ValueError:
        return "no"  # bf16 on a pre-Ampere type: stjobs.notes.gpu_note refuses the spec in one line right after
    return {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")


def fsdp_note(spec: JobSpec) -> str | None:
    """What FSDP will do, said in the plan: version, sharding, the layer class (or who decides it), precision."""
    if spec.strategy is not Strategy.fsdp:
        return None
    layer, how = fsdp_layer_at_render(spec)
    via = "accelerate's config" if spec.launcher is Launcher.accelerate else "the Trainer's fsdp_config"
    said = f"fsdp: FSDP{FSDP_VERSION} through {via}, full sharding, {FSDP_STATE_DICT} for the final save; "
    said += f"one unit per {layer} ({how})" if layer else how
    if spec.launcher is Launcher.accelerate:
        said += f"; mixed_precision {accelerate_precision(spec)}"
    return said
