"""What a GPU type decides: its compute capability, the torch builds with kernels for it, and the precision.

One table, read by the image renderer (which CUDA build of torch the base image carries), the launch plan (which
precision the run will use, stated before it queues) and the training (the same rule applied to the device it
finds). Nothing here probes hardware: the spec's ``gpu_type`` is the input, or at run time the capability torch
reports. Pure data and functions, no imports beyond the standard library: ``stjobs render`` reads it.

Why it matters: CUDA 13 builds of torch carry no Volta (sm_70) kernels, so a V100 given the newest image fails at
its first kernel ("no kernel image is available"); and ``torch.cuda.is_bf16_supported()`` answers True on V100 and
T4, where bf16 is emulated and slower than fp16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Capability = tuple[int, int]

# Compute capability by GPU model, as sites name them in GRES types and node features (lowercase). A site's name
# with a suffix (a100-80gb, h100_sxm5, tesla-v100) is matched by the model at its start, see capability_of.
CAPABILITIES: dict[str, Capability] = {
    "p100": (6, 0),
    "v100": (7, 0), "v100s": (7, 0), "titanv": (7, 0),
    "t4": (7, 5), "rtx6000": (7, 5), "rtx8000": (7, 5), "2080ti": (7, 5),
    "a100": (8, 0), "a30": (8, 0),
    "a10": (8, 6), "a10g": (8, 6), "a16": (8, 6), "a40": (8, 6), "a6000": (8, 6), "rtxa6000": (8, 6),
    "3090": (8, 6),
    "l4": (8, 9), "l40": (8, 9), "l40s": (8, 9), "rtx6000ada": (8, 9), "4090": (8, 9),
    "h100": (9, 0), "h200": (9, 0), "h800": (9, 0), "gh200": (9, 0),
    "b100": (10, 0), "b200": (10, 0), "gb200": (10, 0), "b300": (10, 3), "gb300": (10, 3),
    "rtxpro6000": (12, 0), "5090": (12, 0),
}
ARCHITECTURES = {5: "Maxwell", 6: "Pascal", 7: "Volta", 8: "Ampere", 9: "Hopper", 10: "Blackwell", 12: "Blackwell"}
BF16_FROM: Capability = (8, 0)  # native bf16 from Ampere on; below it torch emulates bf16


def architecture(capability: Capability) -> str:
    """Volta 7.0, Turing 7.5, Ampere 8.0/8.6, Ada 8.9, Hopper 9.0, Blackwell 10.x/12.x."""
    if capability == (7, 5):
        return "Turing"
    if capability == (8, 9):
        return "Ada"
    return ARCHITECTURES.get(capability[0], f"sm_{capability[0]}{capability[1]}")


def describe(capability: Capability) -> str:
    return f"{architecture(capability)} {capability[0]}.{capability[1]}"


def capability_of(gpu_type: str | None) -> Capability | None:
    """The compute capability of a GPU type as a site names it, or None when it is not a model this table knows.

    The longest known model name the type starts with, once vendor words are dropped: "tesla-v100-sxm2" and
    "v100s" are Volta; "a100_80gb" is an A100; "a10" is not taken for "a100"."""
    if gpu_type is None:
        return None
    name = re.sub(r"^(nvidia|tesla|geforce|quadro)[-_ ]?", "", gpu_type.lower())
    name = re.sub(r"^(rtx)[-_ ]", r"\1", name)
    best = max((model for model in CAPABILITIES
                if name.startswith(model) and not name[len(model):len(model) + 1].isalnum()), key=len, default=None)
    return CAPABILITIES[best] if best is not None else None


@dataclass(frozen=True)
class TorchBuild:
    """One CUDA build of torch and the architectures its kernels were compiled for (sm_XY cubins; ``ptx``: the
    newest architecture it also ships PTX for, which the driver compiles for anything newer)."""

    cuda: str
    archs: tuple[Capability, ...]
    ptx: Capability | None = None

    def serves(self, capability: Capability) -> bool:
        """A cubin runs on its own major version at the same or a higher minor (sm_86 code on an sm_89 Ada);
        PTX runs on anything at or above it."""
        cubin = any(major == capability[0] and minor <= capability[1] for major, minor in self.archs)
        return cubin or (self.ptx is not None and capability >= self.ptx)

    @property
    def arch_flags(self) -> tuple[str, ...]:
        """The names ``torch.cuda.get_arch_list()`` reports for this build (sm_70, ..., compute_120 for PTX)."""
        flags = tuple(f"sm_{major}{minor}" for major, minor in self.archs)
        return flags + ((f"compute_{self.ptx[0]}{self.ptx[1]}",) if self.ptx else ())


# The CUDA builds published for torch 2.12 to 2.14 (PyTorch's RELEASE.md support matrix, Linux x86_64): 12.6 is the
# legacy build and the last with Maxwell, Pascal and Volta; 13.0 the stable one, Turing to Blackwell.
TURING_TO_BLACKWELL = ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))
BUILDS = (
    TorchBuild("13.0", TURING_TO_BLACKWELL, ptx=(12, 0)),
    TorchBuild("12.6", ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0))),
)
DEFAULT_BUILD = BUILDS[0]  # what clusters run today: T4, A100, A10/A40, L4/L40S, H100/H200, B200


def build_for(capability: Capability | None) -> TorchBuild:
    """The build a GPU gets: the default when it serves the GPU (or the GPU is not known), else the first that
    does; a GPU no build serves (Kepler and older) is refused by the spec before this is asked."""
    if capability is None or DEFAULT_BUILD.serves(capability):
        return DEFAULT_BUILD
    return next((build for build in BUILDS if build.serves(capability)), DEFAULT_BUILD)


def served_by_any(capability: Capability) -> bool:
    return any(build.serves(capability) for build in BUILDS)


def base_image(torch_version: str, build: TorchBuild) -> str:
    """The PyTorch project's own runtime image for that torch and CUDA (what Kubeflow's torch runtime uses)."""
    return f"pytorch/pytorch:{torch_version}-cuda{build.cuda}-cudnn9-runtime"


def cuda_of_base(image: str) -> str | None:
    """The CUDA version an image's tag names (pytorch/pytorch:2.13.0-cuda12.6-..., nvidia/cuda:12.6.3-...), or None
    where the tag does not say (the image build's arch check still catches a mismatch)."""
    tag = image.split("@")[0].rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    match = re.search(r"cuda(\d+\.\d+)", tag) or (re.match(r"(\d+\.\d+)\.\d+", tag) if "nvidia/cuda" in image
                                                  else None)
    return match.group(1) if match else None


def build_of_cuda(cuda: str) -> TorchBuild | None:
    """The torch build for a CUDA version: 12.x up to 12.6 carries Volta; 12.8 on and 13 do not."""
    major, minor = (int(part) for part in cuda.split("."))
    if major >= 13 or (major, minor) >= (12, 8):
        return TorchBuild(cuda, TURING_TO_BLACKWELL, ptx=(12, 0))
    if major == 12:
        return BUILDS[1]
    return None  # CUDA 11 and older: torch 2.13 has no such build


def arch_flags_serving(capability: Capability) -> tuple[str, ...]:
    """Every arch flag a torch build may report that runs on this GPU: cubins of its major version at or below
    its minor, and PTX of any architecture at or below it."""
    known = {arch for build in BUILDS for arch in build.archs} | set(CAPABILITIES.values())
    cubins = [f"sm_{capability[0]}{minor}" for minor in range(capability[1] + 1)]
    return tuple(cubins + [f"compute_{major}{minor}" for major, minor in sorted(known) if (major, minor) <= capability])


def precision_for(capability: Capability | None) -> str:
    """bf16 where it is native (compute capability 8.0 and up), fp16 on older GPUs, fp32 on CPU (None)."""
    if capability is None:
        return "fp32"
    return "bf16" if capability >= BF16_FROM else "fp16"


def resolve_precision(requested: str, capability: Capability | None) -> str:
    """The precision a run uses: ``auto`` follows :func:`precision_for`; an explicit choice the device cannot do
    natively is refused (ValueError with the rule) rather than emulated."""
    if requested == "auto":
        return precision_for(capability)
    if capability is None and requested != "fp32":
        raise ValueError(f"got {requested} without a GPU; expected fp32 or auto on CPUs")
    if requested == "bf16" and capability is not None and capability < BF16_FROM:
        raise ValueError(f"got bf16 on a {describe(capability)} GPU; expected fp16, fp32 or auto there (bf16 is "
                         "native from compute capability 8.0, emulated and slow below it)")
    return requested


def table() -> str:
    """The README's GPU table, made from the table above (tests/test_gpus.py checks the README holds it)."""
    lines = ["| gpu_type | architecture | torch CUDA build | precision (auto) |", "| --- | --- | --- | --- |"]
    by_capability: dict[Capability, list[str]] = {}
    for model, capability in CAPABILITIES.items():
        by_capability.setdefault(capability, []).append(f"`{model}`")
    for capability, models in sorted(by_capability.items()):
        lines.append(f"| {' '.join(models)} | {describe(capability)} | {build_for(capability).cuda} | "
                     f"{precision_for(capability)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
