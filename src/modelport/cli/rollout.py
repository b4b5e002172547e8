"""Versions in production: ``modelport rollback`` and ``modelport shadow report``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from modelport.cli.options import REPO_OPTION, echo_json
from modelport.errors import ModelNotFoundError, ModelportError
from modelport.repository import Repository, check_name


@click.command()
@click.argument("name")
@click.option("--to", "to", type=int, default=None, help="Go back to this version: every newer "
              "one is withdrawn (default: the one before the current latest).")  # fmt: skip
@click.option("--reason", default="", help="Why: shown by list, show and the control index.")
@click.option("--restore", "restore", type=int, default=None, metavar="VERSION",
              help="Undo: serve a withdrawn version again.")  # fmt: skip
@REPO_OPTION
def rollback(name: str, to: int | None, reason: str, restore: int | None, repo_path: Path) -> None:
    """Withdraw NAME's latest version (kept on disk, never served as latest): a server run
    with --watch goes back to the previous one."""
    repo = Repository.open(repo_path)
    check_name(name)
    if restore is not None:
        repo.restore(name, restore)
        click.echo(f"{name}:{restore} restored; latest is now {repo.serveable(name)[-1]}")
        return
    serveable = repo.serveable(name)
    if not serveable:
        raise ModelNotFoundError(f"{name!r} has no version left to withdraw")
    if to is None:
        if len(serveable) < 2:
            raise ModelportError(
                f"{name}:{serveable[-1]} is its only version not withdrawn: there is nothing to "
                "go back to; import a fixed version instead"
            )
        to = serveable[-2]
    if to not in serveable:
        raise ModelNotFoundError(
            f"{name} has no version {to} to go back to; not withdrawn: "
            f"{', '.join(map(str, serveable))}"
        )
    newer = [v for v in serveable if v > to]
    if not newer:
        raise ModelportError(f"{name}:{to} is already the latest version served")
    repo.withdraw(name, newer, reason)
    click.echo(
        f"{name}: withdrew {', '.join(map(str, newer))}; latest is now {to}"
        + (f" ({reason})" if reason else "")
    )


@click.group()
def shadow() -> None:
    """Shadow versions of a running server (serve --shadow MODEL=VERSION)."""


@shadow.command("report")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The server.")
@click.option(
    "--control-token",
    envvar="MODELPORT_CONTROL_TOKEN",
    default=None,
    help="The server's control token, if it has one (env MODELPORT_CONTROL_TOKEN).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the server's report as JSON.")
def report(url: str, control_token: str | None, as_json: bool) -> None:  # fmt: skip
    """Print agreement counts and the last disagreements of each shadow."""
    import httpx

    headers = {} if control_token is None else {"authorization": f"Bearer {control_token}"}
    try:
        answer = httpx.get(f"{url.rstrip('/')}/v2/shadow", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise ModelportError(f"cannot reach {url}: {exc}") from None
    if answer.status_code != 200:
        raise ModelportError(f"{url} answered {answer.status_code}: {_error(answer)}")
    data: dict[str, Any] = answer.json()
    if as_json:
        echo_json(data)
        return
    click.echo(f"{'model':20} {'live':>5} {'shadow':>6} {'agree':>8} {'disagree':>8} "
               f"{'error':>6} {'skipped':>7} {'agreement':>9}")  # fmt: skip
    for row in data["shadows"]:
        c = row["counts"]
        compared = c.get("agree", 0) + c.get("disagree", 0)
        share = f"{100 * c.get('agree', 0) / compared:.2f}%" if compared else "-"
        click.echo(
            f"{row['model']:20} {row['live_version']:>5} {row['candidate_version']:>6} "
            f"{c.get('agree', 0):>8} {c.get('disagree', 0):>8} {c.get('error', 0):>6} "
            f"{c.get('skipped', 0):>7} {share:>9}"
        )
    disagreements = data["disagreements"]
    click.echo(f"\n{len(disagreements)} disagreement(s) kept (the latest last):")
    for item in disagreements:
        at = dt.datetime.fromtimestamp(item["at"], dt.timezone.utc).strftime("%H:%M:%S")
        diff = item["max_abs_diff"]
        click.echo(
            f"  {at} {item['model']} {item['live_version']}->{item['candidate_version']} "
            f"request {item['request_id']} max|diff| "
            f"{'-' if diff is None else f'{diff:.4g}'}"
        )
        for side in ("live", "candidate"):
            shown = ", ".join(f"{n}={v['data']}" for n, v in item[side].items())
            click.echo(f"    {side:9} {shown}")


def _error(answer: Any) -> str:
    try:
        return str(answer.json().get("error"))
    except ValueError:
        return str(answer.text[:200])


COMMANDS = (rollback, shadow)
