"""What the container tests share: podman set up for this machine, a local base image, a model
repository with an ONNX model and a code model in two versions, and the images built from it,
each made once per test run (conftest.py imports these session fixtures).

Podman here needs runc and lowered ulimits (crun fails on these hosts' rlimits and hybrid
cgroups): ``containers.conf`` beside this file says so, through CONTAINERS_CONF, for podman
and for podman-compose, which calls podman itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import modelport
from modelport.demo import mlp_onnx

HERE = Path(__file__).parent
BASE_IMAGE = "localhost/modelport-base:bookworm"
SERVICES_IMAGE = "localhost/modelport-services:bookworm"  # HAProxy, Redis, Prometheus
TOKEN = "container-test-token"
SIX_MODEL = """\
import numpy as np
import six


class Model:
    signature = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]},
                    {"name": "six", "dtype": "string", "shape": [-1]}],
    }

    def load(self):
        pass

    def predict(self, batch):
        rows = len(batch["x"])
        return {"y": batch["x"].sum(axis=1), "six": np.array([six.__version__] * rows, object)}
"""


def podman(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args], capture_output=True, text=True,
        timeout=timeout, env=None if env is None else {**os.environ, **env},
    )  # fmt: skip


@pytest.fixture(scope="session")
def container_env() -> Iterator[None]:
    """podman on PATH, configured for this machine, for this process and its children."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: apt-get install -y podman buildah runc (.ci/run)")
    previous = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(HERE / "containers.conf")
    yield
    if previous is None:
        os.environ.pop("CONTAINERS_CONF", None)
    else:
        os.environ["CONTAINERS_CONF"] = previous


@pytest.fixture(scope="session")
def base_image(container_env: None) -> str:
    """The local Debian base image: reused from podman's storage, built when missing."""
    done = subprocess.run(
        [str(HERE.parent / "scripts" / "base_image.sh"), BASE_IMAGE],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return BASE_IMAGE


@pytest.fixture(scope="session")
def services_image(base_image: str) -> str:
    """HAProxy, Redis and Prometheus from Debian packages: reused, or built when missing."""
    done = subprocess.run(
        [str(HERE.parent / "scripts" / "services_image.sh"), SERVICES_IMAGE, base_image],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return SERVICES_IMAGE


@pytest.fixture(scope="session")
def ship_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` (ONNX, versions 1 and 2) and ``sixer`` (code: v1 built with six 1.16.0, v2
    with the six installed here, 1.17.0)."""
    root = tmp_path_factory.mktemp("ship") / "models"
    repo = modelport.Repository.init(root)
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=4))
    code = root.parent / "sixer"
    code.mkdir()
    (code / "model.py").write_text(SIX_MODEL)
    (code / "requirements.txt").write_text("six\n")
    for pinned in ("1.16.0", None):
        manifest = modelport.add_model(repo, "sixer", code, trust_code=True)
        if pinned is not None:  # as if imported when six 1.16.0 was what ran here
            path = root / "sixer" / str(manifest.version) / "manifest.json"
            data = json.loads(path.read_text())
            data["requirements"]["packages"]["six"] = pinned
            path.write_text(json.dumps(data, indent=2))
    return root


@dataclass(frozen=True)
class Image:
    tag: str
    context: Path
    build_s: float


def build(repo: Path, tag: str, *sources: str, base: str) -> Image:
    context = repo.parent / f"context-{tag.replace(':', '-').replace('/', '-')}"
    started = time.monotonic()
    done = run_cli(
        "build", *[str(repo / s) for s in sources], "--tag", tag, "--base-image", base,
        "--context", str(context), "--force",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Image(tag, context, time.monotonic() - started)


# The test images keep their tags after a run, so that the next run on this machine (CI runs
# here too) finds their unchanged layers cached, as a developer's machine would; what an
# earlier run left untagged is removed first.


@pytest.fixture(scope="session")
def image_v1(ship_repo: Path, base_image: str) -> Image:
    """tiny:1 and sixer:1 (six 1.16.0) in one image."""
    podman("image", "prune", "--force", "--filter", "label=io.modelport.version", check=False)
    return build(ship_repo, "localhost/modelport-test:v1", "tiny:1", "sixer:1", base=base_image)


@pytest.fixture(scope="session")
def image_v2(ship_repo: Path, base_image: str) -> Image:
    """sixer:2 (six 1.17.0), the newer version with its own pins, and tiny:2."""
    return build(ship_repo, "localhost/modelport-test:v2", "sixer:2", "tiny:2", base=base_image)


@dataclass(frozen=True)
class Container:
    name: str
    url: str
    grpc: str
    started_s: float  # from `podman run` to ready


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not become ready within {timeout_s} s")


def start(image: str, *args: str, port: int, grpc_port: int) -> Container:
    name = f"mp-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-p",
        f"127.0.0.1:{grpc_port}:8001", "-e", f"MODELPORT_TOKEN={TOKEN}", *args, image,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
    except AssertionError:
        logs = podman("logs", name, check=False)
        podman("rm", "--force", name, check=False)
        raise AssertionError(f"{image} never became ready: {logs.stdout}{logs.stderr}") from None
    return Container(name, url, f"127.0.0.1:{grpc_port}", time.monotonic() - started)


def stop(container: Container) -> None:
    podman("rm", "--force", "--time", "5", container.name, check=False)
