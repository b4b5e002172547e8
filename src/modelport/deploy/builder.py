"""Building the image with podman or docker, whichever is installed (or ``--builder``).

    result = build_image(["models/digits:2"], ImageConfig(tag="digits:2"))
    result.tag, result.image_id, result.context

The context is written first (into a temporary folder unless ``context`` names one, which
must not exist unless ``force``), then the builder runs on it. Podman builds with ``--format
docker`` (the OCI format has no HEALTHCHECK), ``--timestamp 0`` (reproducible layers) and
``--network=none``: the context holds every wheel, nothing is fetched. A builder that fails
raises DeployError with its last lines.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelport.deploy.folders import new_folder
from modelport.deploy.image import ImageConfig, write_context
from modelport.deploy.models import select_models
from modelport.errors import DeployError

BUILDERS = ("podman", "docker")

# The image reference grammar of the distribution project (docker/distribution reference.go):
# [host[:port]/]path[:tag], lowercase path components, a tag of at most 128 characters.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*"
_REFERENCE = re.compile(
    rf"(?:{_HOST}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
)


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid image reference (``NAME[:TAG]``), else DeployError."""
    if len(tag) > 255 or not _REFERENCE.fullmatch(tag):
        raise DeployError(
            f"{tag!r:.80} is not a valid image reference: use NAME[:TAG] with a lowercase name "
            "(letters, digits, '.', '_', '-', '/' between parts), e.g. digits:2 or "
            "registry.example.com/team/digits:2"
        )
    return tag


def find_builder(name: str | None = None) -> str:
    """The builder's executable: ``name`` if given, else podman or docker, whichever is found."""
    for candidate in (name,) if name else BUILDERS:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    wanted = name or " or ".join(BUILDERS)
    raise DeployError(
        f"no container builder found ({wanted} is not on PATH): install podman (apt-get "
        "install podman) or docker, pass --builder, or write the context alone with "
        "--context-only"
    )


@dataclass(frozen=True)
class BuildResult:
    tag: str
    models: tuple[str, ...]
    context: Path | None  # None once a temporary context is removed
    image_id: str | None  # None with context_only


def build_image(
    sources: list[str],
    config: ImageConfig,
    *,
    repo: Path = Path("models"),
    context: Path | None = None,
    context_only: bool = False,
    force: bool = False,
    builder: str | None = None,
    no_cache: bool = False,
) -> BuildResult:
    """Write the build context of ``sources`` and build it (unless ``context_only``)."""
    check_tag(config.tag)
    models = select_models(sources, repo)
    program = None if context_only else find_builder(builder)
    if context_only and context is None:
        raise DeployError("--context-only needs --context DIR: the folder to write it in")
    with _context_folder(context, force) as folder:
        write_context(models, config, folder)
        image_id = None if program is None else run_build(program, folder, config.tag, no_cache)
    kept = context if context is not None else None
    return BuildResult(config.tag, tuple(m.ref for m in models), kept, image_id)


@contextlib.contextmanager
def _context_folder(context: Path | None, force: bool) -> Iterator[Path]:
    if context is not None:
        with new_folder(context, force) as folder:
            yield folder
    else:
        with tempfile.TemporaryDirectory(prefix="modelport-build-") as scratch:
            yield Path(scratch)


def build_args(program: str, folder: Path, tag: str, no_cache: bool = False) -> list[str]:
    args = [program, "build", "-f", str(folder / "Containerfile"), "-t", tag, "--network=none"]
    if no_cache:
        args.append("--no-cache")
    if Path(program).name.startswith(("podman", "buildah")):
        # docker format: OCI images cannot hold a HEALTHCHECK. Timestamp 0 on every file of
        # the new layers: the same model files give the same layer digest, whenever built
        # (the image's creation time is in its org.opencontainers.image.created label).
        args += ["--format", "docker", "--timestamp", "0"]
    return [*args, str(folder)]


def run_build(program: str, folder: Path, tag: str, no_cache: bool = False) -> str:
    """Run the builder on ``folder``; the new image's id, or DeployError with its last lines."""
    try:
        done = subprocess.run(
            build_args(program, folder, tag, no_cache),
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeployError(f"{Path(program).name} build could not run: {exc}") from exc
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        last = "\n  ".join(lines[-8:])
        raise DeployError(
            f"{Path(program).name} build failed (exit {done.returncode}); its last lines:\n  {last}"
        )
    inspect = subprocess.run(
        [program, "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return inspect.stdout.strip() or "unknown"
