"""Lambda packages: a container image (``build --lambda``) or a zip (``build --lambda-zip``),
each with a SAM ``template.yaml`` beside it, each checked against Lambda's quotas.

    build_lambda_image(["models/digits"], LambdaConfig(), tag="digits:1", output=Path("fn"))
    build_lambda_zip(["models/digits"], LambdaConfig(python="3.12"), output=Path("fn"))

The image is the service's image (image.py: its package layers are the same, so a machine that
built one builds the other from cache) with the Lambda runtime interface client (awslambdaric)
installed on top and as its entrypoint: ``python -m awslambdaric
modelport.serverless.handler.handler``. It runs on the AWS base image for this Python by
default, on any Debian-like one with python3 (``--base-image``) too: it brings its own client.
The zip holds modelport, its dependencies as manylinux wheels for the Lambda runtime's Python
and architecture (``pip install --platform ... --only-binary=:all: --target``) and the models
under ``models/``; the managed runtime has its own client. Either way the function reads its
repository's path from ``MODELPORT_REPOSITORY`` (serverless/app.py) and loads it at init.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from modelport.deploy import lambda_limits as limits
from modelport.deploy.builder import check_tag, find_builder, run_build
from modelport.deploy.folders import new_folder
from modelport.deploy.image import (
    PIP_FLAGS,
    UID,
    VENV,
    ImageConfig,
    copy_model,
    header_lines,
    label_line,
    labels,
    model_layers,
    package_layers,
    pip_command,
)
from modelport.deploy.lambda_limits import ARCHITECTURES, GLIBC_MINOR, LambdaConfig
from modelport.deploy.lock import Lock, check_pins, own_wheel, resolve_extra, resolve_lock
from modelport.deploy.models import ShippedModel, select_models
from modelport.deploy.sam import HANDLER, sam_template, write_template
from modelport.errors import DeployError

DEFAULT_LAMBDA_BASE = f"public.ecr.aws/lambda/python:{sys.version_info[0]}.{sys.version_info[1]}"
RUNTIME_CLIENT = "awslambdaric"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every entry: the same files give the same zip
# What a function never runs, left out of the zip to stay within 50 MB: the browser runtime of
# serve --web, uvicorn's event loop and HTTP parser (the handler has no socket), onnxruntime's
# offline tools (quantization, transformer optimizers).
PRUNED = (
    "modelport/export/assets/onnxruntime-web",
    "uvloop",
    "httptools",
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
)


@dataclass(frozen=True)
class LambdaPackage:
    folder: Path  # the context and template (image), or the zip and template
    models: tuple[str, ...]
    size_bytes: int  # the image's, or the zip's unzipped
    zipped_bytes: int | None = None
    image_id: str | None = None


def environment(models: list[ShippedModel], config: LambdaConfig, root: str) -> dict[str, str]:
    """The function's variables: where its repository is, and the trust it was built with."""
    found = {"MODELPORT_REPOSITORY": root}
    if any(m.manifest.runtime == "python" for m in models):
        found["MODELPORT_TRUST_CODE"] = "1"  # chosen by whoever named the code model to ship
    if config.trust_pickle:
        found["MODELPORT_TRUST_PICKLE"] = "1"
    return found


def _model_sizes(models: list[ShippedModel]) -> dict[str, int]:
    return {f"model {m.ref}": limits.folder_bytes(m.folder) for m in models}


# -- the image ----------------------------------------------------------------------------------


def lambda_containerfile(
    models: list[ShippedModel], config: LambdaConfig, image: ImageConfig, lock: Lock,
    tags: dict[str, str],
) -> str:  # fmt: skip
    pip = pip_command(lock)
    aws = image.base_image.startswith("public.ecr.aws/lambda/")  # Amazon Linux: no groupadd
    variables = " ".join(f"{k}={v}" for k, v in environment(models, config, "/models").items())
    lines = [
        *header_lines(models, image),
        *package_layers(lock, user=not aws),
        "COPY lock-lambda.txt /opt/modelport/lock-lambda.txt",
        "RUN --mount=type=bind,source=wheels,target=/tmp/wheels \\",
        f"    {pip} install {PIP_FLAGS} -r /opt/modelport/lock-lambda.txt && {pip} check",
        "",
        *model_layers(models),
        "",
        "# 3. How it runs: the runtime interface client calls the handler; the models load at",
        "#    init. Lambda runs it as its own user, on a read-only file system but /tmp.",
        f"ENV {variables}",
        f"USER {UID}:{UID}",
        "WORKDIR /tmp",
        f'ENTRYPOINT ["{VENV}/bin/python", "-m", "{RUNTIME_CLIENT}"]',
        f'CMD ["{HANDLER}"]',
        label_line(tags),
    ]
    return "\n".join(lines) + "\n"


