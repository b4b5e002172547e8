"""Smaller and faster models: quantize, distill, bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from modelport.cli.export import device_bench, device_options
from modelport.cli.options import REPO_OPTION, TRUST_CODE_OPTION, TRUST_OPTION
from modelport.errors import AccuracyDropError
from modelport.repository import Repository

ROWS = click.Path(exists=True, dir_okay=False, path_type=Path)
REPORT_OPTION = click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the comparison with its plots to this HTML file.",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
NAME_OPTION = click.option(
    "--name", help="Import the result as a new version of this model (default: the same model)."
)
LABELS_OPTION = click.option(
    "--labels",
    metavar="COLUMN",
    help="Column (or .npz array) of true labels: score accuracy rather than agreement.",
)
SECONDS_OPTION = click.option(
    "--bench-seconds",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds of back-to-back calls for each latency measured.",
)


def _log(line: str) -> None:
    click.echo(line, err=True)


def _show(report: Any, report_path: Path | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.table())
    if report_path is not None:
        report.write_html(report_path)
        _log(f"report written to {report_path}")


@click.command()
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--eval", "eval_path", required=True, type=ROWS,
              help="Rows to score accuracy (with --labels) or agreement on.")  # fmt: skip
@click.option("--calibration", type=ROWS, help="Rows to calibrate activation ranges on (static).")
@LABELS_OPTION
@click.option("--method", type=click.Choice(["auto", "dynamic", "static"]), default="auto",
              show_default=True, help="dynamic (weights), static (weights and activations, "
              "QDQ) or auto (both, keep the better within budget).")  # fmt: skip
@click.option("--max-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Largest loss of accuracy (or agreement) allowed, as a fraction.")  # fmt: skip
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Static: one scale per weight channel, or one per tensor.")  # fmt: skip
@click.option("--qat", "qat_source", type=ROWS, metavar="MODEL.pt",
              help="The model's PyTorch source (torch.save(model)): add a candidate fine-tuned "
              "with int8 in the loop on the calibration rows (needs --trust-pickle).")  # fmt: skip
@click.option("--qat-epochs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Epochs of fine-tuning with --qat.")  # fmt: skip
@NAME_OPTION
@REPORT_OPTION
@JSON_OPTION
@SECONDS_OPTION
@TRUST_OPTION
@REPO_OPTION
@click.pass_context
def quantize(
    ctx: click.Context,
    ref: str,
    eval_path: Path,
    calibration: Path | None,
    labels: str | None,
    method: str,
    max_drop: float,
    per_channel: bool,
    qat_source: Path | None,
    qat_epochs: int,
    name: str | None,
    report_path: Path | None,
    as_json: bool,
    bench_seconds: float,
    trust_pickle: bool,
    repo_path: Path,
) -> None:
    """Quantize a model to int8; import it as the next version if accuracy holds.

    Exits 1, importing nothing, when every candidate loses more than --max-drop.
    """
    from modelport.optimize.qat import QatSettings
    from modelport.optimize.quantize import quantize as run
    from modelport.optimize.scoring import Measuring

    qat = None
    if qat_source is not None:
        qat = QatSettings(qat_source, trust_pickle=trust_pickle, epochs=qat_epochs)

    try:
        result = run(
            Repository.open(repo_path),
            ref,
            eval_path,
            calibration=calibration,
            labels=labels,
            method=method,
            max_drop=max_drop,
            name=name,
            per_channel=per_channel,
            qat=qat,
            measuring=Measuring(seconds=bench_seconds),
            log=_log,
        )
    except AccuracyDropError as exc:
        if exc.report is not None:
            _show(exc.report, report_path, as_json)
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    _show(result.report, report_path, as_json)
    manifest = result.manifest
    _log(f"imported {manifest.name}:{manifest.version} (int8 {result.method}) into {repo_path}")


class _EpochBar:
    """One line redrawn on a terminal; a line every 10 epochs (and the last) in a log."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.last = ""

    def __call__(self, epoch: Any) -> None:
        done = epoch.number / epoch.max_epochs
        bar = "#" * int(done * 20) + "." * (20 - int(done * 20))
        agreement = "" if epoch.val_agreement != epoch.val_agreement else (
            f"  agreement {epoch.val_agreement * 100:.1f}%"
        )  # fmt: skip
        line = (
            f"epoch {epoch.number}/{epoch.max_epochs} [{bar}] loss {epoch.train_loss:.4f}  "
            f"held-out {epoch.val_loss:.4f}{agreement}  best epoch {epoch.best_epoch}"
        )
        if self.live:
            click.echo("\r\x1b[K" + line, nl=False, err=True)
        elif epoch.number % 10 == 0 or epoch.number == 1:
            _log(line)
            line = ""
        self.last = line

    def close(self) -> None:
        if self.live:
            click.echo("", err=True)
        elif self.last:
            _log(self.last)


@click.command()
@click.argument("teacher", metavar="TEACHER[:VERSION]")
@click.option("--data", required=True, type=ROWS, help="Rows to learn from (no labels needed).")
@click.option("--student", "student_spec", default="mlp:256,128", show_default=True,
              help="Built-in student: mlp:W1,W2,... (hidden layer widths).")  # fmt: skip
@click.option("--student-module", metavar="FILE.py:CLASS",
              help="Your own student: Class(in_features, out_features), an nn.Module.")  # fmt: skip
