"""``modelport export``: a model for the edge, a browser bundle (web) or a mobile file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from modelport.cli.options import REPO_OPTION, echo_json
from modelport.export import web
from modelport.repository import Repository


@click.group()
def export() -> None:
    """Export a model to run on users' devices."""


@export.command("web")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Folder to write the bundle to."
)
@click.option("--force", is_flag=True, help="Replace --out when it holds an earlier bundle.")
@click.option(
    "--service",
    default=None,
    help="URL of the modelport server the page falls back on, takes updates and sends "
    "telemetry to (default: none; a bundle served by 'serve --web' uses its own server).",
)
@click.option(
    "--budget-ms",
    default=web.BUDGET_MS,
    show_default=True,
    type=float,
    help="A device slower than this a prediction uses the service instead.",
)
@click.option(
    "--update-interval-s",
    default=web.UPDATE_INTERVAL_S,
    show_default=True,
    type=float,
    help="How often the page asks the service for a new version (0: only at start).",
)
@click.option(
    "--webgpu",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="ONNXRUNTIME_WEB",
    help="Also run on WebGPU where the browser has it, with the WebGPU build (29 MB) of this "
    "installed onnxruntime-web (npm install onnxruntime-web@VERSION; its version must be the "
    "vendored one).",
)
@REPO_OPTION
def export_web(
    ref: str, out: Path, force: bool, service: str | None, budget_ms: float,
    update_interval_s: float, webgpu: Path | None, repo_path: Path,
) -> None:  # fmt: skip
    """A static bundle (page, modelport.js, onnxruntime-web, model) for any web host."""
    try:
        target = web.export_web(
            Repository.open(repo_path), ref, out, force=force, service=service,
            budget_ms=budget_ms, update_interval_s=update_interval_s, webgpu=webgpu,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    manifest = json.loads((target / web.WEB_MANIFEST).read_text())
    echo_json({"bundle": str(target), "bytes": size, "manifest": manifest})


@export.command("mobile")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Folder to write it to."
)
@click.option("--int8", is_flag=True, help="Export the model's quantized version (quantize).")
@click.option("--force", is_flag=True, help="Replace --out when it holds an earlier export.")
@REPO_OPTION
def export_mobile(ref: str, out: Path, int8: bool, force: bool, repo_path: Path) -> None:
    """An ORT format file for onnxruntime mobile (Android, iOS), checked for parity."""
    from modelport.export.mobile import export_mobile as run

    result = run(Repository.open(repo_path), ref, out, int8=int8, force=force)
    echo_json(
        {
            "folder": str(result.folder),
            "model": f"{result.name}:{result.version}",
            "onnx_bytes": result.onnx_bytes,
            "ort_bytes": result.ort_bytes,
            "parity_max_abs_diff": result.max_abs_diff,
            "operators": result.operators,
        }
    )


DEVICE_OPTIONS = (
    click.option(
        "--device-profile",
        type=click.Choice(["low-end", "mid-range", "high-end"]),
        default=None,
        help="Time each model in a process held to a device's CPU and memory (Linux cgroups) "
        "instead: low-end 0.5 CPU, 512m; mid-range 1 CPU, 1g; high-end 2 CPUs, 4g.",
    ),
    click.option("--cpus", type=float, default=None, help="With a device: its CPU share."),
    click.option("--memory", default=None, help="With a device: its memory (512m, 1g)."),
    click.option(
        "--budget-ms",
        type=float,
        default=web.BUDGET_MS,
        show_default=True,
        help="With a device: the page's budget a row (export web --budget-ms).",
    ),
)


def device_options(function: Any) -> Any:
    """The options of ``bench`` that run it on a device-like budget (device.py)."""
    for option in reversed(DEVICE_OPTIONS):
        function = option(function)
    return function


def device_bench(
    repo_path: Path, refs: tuple[str, ...], batch_sizes: tuple[int, ...],
    device_profile: str | None, cpus: float | None, memory: str | None, budget_ms: float,
    as_json: bool,
) -> None:  # fmt: skip
    """``bench --device-profile``: each model and batch size in a constrained process."""
    from dataclasses import replace

    from modelport.export.device import DEVICE_PROFILES, bench_on_device, parse_memory

    try:
        profile = DEVICE_PROFILES[device_profile or "low-end"]
        if cpus is not None:
            profile = replace(profile, cpus=cpus)
        if memory is not None:
            profile = replace(profile, memory_bytes=parse_memory(memory))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    repo = Repository.open(repo_path)
    reports = []
    for ref in refs:
        for batch in batch_sizes:
            report = bench_on_device(repo, ref, profile, budget_ms=budget_ms, batch=batch)
            reports.append(report)
            verdict = "within" if report["within_budget"] else "OVER"
            click.echo(
                f"{report['model']} on {profile.cpus:g} CPU / {profile.memory_bytes // 2**20} "
                f"MiB, batch {batch}: p50 {report['p50_ms']:.2f} ms, p99 {report['p99_ms']:.2f} "
                f"ms, {verdict} the page's budget of {budget_ms:g} ms a row",
                err=as_json,
            )
    if as_json:
        echo_json(reports)
