"""The ``modelport`` command: thin, it parses flags and calls the library.

One module per command group, each registered on ``main`` here:

- ``models.py``: repo init, import, list, show, predict
- ``serving.py``: serve
- ``rollout.py``: rollback, shadow report
- ``batch.py``: batch run, batch status
- ``demo.py``: demo
- ``deploy.py``: build, deploy compose, deploy k8s
- ``rayserve.py``: serve --ray's options, deploy ray
- ``export.py``: export web, export mobile; bench --device-profile (a device-like budget)
- ``monitor.py``: monitor (drift of logged predictions)
- ``optimize.py``: quantize, distill, bench (with --device-profile: export.py's)
- ``options.py``: what several of them share (--repo, --trust-pickle, --trust-code, JSON)
"""

from __future__ import annotations

import os
import sys

import click

from modelport.cli import batch, demo, deploy, models, optimize, rollout
from modelport.cli.export import export
from modelport.cli.monitor import monitor
from modelport.cli.rayserve import deploy_ray
from modelport.cli.serving import serve
from modelport.errors import ModelportError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelport")
def main() -> None:
    """modelport: take a trained model from a notebook to production."""


for command in (
    *models.COMMANDS,
    serve,
    *rollout.COMMANDS,
    batch.batch,
    demo.demo,
    monitor,
    *optimize.COMMANDS,
    export,
    *deploy.COMMANDS,
):
    main.add_command(command)
deploy.deploy.add_command(deploy_ray)  # beside compose and k8s


def run() -> None:
    """Entry point: errors print as one clear line and exit 1, with no traceback."""
    try:
        code = main(standalone_mode=False)  # a command's ctx.exit(n) comes back as n
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ModelportError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("MODELPORT_DEBUG"):
            raise
        click.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (this is a bug in modelport; "
            "set MODELPORT_DEBUG=1 to see the traceback and report it)",
            err=True,
        )
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)