def write_lambda_context(
    models: list[ShippedModel], config: LambdaConfig, image: ImageConfig, folder: Path
) -> None:
    """The build context of a Lambda image and its template.yaml, in ``folder`` (empty)."""
    lock = resolve_lock(models, folder / "wheels")
    client = resolve_extra([_client_requirement()], folder / "wheels")
    (folder / "lock.txt").write_text(lock.text())
    (folder / "lock-modelport.txt").write_text(lock.text(own=True))
    lines = [f"# Python {lock.python}; the Lambda runtime interface client and what it needs"]
    lines += [f"{n}=={v} --hash=sha256:{digest}" for n, v, _, digest in client]
    (folder / "lock-lambda.txt").write_text("\n".join(lines) + "\n")
    for model in models:
        copy_model(model.folder, folder / "models" / model.name / str(model.version))
    tags = labels(models, image, lock.text() + lock.text(own=True) + "\n".join(lines))
    tags["io.modelport.lambda"] = "true"
    text = lambda_containerfile(models, config, image, lock, tags)
    (folder / "Containerfile").write_text(text)
    ignored = "Containerfile\n.dockerignore\nimage.json\ntemplate.yaml\n"
    (folder / ".dockerignore").write_text(ignored)
    refs = [m.ref for m in models]
    write_template(folder, sam_template(config, refs, {}, image=image.tag))


def _client_requirement() -> str:
    try:
        return f"{RUNTIME_CLIENT}=={metadata.version(RUNTIME_CLIENT)}"  # the one tested here
    except metadata.PackageNotFoundError:
        return RUNTIME_CLIENT


def build_lambda_image(
    sources: list[str], config: LambdaConfig, *, tag: str, output: Path,
    base_image: str = DEFAULT_LAMBDA_BASE, repo: Path = Path("models"), force: bool = False,
    builder: str | None = None, no_cache: bool = False, context_only: bool = False,
) -> LambdaPackage:  # fmt: skip
    """Write a Lambda image's context and template.yaml to ``output`` and build it."""
    check_tag(tag)
    if ARCHITECTURES[config.architecture] != platform.machine():
        raise DeployError(
            f"an image for {config.architecture} is built on such a machine: the wheels are this "
            f"one's ({platform.machine()})"
        )
    _check_aws_base(base_image)
    models = select_models(sources, repo)
    sizes = _model_sizes(models)
    limits.check_memory(sizes.items(), config.memory_mb)
    program = None if context_only else find_builder(builder)
    image = ImageConfig(tag=tag, base_image=base_image, trust_pickle=config.trust_pickle)
    with new_folder(output, force) as folder:
        write_lambda_context(models, config, image, folder)
        if program is None:
            return LambdaPackage(output, tuple(m.ref for m in models), 0)
        image_id = run_build(program, folder, tag, no_cache)
        size = _image_size(program, tag)
        wheels = folder.glob("wheels/*.whl")
        packages = {f"package {p.name.split('-')[0]}": p.stat().st_size for p in wheels}
        limits.check_image(size, {**sizes, **packages})
    return LambdaPackage(output, tuple(m.ref for m in models), size, image_id=image_id)


def _check_aws_base(base_image: str) -> None:
    """AWS's images up to python:3.11 are Amazon Linux 2 (glibc 2.26): onnxruntime's wheels
    need 2.27 or newer, and the image's Python must be the one its packages are locked for."""
    prefix = "public.ecr.aws/lambda/python:"
    if base_image.startswith(prefix):
        version = tuple(int(p) for p in base_image[len(prefix) :].split(".")[:2] if p.isdigit())
        if len(version) == 2 and version < (3, 12):
            raise DeployError(
                f"{base_image} is Amazon Linux 2, whose glibc 2.26 onnxruntime does not run on; "
                "the image's Python is the one building it: build on Python 3.12 or newer "
                "(AWS's python:3.12+ images), or pass --base-image with a Debian-like Python "
                f"{version[0]}.{version[1]} image"
            )


