"""``modelport build`` and ``modelport deploy compose|k8s``: flags in, the library does it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from modelport.cli.options import REPO_OPTION, TRUST_OPTION
from modelport.deploy.aws_lambda import DEFAULT_LAMBDA_BASE
from modelport.deploy.compose import ComposeConfig
from modelport.deploy.image import DEFAULT_BASE
from modelport.deploy.kubernetes import KubernetesConfig
from modelport.deploy.lambda_limits import LambdaConfig

FORCE_OPTION = click.option("--force", is_flag=True, help="Replace the output folder if it exists.")


def _lambda_options(command: Any) -> Any:
    """--lambda-* options, one per LambdaConfig field (tests/test_lambda_package.py checks)."""
    from modelport.deploy.lambda_limits import MEMORY_MB, TMP_MB

    defaults = LambdaConfig()
    options = [
        click.option("--lambda", "lambda_image", is_flag=True,
                     help="Build a Lambda container image (awslambdaric as its entrypoint)."),
        click.option("--lambda-zip", is_flag=True,
                     help="Write a Lambda zip package (function.zip) instead of an image."),
        click.option("--output", "-o", type=click.Path(path_type=Path), default="lambda",
                     show_default=True, help="Lambda: where the context or zip and "
                     "template.yaml go."),
        click.option("--lambda-memory-mb", type=int, default=defaults.memory_mb,
                     show_default=True, help=f"The function's memory, {MEMORY_MB[0]}-"
                     f"{MEMORY_MB[1]}."),
        click.option("--lambda-timeout-s", type=int, default=defaults.timeout_s,
                     show_default=True),
        click.option("--lambda-arch", type=click.Choice(["x86_64", "arm64"]),
                     default=defaults.architecture, show_default=True),
        click.option("--lambda-tmp-mb", type=int, default=defaults.tmp_mb, show_default=True,
                     help=f"/tmp (ephemeral storage), {TMP_MB[0]}-{TMP_MB[1]}."),
        click.option("--lambda-python", default=defaults.python, show_default=True,
                     help="The zip's runtime: its wheels are for this Python."),
        click.option("--lambda-via-s3", is_flag=True, help="The zip is deployed through S3 "
                     "(sam deploy does it): no 50 MB limit, only 250 MB unzipped."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE[:VERSION]...")
@click.option("--tag", "-t", help="Image reference to build, NAME[:TAG] (not with --lambda-zip).")
@click.option(
    "--base-image", default=None,
    help=f"Image to start from: a Debian-like image with python3 (venv) of this Python "
    f"version [default: {DEFAULT_BASE}; with --lambda: {DEFAULT_LAMBDA_BASE}].",
)  # fmt: skip
@click.option("--builder", help="podman or docker (or a path): default, whichever is installed.")
@click.option(
    "--context", "context", type=click.Path(path_type=Path),
    help="Write the build context here and keep it (default: a temporary folder).",
)  # fmt: skip
@click.option("--context-only", is_flag=True, help="Write the context (--context) and stop.")
@click.option("--no-cache", is_flag=True, help="Build every layer anew (the builder's cache).")
@click.option(
    "--no-auth", is_flag=True,
    help="Bake --no-auth into the image: it serves without a token. Off: it refuses to start "
    "without MODELPORT_TOKEN or MODELPORT_TOKEN_FILE.",
)  # fmt: skip
@_lambda_options
@FORCE_OPTION
@REPO_OPTION
@TRUST_OPTION
def build(
    sources: tuple[str, ...], tag: str | None, base_image: str | None, builder: str | None,
    context: Path | None, context_only: bool, no_cache: bool, no_auth: bool, force: bool,
    repo_path: Path, trust_pickle: bool, lambda_image: bool, lambda_zip: bool, output: Path,
    **lambda_settings: Any,
) -> None:  # fmt: skip
    """Build a container image serving model versions, its packages frozen in a lock file;
    or, with --lambda or --lambda-zip, an AWS Lambda function's image or zip package.

    SOURCE is a model folder (models/digits, its latest version unless :VERSION), a version
    folder, a repository (every model's latest version) or NAME[:VERSION] in --repo.
    """
    if lambda_image or lambda_zip:
        _build_lambda(
            list(sources), tag, base_image, builder, context_only, no_cache, force, repo_path,
            trust_pickle, lambda_zip, output, lambda_settings,
        )  # fmt: skip
        return
    from modelport.deploy import ImageConfig, build_image

    if tag is None:
        raise click.UsageError("Missing option '--tag' / '-t'.")
    config = ImageConfig(
        tag=tag, base_image=base_image or DEFAULT_BASE, no_auth=no_auth, trust_pickle=trust_pickle
    )
    result = build_image(
        list(sources), config, repo=repo_path, context=context, context_only=context_only,
        force=force, builder=builder, no_cache=no_cache,
    )  # fmt: skip
    shipped = ", ".join(result.models)
    if result.image_id is None:
        click.echo(f"wrote the build context of {result.tag} ({shipped}) to {result.context}")
    else:
        click.echo(f"built {result.tag} ({shipped}): {result.image_id[:19]}")


def _build_lambda(
    sources: list[str], tag: str | None, base_image: str | None, builder: str | None,
    context_only: bool, no_cache: bool, force: bool, repo_path: Path, trust_pickle: bool,
    zip_package: bool, output: Path, settings: dict[str, Any],
) -> None:  # fmt: skip
    from modelport.deploy.aws_lambda import build_lambda_image, build_lambda_zip

    config = LambdaConfig(
        memory_mb=settings["lambda_memory_mb"], timeout_s=settings["lambda_timeout_s"],
        architecture=settings["lambda_arch"], tmp_mb=settings["lambda_tmp_mb"],
        python=settings["lambda_python"], via_s3=settings["lambda_via_s3"],
        trust_pickle=trust_pickle,
    )  # fmt: skip
    if zip_package:
        if tag is not None or base_image is not None:
            raise click.UsageError("--lambda-zip makes a zip: it takes no --tag or --base-image")
        made = build_lambda_zip(sources, config, output=output, repo=repo_path, force=force)
        click.echo(
            f"wrote {output}/function.zip ({', '.join(made.models)}; python{config.python}): "
            f"{(made.zipped_bytes or 0) / 2**20:.1f} MB zipped, {made.size_bytes / 2**20:.1f} MB "
            f"unzipped; {output}/template.yaml"
        )
        return
    if tag is None:
        raise click.UsageError("Missing option '--tag' / '-t'.")
    made = build_lambda_image(
        sources, config, tag=tag, output=output, base_image=base_image or DEFAULT_LAMBDA_BASE,
        repo=repo_path, force=force, builder=builder, no_cache=no_cache,
        context_only=context_only,
    )  # fmt: skip
    if made.image_id is None:
        click.echo(f"wrote the Lambda build context of {tag} and template.yaml to {output}")
    else:
        click.echo(
            f"built {tag} for Lambda ({', '.join(made.models)}): {made.image_id[:19]}, "
            f"{made.size_bytes / 2**20:.0f} MB; {output}/template.yaml"
        )


def _models(sources: tuple[str, ...], repo_path: Path) -> list[Any]:
    from modelport.deploy.models import select_models

    return select_models(list(sources), repo_path)


@click.group()
def deploy() -> None:
    """Write what runs an image: a Compose stack, Kubernetes or KServe manifests."""


SOURCES = click.argument("sources", nargs=-1, required=True, metavar="SOURCE[:VERSION]...")
IMAGE = click.option("--image", required=True, help="The image of these models (modelport build).")


@deploy.command("compose")
@SOURCES
@IMAGE
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), default="compose", show_default=True
)
@click.option("--replicas", type=int, default=3, show_default=True)
@click.option("--port", type=int, default=8000, show_default=True, help="REST, published.")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC, published.")
@click.option("--prometheus-port", type=int, default=9090, show_default=True)
@click.option("--postgres", is_flag=True, help="Add PostgreSQL and store predictions there.")
@click.option(
    "--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The token to use (default: a random one, written to secrets/token).",
)  # fmt: skip
@click.option("--lb-image", default=ComposeConfig.lb_image, show_default=True)
@click.option("--redis-image", default=ComposeConfig.redis_image, show_default=True)
@click.option("--prometheus-image", default=ComposeConfig.prometheus_image, show_default=True)
@click.option("--postgres-image", default=ComposeConfig.postgres_image, show_default=True)
@FORCE_OPTION
@REPO_OPTION
def compose(
    sources: tuple[str, ...], output: Path, token_file: Path | None, force: bool,
    repo_path: Path, **settings: Any,
) -> None:  # fmt: skip
    """A Compose stack: replicas behind HAProxy, a shared Redis cache, Prometheus."""
    from modelport.deploy.builder import check_tag
    from modelport.deploy.compose import write_compose

    token = token_file.read_text().strip() if token_file else None
    config = ComposeConfig(token=token, **settings)
    check_tag(config.image)
    write_compose(_models(sources, repo_path), config, output, force)
    click.echo(f"wrote {output}/compose.yaml: {config.replicas} replicas of {config.image}")


@deploy.command("k8s")
@SOURCES
@IMAGE
@click.option("--output", "-o", type=click.Path(path_type=Path), default="k8s", show_default=True)
@click.option("--name", help="Name of the objects (default: the image's name).")
@click.option("--namespace")
@click.option("--replicas", type=int, default=KubernetesConfig.replicas, show_default=True)
@click.option("--min-replicas", type=int, default=None, help="Autoscaling floor (0: --kserve).")
@click.option("--max-replicas", type=int, default=KubernetesConfig.max_replicas, show_default=True)
@click.option("--target-cpu-percent", type=int, default=70, show_default=True)
@click.option("--cpu", default=KubernetesConfig.cpu, show_default=True, help="Per pod.")
@click.option("--memory", default=KubernetesConfig.memory, show_default=True, help="Per pod.")
@click.option("--grpc/--no-grpc", default=True, show_default=True, help="Expose port 8001.")
@click.option("--grpc-probe", is_flag=True, help="Readiness by gRPC health checking.")
@click.option("--kserve", is_flag=True, help="A ServingRuntime and InferenceService instead.")
@FORCE_OPTION
@REPO_OPTION
def k8s(
    sources: tuple[str, ...], image: str, output: Path, name: str | None,
    min_replicas: int | None, force: bool, repo_path: Path, **settings: Any,
) -> None:  # fmt: skip
    """Kubernetes manifests (Deployment, Service, HPA, PDB), or KServe's (--kserve)."""
    from modelport.deploy.builder import check_tag
    from modelport.deploy.manifests import write_kubernetes

    check_tag(image)
    if name is None:
        name = image.rpartition("/")[2].partition(":")[0].replace("_", "-").replace(".", "-")
    if min_replicas is None:
        min_replicas = 1 if settings["kserve"] else settings["replicas"]
    config = KubernetesConfig(name=name, image=image, min_replicas=min_replicas, **settings)
    write_kubernetes(_models(sources, repo_path), config, output, force)
    click.echo(f"wrote {output}/{'kserve' if config.kserve else 'kubernetes'}.yaml")


COMMANDS = [build, deploy]
