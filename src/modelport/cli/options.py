"""What several commands share: the repository and trust options, JSON on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

REPO_OPTION = click.option(
    "--repo",
    "repo_path",
    envvar="MODELPORT_REPO",
    default="models",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Model repository folder (env MODELPORT_REPO).",
)
TRUST_OPTION = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow pickle/joblib files, which can run arbitrary code when loaded.",
)
TRUST_CODE_OPTION = click.option(
    "--trust-code",
    is_flag=True,
    help="Allow code models (a folder with model.py): their Python runs when loaded.",
)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
