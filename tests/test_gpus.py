"""Every GPU decision as a table: what a GPU type is, which torch build carries kernels for it, which base image and
precision it gets, and the build step that proves the installed torch has its kernels. No GPU runs here: the
decisions are made from what the spec says, and the generated check is run against stand-in torch modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stjobs
from stjobs import gpus
from stjobs.errors import SpecError
from stjobs.images.renderer import arch_check
from tests.conftest import EXAMPLES

CU126, CU130 = gpus.BUILDS[1], gpus.BUILDS[0]


@pytest.mark.parametrize("gpu_type,capability", [
    ("v100", (7, 0)), ("tesla-v100-sxm2", (7, 0)), ("V100S", (7, 0)), ("nvidia_v100", (7, 0)),
    ("t4", (7, 5)), ("a100", (8, 0)), ("a100-80gb", (8, 0)), ("a100_sxm4_40gb", (8, 0)),
    ("a10", (8, 6)), ("a10g", (8, 6)), ("a40", (8, 6)), ("l4", (8, 9)), ("l40s", (8, 9)),
    ("h100", (9, 0)), ("h100_nvl", (9, 0)), ("h200", (9, 0)), ("gh200", (9, 0)),
    ("b200", (10, 0)), ("gb300", (10, 3)), ("rtxpro6000", (12, 0)), ("p100", (6, 0)),
    # Not taken for something else: no guess for a model the table does not know.
    ("a1000", None), ("mi250x", None), ("k80", None), ("gpu", None), (None, None),
])
def test_what_a_gpu_type_is(gpu_type: str | None, capability: gpus.Capability | None) -> None:
    assert gpus.capability_of(gpu_type) == capability


@pytest.mark.parametrize("gpu_type,architecture,precision,cuda", [
    ("p100", "Pascal", "fp16", "12.6"),
    ("v100", "Volta", "fp16", "12.6"),  # CUDA 13 builds carry no sm_70 kernels
    ("t4", "Turing", "fp16", "13.0"),  # is_bf16_supported() says True here: emulated
    ("a100", "Ampere", "bf16", "13.0"),
    ("a10", "Ampere", "bf16", "13.0"),
    ("l40s", "Ada", "bf16", "13.0"),  # served by the sm_86 kernels
    ("h100", "Hopper", "bf16", "13.0"),
    ("b200", "Blackwell", "bf16", "13.0"),
    ("gb300", "Blackwell", "bf16", "13.0"),  # 10.3: sm_100 kernels
    ("rtxpro6000", "Blackwell", "bf16", "13.0"),
])
def test_the_gpu_type_decides_architecture_precision_and_build(gpu_type: str, architecture: str, precision: str,
                                                              cuda: str) -> None:
    capability = gpus.capability_of(gpu_type)
    assert capability is not None
    build = gpus.build_for(capability)
    assert (gpus.architecture(capability), gpus.precision_for(capability), build.cuda) == (
        architecture, precision, cuda)
    assert build.serves(capability)
    assert gpus.base_image("2.13.0", build) == f"pytorch/pytorch:2.13.0-cuda{cuda}-cudnn9-runtime"


def test_without_a_gpu_type_the_default_build_covers_todays_clusters() -> None:
    assert gpus.build_for(None) is gpus.DEFAULT_BUILD
    served = {model for model, capability in gpus.CAPABILITIES.items() if gpus.DEFAULT_BUILD.serves(capability)}
    assert {"t4", "a100", "a10g", "l40s", "h100", "h200", "b200"} <= served
    assert {"v100", "p100"}.isdisjoint(served)  # these need gpu_type to get the 12.6 build


@pytest.mark.parametrize("build,capability,serves", [
    (CU126, (7, 0), True), (CU126, (9, 0), True), (CU126, (8, 9), True), (CU126, (10, 0), False),
    (CU126, (12, 0), False), (CU130, (7, 0), False), (CU130, (7, 5), True), (CU130, (8, 9), True),
    (CU130, (10, 3), True), (CU130, (12, 1), True), (CU130, (11, 0), False), (CU130, (6, 0), False),
])
def test_which_build_serves_which_capability(build: gpus.TorchBuild, capability: gpus.Capability,
                                             serves: bool) -> None:
    assert build.serves(capability) is serves


@pytest.mark.parametrize("build", gpus.BUILDS, ids=lambda build: f"cuda{build.cuda}")
@pytest.mark.parametrize("model", sorted(gpus.CAPABILITIES))
def test_the_build_steps_arch_flags_agree_with_the_table(build: gpus.TorchBuild, model: str) -> None:
    """The flags the image build accepts for a GPU are found in a build's flags exactly when the table says the
    build serves it: the build check and the base choice cannot disagree."""
    capability = gpus.CAPABILITIES[model]
    assert bool(set(build.arch_flags) & set(gpus.arch_flags_serving(capability))) is build.serves(capability)


@pytest.mark.parametrize("requested,capability,result", [
    ("auto", (7, 0), "fp16"), ("auto", (7, 5), "fp16"), ("auto", (8, 0), "bf16"), ("auto", (9, 0), "bf16"),
    ("auto", None, "fp32"), ("fp16", (7, 0), "fp16"), ("fp32", (7, 0), "fp32"), ("bf16", (9, 0), "bf16"),
    ("fp16", (9, 0), "fp16"), ("fp32", None, "fp32"),
    ("bf16", (7, 0), "got bf16 on a Volta 7.0 GPU"), ("bf16", (7, 5), "got bf16 on a Turing 7.5 GPU"),
    ("bf16", None, "without a GPU"), ("fp16", None, "without a GPU"),
])
def test_precision(requested: str, capability: gpus.Capability | None, result: str) -> None:
    if result in ("fp16", "bf16", "fp32"):
        assert gpus.resolve_precision(requested, capability) == result
    else:
        with pytest.raises(ValueError, match=result):
            gpus.resolve_precision(requested, capability)


def gpu_spec(gpu_type: str | None, *sets: str) -> stjobs.JobSpec:
    values = ["gpus_per_node=4", "procs_per_node=4", "cpus_per_task=8",
              *([f"gpu_type={gpu_type}"] if gpu_type else []), *sets]
    return stjobs.load_spec(EXAMPLES / "k8s-pytorchjob.yaml", sets=values)


@pytest.mark.parametrize("gpu_type,base", [
    ("v100", "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime"),
    ("h100", "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"),
    (None, "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"),
])
def test_the_image_base_follows_the_gpu_type(gpu_type: str | None, base: str) -> None:
    plan = stjobs.render_image(gpu_spec(gpu_type))
    assert f"ARG BASE_IMAGE={base}\n" in plan.file("Dockerfile.gpu").content
    assert f"From: {base}\n" in plan.file("apptainer.def").content


@pytest.mark.parametrize("gpu_type,base,refused", [
    ("v100", "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime", True),
    ("v100", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04", True),
    ("v100", "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime", False),
    ("b200", "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime", True),
    ("h100", "pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime", False),
    ("v100", "nvcr.io/nvidia/pytorch:25.01-py3", False),  # the tag names no CUDA: the build step checks
    (None, "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime", False),
])
def test_an_explicit_base_that_cannot_serve_the_gpu_is_refused(gpu_type: str | None, base: str,
                                                               refused: bool) -> None:
    if not refused:
        assert f"ARG BASE_IMAGE={base}\n" in stjobs.render_image(gpu_spec(gpu_type, f"build.base={base}")).file(
            "Dockerfile.gpu").content
        return
    with pytest.raises(SpecError) as caught:
        stjobs.render_image(gpu_spec(gpu_type, f"build.base={base}"))
    message = str(caught.value)
    assert message.startswith(f"build.base: got '{base}'; expected a base with kernels for gpu_type {gpu_type}")
    assert "cuda12.6" in message or "cuda13.0" in message
    assert "\n" not in message


FAKE_TORCH = '''__version__ = "2.13.0+fake"
class version:
    cuda = {cuda!r}
class _C:
    @staticmethod
    def _cuda_getArchFlags():
        return {flags!r}
'''


@pytest.mark.parametrize("gpu_type,cuda,flags,passes", [
    ("v100", "12.6", " ".join(CU126.arch_flags), True),
    ("v100", "13.0", " ".join(CU130.arch_flags), False),  # the image that failed on V100s
    ("h100", "13.0", " ".join(CU130.arch_flags), True),
    ("b200", "12.6", " ".join(CU126.arch_flags), False),
    ("l40s", "13.0", "sm_80 sm_86", True),
    (None, "13.0", " ".join(CU130.arch_flags), True),  # no type named: any CUDA build
    (None, None, "", False),  # the CPU build in a GPU image
])
def test_the_image_build_fails_fast_without_kernels_for_the_gpu(gpu_type: str | None, cuda: str | None,
                                                               flags: str, passes: bool, tmp_path: Path) -> None:
    """The Python the Dockerfile and the Apptainer definition run after installing torch, run against a stand-in
    torch with the given build's flags (the real torch here is a CPU build: it must fail too)."""
    (tmp_path / "torch.py").write_text(FAKE_TORCH.format(cuda=cuda, flags=flags))
    code = arch_check(gpu_spec(gpu_type))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode == 0) is passes, done.stderr
    if not passes:
        assert done.stderr.startswith("stjobs: torch 2.13.0+fake has kernels for ")
        assert (gpu_type or "a GPU") in done.stderr


