"""The build context of an image: a Containerfile, the lock file, the wheels and the models.

    context = write_context(models, ImageConfig(tag="digits:1"), Path("build/digits"))

Layers, from the one that changes least: the user, the packages (lock.txt and a bind mount
of the wheels, so no wheel stays in the image, nor pip, which runs from its wheel), modelport
(lock-modelport.txt), then one layer per model version, the largest first, then settings and
labels, which cost nothing to redo. A new model version rebuilds its layer and the (smaller)
ones after it, never the packages. Model files keep their modification times and their modes
are fixed (0644, folders 0755, owned by root): the same files give the same layer (podman
builds with --timestamp 0, builder.py); the server runs as user 10001, which cannot change
them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import modelport
from modelport.deploy.lock import Lock, resolve_lock
from modelport.deploy.models import ShippedModel

DEFAULT_BASE = "docker.io/library/python:3.11-slim"
UID = 10001
REST_PORT = 8000
GRPC_PORT = 8001
VENV = "/opt/modelport/venv"
TOKEN_FILE = "/run/secrets/modelport_token"  # where Compose mounts the secret
LABEL = "io.modelport"
PIP_FLAGS = (
    "--no-index --no-deps --require-hashes --no-cache-dir --disable-pip-version-check "
    "--find-links /tmp/wheels"
)


@dataclass(frozen=True)
class ImageConfig:
    """What an image is called, what it starts from and how its server starts.

    ``no_auth`` bakes ``--no-auth`` into the command, on purpose: without it the server
    refuses to start unless ``MODELPORT_TOKEN`` or ``MODELPORT_TOKEN_FILE`` gives a token.
    """

    tag: str
    base_image: str = DEFAULT_BASE
    no_auth: bool = False
    trust_pickle: bool = False


def serve_command(models: list[ShippedModel], config: ImageConfig) -> list[str]:
    """The arguments of ``modelport`` that the image runs."""
    command = ["serve", "/models", "--host", "0.0.0.0", "--port", str(REST_PORT)]
    command += ["--grpc-port", str(GRPC_PORT), "--version-policy", "all"]
    if any(m.manifest.runtime == "python" for m in models):
        command.append("--trust-code")  # chosen by whoever named the code model to ship
    if config.trust_pickle:
        command.append("--trust-pickle")
    if config.no_auth:
        command.append("--no-auth")
    return command


def labels(models: list[ShippedModel], config: ImageConfig, lock_text: str) -> dict[str, str]:
    """OCI annotations plus modelport's own: what is inside, at which sha256, since when."""
    refs = ",".join(m.ref for m in models)
    found = {
        "org.opencontainers.image.title": f"modelport: {refs}",
        "org.opencontainers.image.created": dt.datetime.now(dt.timezone.utc)
        .replace(microsecond=0)
        .isoformat(),
        "org.opencontainers.image.version": config.tag.rpartition(":")[2],
        "org.opencontainers.image.base.name": config.base_image,
        f"{LABEL}.version": modelport.__version__,
        f"{LABEL}.models": refs,
        f"{LABEL}.no-auth": str(config.no_auth).lower(),
        f"{LABEL}.lock.sha256": _text_sha256(lock_text),
    }
    for m in models:
        found[f"{LABEL}.model.{m.name}.{m.version}.sha256"] = m.digest
    return found


def containerfile(
    models: list[ShippedModel], config: ImageConfig, lock: Lock, tags: dict[str, str]
) -> str:
    health = (
        "import urllib.request; urllib.request.urlopen("
        f"'http://127.0.0.1:{REST_PORT}/v2/health/ready', timeout=2)"
    )
    lines = [
        *header_lines(models, config),
        *package_layers(lock),
        "",
        *model_layers(models),
        "",
        "# 3. How it runs. The token: MODELPORT_TOKEN, or a file named by MODELPORT_TOKEN_FILE.",
        f"USER {UID}:{UID}",
        "WORKDIR /tmp",
        f"EXPOSE {REST_PORT} {GRPC_PORT}",
        "HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\",
        f"    CMD {json.dumps(['python', '-c', health])}",
        'ENTRYPOINT ["modelport"]',
        f"CMD {json.dumps(serve_command(models, config))}",
        label_line(tags),
    ]
    return "\n".join(lines) + "\n"


