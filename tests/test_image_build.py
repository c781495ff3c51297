"""The CPU image, built for real with Debian's buildah and run with podman, then a short training inside it.

No registry can be reached here, so the base is a Debian bookworm made locally (scripts/image-base.sh), passed as
the BASE_IMAGE build argument; torch comes from the machine's local CPU wheel (a build-time volume, never a
layer) and stjobs from a wheel built from this checkout. The image is built by `stjobs image build`, the command
users run. Timings go to the test report (see conftest's terminal summary).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import stjobs
from stjobs.plan import write_plan
from tests.conftest import EXAMPLES, REPO, offline_env, stjobs_bin

pytestmark = [pytest.mark.slow, pytest.mark.image]

BASE = "localhost/stjobs-base:bookworm"
IMAGE = "localhost/stjobs-ci:test"
LOCAL_WHEELS = Path("/opt/wheels")  # where this machine keeps the CPU torch wheel
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# runc and cgroupfs: no systemd here; ulimits no higher than the host's (podman's defaults are, and runc then
# fails without CAP_SYS_RESOURCE).
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
          "--events-backend", "file"]

TIMINGS: dict[str, float] = {}


def ulimits() -> list[str]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    if nproc < 0:  # RLIM_INFINITY
        nproc = 32768
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", f"nproc={nproc}:{nproc}"]


@pytest.fixture(scope="module")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("building images needs root here (debootstrap, containers/storage); CI runs as root")
    start = time.monotonic()
    subprocess.run([str(REPO / "scripts" / "image-base.sh"), BASE], check=True)
    TIMINGS["base image (install, debootstrap, import)"] = time.monotonic() - start

    work = tmp_path_factory.mktemp("image")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels), str(REPO)],
                   check=True, capture_output=True)
    context = work / "project"  # what a user's project looks like: their data and code, and images/
    shutil.copytree(EXAMPLES / "data", context / "examples" / "data")
    (context / ".env").write_text("HF_TOKEN=must-not-reach-the-image\n")
    spec = stjobs.load_spec(EXAMPLES / "k8s-pytorchjob.yaml", [("image", IMAGE)],
                            ["build.variant=cpu", "build.base=localhost/stjobs-base:bookworm"])
    write_plan(stjobs.render_image(spec), context / "images")

    builder_args = [
        # vfs: the only storage driver that works in this sandbox (and podman must use the same to see the image);
        # chroot isolation: no nested user namespaces here.
        "--storage-driver=vfs", "--isolation=chroot",
        "--pull=never", "--format=docker",  # docker format: buildah ignores SHELL in OCI images
        f"--build-arg=BASE_IMAGE={BASE}",
        "--build-arg=TORCH_INDEX_URL=",  # the PyTorch index is out of reach: torch comes from the local wheel
        f"--build-arg=PIP_FIND_LINKS=/wheels {LOCAL_WHEELS}",
        "--build-arg=PIP_CERT=/run/host-ca.crt",
        f"--volume={wheels}:/wheels:ro", f"--volume={LOCAL_WHEELS}:{LOCAL_WHEELS}:ro",
        f"--volume={HOST_CA}:/run/host-ca.crt:ro",
    ]
    start = time.monotonic()
    done = subprocess.run([stjobs_bin(), "image", "build", str(EXAMPLES / "k8s-pytorchjob.yaml"), "--image", IMAGE,
                           "--set", "build.variant=cpu", "--set", "build.base=localhost/stjobs-base:bookworm",
                           "--builder", "buildah", "--context", str(context),
                           *[f"--builder-arg={arg}" for arg in builder_args]],
                          env=offline_env(), capture_output=True, text=True)
    TIMINGS["buildah build (CPU image)"] = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    yield IMAGE
    subprocess.run([*PODMAN, "rmi", "-f", IMAGE], capture_output=True)


# One container for every check: with vfs, each `podman run` copies the whole image (about 40 s here).
INSIDE = """\
set -e
echo "== version"; stjobs --version
echo "== probe"; python -c "import getpass, os, torch; print(os.getuid(), getpass.getuser(), os.getcwd(), \
torch.__version__, os.environ['HF_HOME'], os.access(os.path.expanduser('~'), os.W_OK), sorted(os.listdir('.')))"
echo "== mounts"; find /run/host-ca.crt /wheels /opt/wheels -maxdepth 1 -printf '%p %s\\n' 2>/dev/null || true
echo "== train"
python -m stjobs.train.models --tiny-from examples/data/train.jsonl --out /tmp/model
python -m stjobs.train --model /tmp/model --train-data examples/data/train.jsonl --max-steps 6 \
    --per-device-batch-size 16 --logging-steps 2 --output-dir /tmp/out
ls /tmp/out/final
"""


@pytest.fixture(scope="module")
def inside(built_image: str) -> dict[str, str]:
    """What the checks printed inside one container, by section."""
    start = time.monotonic()
    done = subprocess.run([*PODMAN, "run", "--rm", *ulimits(), "--env", "HF_HUB_OFFLINE=1", built_image,
                           "bash", "-c", INSIDE], capture_output=True, text=True, timeout=900)
    TIMINGS["podman run (version, probe, 6 training steps)"] = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sections: dict[str, str] = {}
    for chunk in done.stdout.split("== ")[1:]:
        name, _, body = chunk.partition("\n")
        sections[name.strip()] = body
    return sections


def test_image_runs_stjobs_as_a_non_root_user(inside: dict[str, str]) -> None:
    assert inside["version"].strip() == f"stjobs {stjobs.__version__}"
    uid, user, cwd, torch_version, hf_home, home_writable, listing = inside["probe"].split(maxsplit=6)
    assert (uid, cwd, hf_home) == ("1000", "/workspace", "/cache/huggingface")
    assert user == "stjobs" and home_writable == "True", "a passwd entry and a writable home (getpass, caches)"
    assert torch_version.startswith("2.13.0") and "+cpu" in torch_version
    assert "examples" in listing and ".env" not in listing, "the .dockerignore kept secrets out of the code layer"


def test_short_training_inside_the_image(inside: dict[str, str]) -> None:
    from stjobs.train.events import parse_events

    events = parse_events(inside["train"])
    assert [e["world_size"] for e in events if e["event"] == "start"] == [1]
    assert any(e["event"] == "saved" for e in events) and "modules.json" in inside["train"]


def test_image_history_holds_no_secret(built_image: str, inside: dict[str, str]) -> None:
    history = subprocess.run([*PODMAN, "history", "--no-trunc", "--format", "{{.CreatedBy}}", built_image],
                             capture_output=True, text=True, check=True).stdout
    assert "must-not-reach-the-image" not in history and "HF_TOKEN" not in history
    # buildah leaves the build-time mount points behind as empty stubs; their content never enters a layer.
    for line in inside["mounts"].splitlines():
        path, size = line.rsplit(" ", 1)
        assert path in ("/run/host-ca.crt", "/wheels", "/opt/wheels") and (size == "0" or path != "/run/host-ca.crt")
    assert ".whl" not in inside["mounts"], "no wheel from the build-time volumes is in the image"
