"""``modelport build`` and ``modelport deploy compose|k8s``: flags in, the library does it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from modelport.cli.options import REPO_OPTION, TRUST_OPTION
from modelport.deploy.compose import ComposeConfig
from modelport.deploy.image import DEFAULT_BASE
from modelport.deploy.kubernetes import KubernetesConfig

FORCE_OPTION = click.option("--force", is_flag=True, help="Replace the output folder if it exists.")


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE[:VERSION]...")
@click.option("--tag", "-t", required=True, help="Image reference to build, NAME[:TAG].")
@click.option(
    "--base-image", default=DEFAULT_BASE, show_default=True,
    help="Image to start from: a Debian-like image with python3 (venv) of this Python version.",
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
@FORCE_OPTION
@REPO_OPTION
@TRUST_OPTION
def build(
    sources: tuple[str, ...], tag: str, base_image: str, builder: str | None,
    context: Path | None, context_only: bool, no_cache: bool, no_auth: bool, force: bool,
    repo_path: Path, trust_pickle: bool,
) -> None:  # fmt: skip
    """Build a container image serving model versions, its packages frozen in a lock file.

    SOURCE is a model folder (models/digits, its latest version unless :VERSION), a version
    folder, a repository (every model's latest version) or NAME[:VERSION] in --repo.
    """
    from modelport.deploy import ImageConfig, build_image

    config = ImageConfig(tag=tag, base_image=base_image, no_auth=no_auth, trust_pickle=trust_pickle)
    result = build_image(
        list(sources), config, repo=repo_path, context=context, context_only=context_only,
        force=force, builder=builder, no_cache=no_cache,
    )  # fmt: skip
    shipped = ", ".join(result.models)
    if result.image_id is None:
        click.echo(f"wrote the build context of {result.tag} ({shipped}) to {result.context}")
    else:
        click.echo(f"built {result.tag} ({shipped}): {result.image_id[:19]}")


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
