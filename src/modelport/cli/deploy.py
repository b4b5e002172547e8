"""``modelport build`` and ``modelport deploy compose|k8s``: flags in, the library does it."""

from __future__ import annotations

from pathlib import Path

import click

from modelport.cli.options import REPO_OPTION, TRUST_OPTION
from modelport.deploy.image import DEFAULT_BASE

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
    context: Path | None, context_only: bool, no_auth: bool, force: bool, repo_path: Path,
    trust_pickle: bool,
) -> None:  # fmt: skip
    """Build a container image serving model versions, its packages frozen in a lock file.

    SOURCE is a model folder (models/digits, its latest version unless :VERSION), a version
    folder, a repository (every model's latest version) or NAME[:VERSION] in --repo.
    """
    from modelport.deploy import ImageConfig, build_image

    config = ImageConfig(tag=tag, base_image=base_image, no_auth=no_auth, trust_pickle=trust_pickle)
    result = build_image(
        list(sources), config, repo=repo_path, context=context, context_only=context_only,
        force=force, builder=builder,
    )  # fmt: skip
    shipped = ", ".join(result.models)
    if result.image_id is None:
        click.echo(f"wrote the build context of {result.tag} ({shipped}) to {result.context}")
    else:
        click.echo(f"built {result.tag} ({shipped}): {result.image_id[:19]}")


COMMANDS = [build]