def _image_size(program: str, tag: str) -> int:
    done = subprocess.run(
        [program, "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    text = done.stdout.strip()
    return int(text) if text.isdigit() else 0


# -- the zip ------------------------------------------------------------------------------------


def build_lambda_zip(
    sources: list[str], config: LambdaConfig, *, output: Path, repo: Path = Path("models"),
    force: bool = False,
) -> LambdaPackage:  # fmt: skip
    """``output``/function.zip (modelport, its packages for the runtime, the models) and
    template.yaml; DeployError over Lambda's limits, naming the biggest parts."""
    models = select_models(sources, repo)
    pins = check_pins(models)
    sizes = _model_sizes(models)
    limits.check_memory(sizes.items(), config.memory_mb)
    limits.check_zip(sizes)  # the models alone: before any package is fetched
    with tempfile.TemporaryDirectory(prefix="modelport-lambda-") as scratch:
        site = Path(scratch) / "package"
        _install(site, pins, config, Path(scratch))
        parts = {**limits.package_parts(site), **sizes}
        limits.check_zip(parts, via_s3=config.via_s3)  # before any model is copied
        for model in models:
            copy_model(model.folder, site / "models" / model.name / str(model.version))
        with new_folder(output, force) as folder:
            zipped = _zip(site, folder / "function.zip")
            unzipped = limits.check_zip(parts, zipped, config.via_s3)
            env = environment(models, config, "/var/task/models")
            refs = [m.ref for m in models]
            write_template(folder, sam_template(config, refs, env, code="function.zip"))
            info = {"models": refs, "python": config.python, "unzipped_bytes": unzipped,
                    "zipped_bytes": zipped, "architecture": config.architecture}  # fmt: skip
            (folder / "package.json").write_text(json.dumps(info, indent=2) + "\n")
    return LambdaPackage(output, tuple(refs), unzipped, zipped_bytes=zipped)


def _install(site: Path, pins: dict[str, str], config: LambdaConfig, scratch: Path) -> None:
    """modelport and the models' pins, as wheels for the runtime's platform, into ``site``."""
    wheel = own_wheel(scratch / "wheels")
    machine = ARCHITECTURES[config.architecture]
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)]
    platforms.append(f"manylinux2014_{machine}")
    args = [sys.executable, "-m", "pip", "install", "--target", str(site), "--only-binary=:all:",
            "--implementation", "cp", "--python-version", config.python, "--no-compile",
            "--disable-pip-version-check", "--quiet"]  # fmt: skip
    for tag in platforms:
        args += ["--platform", tag]
    # redis: a cache shared by a function's environments; gRPC has no use on Lambda.
    args += [f"modelport[redis] @ {wheel.resolve().as_uri()}"]
    args += [f"{name}=={version}" for name, version in sorted(pins.items())]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ})
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise DeployError(
            f"pip could not gather the packages for Lambda's python{config.python} on "
            f"{config.architecture}: " + " | ".join(lines[-4:])
        )
    for folder in sorted(site.rglob("*"), reverse=True):  # as the image does: no test suites
        if folder.is_dir() and (
            folder.name == "__pycache__"
            or (folder.name in ("tests", "test") and len(folder.relative_to(site).parts) > 1)
        ):
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts for another interpreter
    for pruned in PRUNED:
        shutil.rmtree(site / pruned, ignore_errors=True)


def _zip(site: Path, target: Path) -> int:
    """Zip ``site`` reproducibly (sorted, fixed times, modes kept); the zip's size."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(site.rglob("*")):
            if path.is_file():
                entry = zipfile.ZipInfo(str(path.relative_to(site)), _ZIP_TIME)
                entry.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                entry.compress_type = zipfile.ZIP_DEFLATED
                with path.open("rb") as source, archive.open(entry, "w") as sink:
                    shutil.copyfileobj(source, sink, 1024 * 1024)
    return target.stat().st_size