def header_lines(models: list[ShippedModel], config: ImageConfig) -> list[str]:
    refs = ", ".join(m.ref for m in models)
    return [
        f"# Written by modelport {modelport.__version__} for {refs}.",
        "# Build: podman build --format docker --network=none -t NAME:TAG .  (or docker build)",
        f"ARG BASE_IMAGE={config.base_image}",
        "FROM ${BASE_IMAGE}",
        "",
    ]


def pip_command(lock: Lock) -> str:
    return f"{VENV}/bin/python /tmp/wheels/{lock.installer}/pip"  # pip runs from its wheel


def package_layers(lock: Lock, user: bool = True) -> list[str]:
    """The user, the packages and modelport: the layers every image of these pins shares
    (the Lambda image's too, on a base image with groupadd: ``user``)."""
    pip = pip_command(lock)
    check = (
        f"RUN python3 -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == "
        f'({lock.python.replace(".", ", ")}) else "the lock is for Python {lock.python} but '
        "the base image has %d.%d: pass a base image with that Python\" % v)'"
    )
    lines = [
        "# 1. The user, the packages (less their own test suites), then modelport: they change",
        "#    only with the lock files.",
    ]
    if user:
        lines += [
            check + " \\",
            f"    && groupadd --system --gid {UID} modelport \\",
            f"    && useradd --system --uid {UID} --gid {UID} --no-create-home "
            "--home-dir /nonexistent --shell /usr/sbin/nologin modelport",
        ]
    else:
        lines.append(check)
    return [
        *lines,
        "COPY lock.txt /opt/modelport/lock.txt",
        "RUN --mount=type=bind,source=wheels,target=/tmp/wheels \\",
        f"    python3 -m venv --without-pip {VENV} \\",
        f"    && {pip} install {PIP_FLAGS} -r /opt/modelport/lock.txt \\",
        f"    && find {VENV} -depth -type d -path '*/site-packages/*/*' \\( -name tests -o -name "
        "test \\) -exec rm -rf {} +",
        "COPY lock-modelport.txt /opt/modelport/lock-modelport.txt",
        "RUN --mount=type=bind,source=wheels,target=/tmp/wheels \\",
        f"    {pip} install {PIP_FLAGS} -r /opt/modelport/lock-modelport.txt \\",
        f"    && {pip} check",
        f"ENV PATH={VENV}/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
    ]


def model_layers(models: list[ShippedModel]) -> list[str]:
    lines = ["# 2. The models, one layer per version, the largest first."]
    for m in layer_order(models):
        lines.append(f"COPY models/{m.name}/{m.version} /models/{m.name}/{m.version}")
    return lines


def label_line(tags: dict[str, str]) -> str:
    return "LABEL " + " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in tags.items())


def layer_order(models: list[ShippedModel]) -> list[ShippedModel]:
    """Largest first: a changed version rebuilds its layer and those after it, which are then
    the smaller ones."""
    return sorted(models, key=lambda m: (-_size(m.folder), m.name, m.version))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_context(models: list[ShippedModel], config: ImageConfig, folder: Path) -> Path:
    """Fill ``folder`` (empty) with everything ``podman build`` or ``docker build`` needs."""
    lock = resolve_lock(models, folder / "wheels")
    lock_text = lock.text()
    (folder / "lock.txt").write_text(lock_text)
    (folder / "lock-modelport.txt").write_text(lock.text(own=True))
    for model in models:
        copy_model(model.folder, folder / "models" / model.name / str(model.version))
    tags = labels(models, config, lock_text + lock.text(own=True))
    (folder / "Containerfile").write_text(containerfile(models, config, lock, tags))
    (folder / ".dockerignore").write_text("Containerfile\n.dockerignore\nimage.json\n")
    info = {"tag": config.tag, "models": [m.ref for m in models], "labels": tags}
    (folder / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder


def copy_model(source: Path, target: Path) -> None:
    """Copy a version folder with its times, modes fixed, and no bytecode caches."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [*sorted(target.rglob("*"), reverse=True), target]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        original = source / path.relative_to(target)
        stat = original.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for parent in (target.parent, target.parent.parent):
        os.utime(parent, (0, 0))


def _text_sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