@click.option("--eval", "eval_path", type=ROWS,
              help="Rows to score the student on (default: rows held out of --data).")  # fmt: skip
@LABELS_OPTION
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0,
              show_default=True, help="Softens a classifier's targets.")  # fmt: skip
@click.option("--max-epochs", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=10, show_default=True,
              help="Stop after this many epochs without a better held-out loss.")  # fmt: skip
@NAME_OPTION
@REPORT_OPTION
@JSON_OPTION
@SECONDS_OPTION
@TRUST_CODE_OPTION
@REPO_OPTION
def distill(
    teacher: str,
    data: Path,
    student_spec: str,
    student_module: str | None,
    eval_path: Path | None,
    labels: str | None,
    temperature: float,
    max_epochs: int,
    patience: int,
    name: str | None,
    report_path: Path | None,
    as_json: bool,
    bench_seconds: float,
    trust_code: bool,
    repo_path: Path,
) -> None:
    """Train a small PyTorch student on a teacher's outputs; import it as the next version."""
    from modelport.optimize.distill import Training
    from modelport.optimize.distill import distill as run
    from modelport.optimize.scoring import Measuring
    from modelport.optimize.students import StudentSpec

    student = (
        StudentSpec(module=student_module) if student_module else StudentSpec.parse(student_spec)
    )
    bar = _EpochBar()
    try:
        result = run(
            Repository.open(repo_path),
            teacher,
            data,
            student,
            eval_rows=eval_path,
            labels=labels,
            name=name,
            training=Training(temperature=temperature, max_epochs=max_epochs, patience=patience),
            measuring=Measuring(seconds=bench_seconds),
            trust_code=trust_code,
            progress=bar,
        )
    finally:
        bar.close()
    _show(result.report, report_path, as_json)
    manifest = result.manifest
    _log(
        f"imported {manifest.name}:{manifest.version} (student {student.describe()}, best of "
        f"{result.epochs} epochs: {result.best_epoch}) into {repo_path}"
    )


def _numbers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give whole numbers >= 1 separated by commas")
    return values


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="NAME[:VERSION]...")
@click.option("--batch-sizes", default="1,8,32", show_default=True,
              help="Batch sizes to measure, comma-separated.")  # fmt: skip
@click.option("--threads", default="1", show_default=True,
              help="onnxruntime intra-op thread counts to measure, comma-separated.")  # fmt: skip
@click.option("--providers", help="Execution providers: cpu, cuda, tensorrt (comma-separated; "
              "default: every one installed).")  # fmt: skip
@click.option("--seconds", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Seconds of back-to-back calls per measurement.")  # fmt: skip
@click.option("--eval", "eval_path", type=ROWS, help="Rows to run (default: synthetic) and to "
              "score each version on: accuracy with --labels, else agreement with the "
              "first.")  # fmt: skip
@LABELS_OPTION
@click.option("--url", help="Also drive this running service: its REST base URL.")
@click.option("--grpc-url", metavar="HOST:PORT", help="With --protocol grpc: the service's "
              "gRPC address (serve --grpc-port).")  # fmt: skip
@click.option("--protocol", "protocols", multiple=True,
              type=click.Choice(["rest-json", "rest-binary", "grpc"]),
              help="With --url, repeatable [default: rest-binary].")  # fmt: skip
@click.option("--concurrency", default="1,4,16", show_default=True,
              help="With --url: requests kept in flight, comma-separated.")  # fmt: skip
@click.option("--token", envvar="MODELPORT_TOKEN", help="With --url: the service's token.")
@device_options
@REPORT_OPTION
@JSON_OPTION
@TRUST_CODE_OPTION
@REPO_OPTION
def bench(
    refs: tuple[str, ...],
    batch_sizes: str,
    threads: str,
    providers: str | None,
    seconds: float,
    eval_path: Path | None,
    labels: str | None,
    url: str | None,
    grpc_url: str | None,
    protocols: tuple[str, ...],
    concurrency: str,
    token: str | None,
    report_path: Path | None,
    as_json: bool,
    trust_code: bool,
    repo_path: Path,
    device_profile: str | None,
    cpus: float | None,
    memory: str | None,
    budget_ms: float,
) -> None:
    """Latency (p50, p99) and throughput of model versions side by side; with
    --device-profile (or --cpus, --memory), on a device-like budget instead."""
    if device_profile is not None or cpus is not None or memory is not None:
        device_bench(repo_path, refs, _numbers(batch_sizes), device_profile, cpus, memory,
                     budget_ms, as_json)  # fmt: skip
        return
    from modelport.optimize.bench import bench as run
    from modelport.optimize.remote import Remote

    remote = None
    if url is not None:
        remote = Remote(url, protocols or ("rest-binary",), _numbers(concurrency), seconds,
                        token, grpc_url)  # fmt: skip
    result = run(
        Repository.open(repo_path),
        refs,
        batch_sizes=_numbers(batch_sizes),
        threads=_numbers(threads),
        providers=providers.split(",") if providers else None,
        seconds=seconds,
        eval_rows=eval_path,
        labels=labels,
        trust_code=trust_code,
        remote=remote,
        log=_log,
    )
    _show(result, report_path, as_json)


COMMANDS = (quantize, distill, bench)
