"""The notes a plan carries that come from the spec itself, whatever the backend: the batch each step trains on
(and which losses see it as in-batch negatives), and what the GPU type decides (precision, the image's CUDA build).
Said when the job is rendered, before it queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stjobs import gpus
from stjobs.errors import SpecError
from stjobs.launch import option_value
from stjobs.spec import Strategy
from stjobs.train.args import DEFAULT_PER_DEVICE_BATCH_SIZE, TrainConfigError, batch_options, data_sources
from stjobs.train.losses import IN_BATCH_NEGATIVE_LOSSES, canonical_loss

if TYPE_CHECKING:
    from stjobs.spec import JobSpec


def gpu_note(spec: JobSpec) -> str | None:
    """What the spec's GPU type decides (stjobs.gpus), said before the job queues: the built-in training's
    precision and the CUDA build of torch its image gets. An explicit --precision the GPU cannot do is refused."""
    if not spec.gpus_per_node:
        return None
    capability = gpus.capability_of(spec.gpu_type)
    build = gpus.build_for(capability)
    if capability is None:
        known = f"gpu_type {spec.gpu_type} is not in stjobs' table" if spec.gpu_type else "no gpu_type"
        return (f"gpu: {known}: precision follows the device at run time (bf16 from compute capability 8.0, fp16 "
                f"below); the default image is torch's CUDA {build.cuda} build (Turing to Blackwell; a V100 needs "
                "gpu_type: v100)")
    said = f"gpu: {spec.gpu_type} is {gpus.describe(capability)}"
    if spec.entrypoint.module == "stjobs.train":
        requested = option_value(spec.entrypoint.args, "--precision") or "auto"
        try:
            precision = gpus.resolve_precision(requested, capability)
        except ValueError:
            raise SpecError("entrypoint.args", f"--precision {requested}", f"fp16, fp32 or auto for gpu_type "
                            f"{spec.gpu_type} ({gpus.describe(capability)}): bf16 is native from compute "
                            "capability 8.0, emulated and slow below it") from None
        said += f": training in {precision}" + (" (bf16 needs compute capability 8.0)" if precision == "fp16"
                                                 and requested == "auto" else "")
    return f"{said}; image torch build CUDA {build.cuda}"


def batch_note(spec: JobSpec) -> str | None:
    """For the built-in training: the batch per device and per step, stated once where the user reads the plan; a
    --global-batch-size that the devices cannot share evenly is refused here, before anything is written."""
    args = spec.entrypoint.args
    options = batch_options(args) if spec.entrypoint.module == "stjobs.train" else None
    if options is None:
        return None
    # DataParallel: one process, and the Trainer puts a per-device batch on each of the node's GPUs.
    devices = max(spec.gpus_per_node, 1) if spec.strategy is Strategy.dp else spec.world_size
    unit = "GPU(s), one process" if spec.strategy is Strategy.dp else "process(es)"
    if options.global_batch_size is not None:
        total = options.global_batch_size
        if total % devices:
            below, above = total // devices * devices, (total // devices + 1) * devices
            nearest = f"{below} or {above}" if below else str(above)
            raise SpecError("entrypoint.args", f"--global-batch-size {total}",
                            f"a multiple of the {devices} {unit.split(',')[0]} that share it (each takes an equal "
                            f"share), e.g. {nearest}")
        per = total // devices
    else:
        per = options.per_device_batch_size or DEFAULT_PER_DEVICE_BATCH_SIZE
        total = per * devices
    gather = in_batch_note(tuple(args), total) if spec.world_size > 1 and options.gather_across_devices else ""
    return f"batch: {per} per device x {devices} {unit} = {total} per step{gather}"


def in_batch_note(args: tuple[str, ...], total: int) -> str:
    """What the step's rows are to the loss, true for the losses the command names: only losses with in-batch
    negatives gather every process's rows (gather_across_devices). Without a loss in the command the data's kind
    decides it at run time, which a pure render does not read, so the note says which kinds that is."""
    try:
        sources = data_sources(args, "--train-data")
    except TrainConfigError:
        return ""  # the training reports the bad value itself, in one line
    default = canonical_loss(option_value(args, "--loss") or "")
    losses = [(source.name, source.loss or default) for source in sources] or [(None, default)]
    if any(loss is None for _, loss in losses):
        return (f"; losses with in-batch negatives (the default for pairs and triplets data) see all {total} "
                "rows; the others score each row alone")
    gathering = [(name, loss) for name, loss in losses if loss in IN_BATCH_NEGATIVE_LOSSES]
    if len(losses) == 1:
        return f"; {gathering[0][1]} sees all {total} rows as in-batch negatives" if gathering else ""
    # Several datasets: each step's batch comes from one of them, so a gathering loss sees that step's rows.
    return "".join(f"; {name}'s {loss} sees all {total} rows of its steps as in-batch negatives"
                   for name, loss in gathering)