def test_the_real_cpu_torch_fails_the_gpu_check() -> None:
    done = subprocess.run([sys.executable, "-c", arch_check(gpu_spec("v100"))], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "has kernels for no GPU at all, none for v100 (Volta 7.0)" in done.stderr


@pytest.mark.parametrize("gpu_type,args,said", [
    ("v100", [], "gpu: v100 is Volta 7.0: training in fp16 (bf16 needs compute capability 8.0); image torch "
                 "build CUDA 12.6"),
    ("h100", [], "gpu: h100 is Hopper 9.0: training in bf16; image torch build CUDA 13.0"),
    ("v100", ["--precision", "fp32"], "gpu: v100 is Volta 7.0: training in fp32; image torch build CUDA 12.6"),
    ("mi300x", [], "gpu: gpu_type mi300x is not in stjobs' table: precision follows the device at run time"),
    (None, [], "gpu: no gpu_type: precision follows the device at run time"),
])
def test_the_plan_says_what_the_gpu_type_decided(gpu_type: str | None, args: list[str], said: str) -> None:
    base_args = stjobs.load_spec(EXAMPLES / "k8s-pytorchjob.yaml").entrypoint.args
    spec = gpu_spec(gpu_type, "entrypoint.args=" + json.dumps([*base_args, *args]))
    notes = [note for note in stjobs.render(spec, "slurm").notes if note.startswith("gpu:")]
    assert len(notes) == 1 and notes[0].startswith(said), notes


def test_bf16_on_a_v100_is_refused_at_render(tmp_path: Path) -> None:
    spec = stjobs.load_spec(EXAMPLES / "slurm-v100-site.yaml", sets=['entrypoint.args=["--precision=bf16"]'])
    with pytest.raises(SpecError) as caught:
        stjobs.render_to(spec, tmp_path / "out", "slurm")
    assert str(caught.value).startswith("entrypoint.args: got '--precision bf16'; expected fp16, fp32 or auto for "
                                        "gpu_type v100 (Volta 7.0)")
    assert not (tmp_path / "out").exists()


def test_the_readme_holds_the_gpu_table() -> None:
    """The README's table is the one made from the code (python -m stjobs.gpus prints it)."""
    assert gpus.table() in (Path(__file__).resolve().parent.parent / "README.md").read_text()
