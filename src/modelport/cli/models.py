"""Commands on a model repository: repo init, import, list, show, predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from modelport.cli.options import REPO_OPTION, TRUST_CODE_OPTION, TRUST_OPTION, echo_json
from modelport.config import LoadOptions
from modelport.errors import ModelportError
from modelport.repository import Repository


@click.group()
def repo() -> None:
    """Manage a model repository."""


@repo.command("init")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path), default="models")
def repo_init(path: Path) -> None:
    """Create a model repository folder (existing models are kept)."""
    Repository.init(path)
    click.echo(f"model repository ready at {path}")


@click.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name; the import becomes its next version.")
@click.option(
    "--sample-input",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A few real input rows (CSV with a header, Parquet, JSON, .npy, .npz): needed to "
    "convert scikit-learn, XGBoost/LightGBM/CatBoost and PyTorch models (parity check) and code "
    "models without a declared signature. A pipeline fitted on a DataFrame gets one input per "
    "column, typed from this sample.",
)
@click.option("--description", default="", help="Free text stored in the manifest.")
@click.option(
    "--module",
    metavar="FILE.py:CLASS",
    help="Where the class of a PyTorch pickle or state_dict is defined (a model saved from a "
    "script names __main__, which modelport cannot import).",
)
@click.option(
    "--init-args",
    metavar="JSON",
    help="Keyword arguments for the --module class's constructor, e.g. '{\"hidden\": 64}'.",
)
@REPO_OPTION
@TRUST_OPTION
@TRUST_CODE_OPTION
def import_(
    source: Path,
    name: str,
    sample_input: Path | None,
    description: str,
    module: str | None,
    init_args: str | None,
    repo_path: Path,
    trust_pickle: bool,
    trust_code: bool,
) -> None:
    """Import a model: ONNX; scikit-learn, XGBoost, LightGBM, CatBoost or PyTorch files
    (.pt2, TorchScript, state_dict, pickles); or a code-model folder."""
    from modelport.datafiles import read_sample
    from modelport.importing import add_model

    arguments = _init_args(init_args, module)
    sample = read_sample(sample_input) if sample_input else None
    created = not repo_path.exists()
    try:
        manifest = add_model(
            Repository.init(repo_path),
            name,
            source,
            sample_input=sample,
            trust_pickle=trust_pickle,
            trust_code=trust_code,
            description=description,
            module=module,
            init_args=arguments,
        )
    except BaseException:
        if created:  # a mistyped --repo should not leave a new empty folder behind
            shutil.rmtree(repo_path, ignore_errors=True)
        raise
    click.echo(f"imported {manifest.name}:{manifest.version} ({manifest.runtime}) into {repo_path}")


def _init_args(text: str | None, module: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    if module is None:
        raise click.BadParameter(
            "needs --module: the arguments are for its class", param_hint="--init-args"
        )
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint="--init-args") from None
    if not isinstance(value, dict):
        raise click.BadParameter("a JSON object, e.g. '{\"hidden\": 64}'", param_hint="--init-args")
    return value


@click.command("list")
@REPO_OPTION
def list_(repo_path: Path) -> None:
    """List the models and versions in the repository."""
    repository = Repository.open(repo_path)
    names = repository.names()
    if not names:
        click.echo(f"no models in {repo_path}; add one with 'modelport import'")
    for name in names:
        versions = ",".join(map(str, repository.versions(name)))
        try:
            manifest = repository.manifest(name)
            about = f"{manifest.runtime:7} {manifest.created_at}"
            withdrawn = repository.withdrawn(name)
        except ModelportError as exc:  # one broken version must not hide the others
            about, withdrawn = f"BROKEN: {exc}", {}
        click.echo(f"{name:24} versions {versions:12} {about}")
        for version, why in sorted(withdrawn.items()):
            reason = why.get("reason") or "no reason given"
            click.echo(f"{'':24} withdrawn {version} at {why.get('at', '?')}: {reason}")


@click.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@REPO_OPTION
def show(ref: str, repo_path: Path) -> None:
    """Print a model version's manifest (latest version when none is given), and whether it
    is withdrawn."""
    repository = Repository.open(repo_path)
    manifest = repository.manifest(ref)
    withdrawn = repository.withdrawn(manifest.name).get(manifest.version)
    echo_json({**manifest.to_dict(), **({"withdrawn": withdrawn} if withdrawn else {})})


@click.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inputs as JSON (tensors, or rows as {column: value} objects), CSV, Parquet, .npy or "
    ".npz.",
)
@REPO_OPTION
@TRUST_OPTION
@TRUST_CODE_OPTION
def predict(
    ref: str, input_path: Path, repo_path: Path, trust_pickle: bool, trust_code: bool
) -> None:
    """Run a one-off prediction offline and print the outputs as JSON."""
    from modelport.datafiles import read_inputs, to_json

    options = LoadOptions(trust_pickle=trust_pickle, trust_code=trust_code)
    with Repository.open(repo_path).load(ref, options=options) as model:
        outputs = model.predict(read_inputs(input_path, model.signature))
        echo_json({"model": model.name, "version": model.version, "outputs": to_json(outputs)})


COMMANDS = (repo, import_, list_, show, predict)
