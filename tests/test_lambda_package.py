"""``modelport build --lambda`` and ``--lambda-zip``: the packages run for real, through the AWS
Lambda runtime interface client (awslambdaric) against a local Runtime API (lambda_runtime.py).

The zip is built for Lambda's default runtime, python3.12, and run by a python3.12 (pyenv's)
with the runtime client beside it, as Lambda runs it; the image shares its package layers with
the container tests' image_v2 (same models, same lock: podman's cache), so only the runtime
client's layer is new.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
import yaml

import modelport
from containers import podman, run_cli
from lambda_events import function_url, http_api, rest_api
from lambda_runtime import LambdaRuntime
from modelport.cli.deploy import build as build_command
from modelport.deploy.aws_lambda import LambdaConfig, build_lambda_zip
from modelport.deploy.lambda_limits import ZIP_UNZIPPED_BYTES
from modelport.manifest import sha256

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], np.float32)
HANDLER = "modelport.serverless.handler.handler"
LAMBDA_TAG = "localhost/modelport-test:lambda"


def infer_event(shape: Any = http_api, name: str = "tiny") -> dict[str, Any]:
    item = triton_http.InferInput("x" if name == "sixer" else "input", list(X.shape), "FP32")
    item.set_data_from_numpy(X, binary_data=True)
    body, size = triton_http.InferenceServerClient.generate_request_body([item])
    headers = {"inference-header-content-length": str(size)}
    return shape("POST", f"/v2/models/{name}/infer", body, headers, binary=True)  # type: ignore[no-any-return]


def outputs(reply: dict[str, Any]) -> Any:
    assert reply["statusCode"] == 200, reply
    length = int(reply["headers"]["inference-header-content-length"])
    body = base64.b64decode(reply["body"])
    return triton_http.InferenceServerClient.parse_response_body(body, header_length=length)


def cfn_lint(*templates: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), *map(str, templates)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def lambda_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The Python of Lambda's default runtime (3.12, from pyenv here), and the runtime
    interface client for it in a folder of its own: Lambda's runtime brings its own, so the
    zip carries none."""
    found = [
        shutil.which("python3.12"),
        *glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")),
    ]
    works = [
        p for p in found if p and subprocess.run([p, "-c", ""], capture_output=True).returncode == 0
    ]
    assert works, "the Lambda zip tests need a python3.12: on PATH, or pyenv's"
    python = works[0]
    client = tmp_path_factory.mktemp("awslambdaric-312")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(client), "--python-version", "3.12", "--only-binary=:all:",
         "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
         "awslambdaric>=3.0"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return python, client


@pytest.fixture(scope="module")
def zipped(ship_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny:2 as the zip package for Lambda's default runtime, python3.12."""
    output = tmp_path_factory.mktemp("lambda-zip") / "fn"
    build_lambda_zip([str(ship_repo / "tiny:2")], LambdaConfig(), output=output)
    return output


@pytest.fixture(scope="module")
def unzipped(zipped: Path) -> Path:
    task = zipped.parent / "var-task"  # as Lambda unpacks it in /var/task
    with zipfile.ZipFile(zipped / "function.zip") as archive:
        archive.extractall(task)
    return task


def run_zip(
    task: Path, runtime: LambdaRuntime, python: tuple[str, Path], **env: str
) -> subprocess.Popen[bytes]:
    """awslambdaric on python3.12, on the zip alone, as Lambda's runtime runs it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPORT_", "PYTHON"))}
    executable, client = python
    return subprocess.Popen(
        [executable, "-m", "awslambdaric", HANDLER], cwd=task,
        env={**clean, "PYTHONPATH": f"{task}:{client}", "AWS_LAMBDA_RUNTIME_API": runtime.address,
             **env},
    )  # fmt: skip


def test_the_zip_runs_under_the_runtime_client(
    zipped: Path, unzipped: Path, ship_repo: Path, lambda_python: tuple[str, Path]
) -> None:
    info = json.loads((zipped / "package.json").read_text())
    assert info["models"] == ["tiny:2"]
    assert info["zipped_bytes"] <= 50 * 2**20
    assert info["unzipped_bytes"] <= ZIP_UNZIPPED_BYTES
    assert not (unzipped / "uvloop").exists()  # what a function never runs is left out
    assert (unzipped / "models" / "tiny" / "2" / "manifest.json").is_file()
    expected = modelport.load(ship_repo / "tiny" / "2").predict(X)["logits"]
    with LambdaRuntime() as runtime:
        started = time.monotonic()
        process = run_zip(
            unzipped, runtime, lambda_python, MODELPORT_REPOSITORY=str(unzipped / "models")
        )
        try:
            for shape in (http_api, rest_api, function_url):
                result = outputs(runtime.invoke(infer_event(shape)))
                np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6)
            assert runtime.first_next is not None
            assert runtime.first_next - started < 10  # init: the models loaded once
            ready = runtime.invoke(http_api("GET", "/v2/models/tiny/versions/2/ready"))
            assert json.loads(ready["body"]) == {"name": "tiny", "ready": True}
            bad = runtime.invoke({"hello": "world"})
            assert bad["statusCode"] == 400
            assert "not an HTTP event" in json.loads(bad["body"])["error"]
            where = runtime.invoke(http_api("GET", "/v2"))  # modelport from the zip, not here
            assert json.loads(where["body"])["name"] == "modelport"
        finally:
            process.terminate()
            process.wait(10)


def test_a_function_without_its_repository_fails_its_init_clearly(
    unzipped: Path, lambda_python: tuple[str, Path]
) -> None:
    with LambdaRuntime() as runtime:
        process = run_zip(unzipped, runtime, lambda_python)
        try:
            error = runtime.wait_init_error(30)
        finally:
            process.wait(30)
    assert "MODELPORT_REPOSITORY is not set" in error["errorMessage"]
    assert process.returncode == 1


def test_the_templates_pass_cfn_lint(zipped: Path, lambda_image: tuple[str, Path]) -> None:
    template = yaml.safe_load((zipped / "template.yaml").read_text())
    function = template["Resources"]["ModelsFunction"]["Properties"]
    assert function["Runtime"] == "python3.12"
    assert function["Handler"] == HANDLER
    assert function["Environment"]["Variables"]["MODELPORT_REPOSITORY"] == "/var/task/models"
    assert function["Events"]["Api"]["Type"] == "HttpApi"
    _, context = lambda_image
    image = yaml.safe_load((context / "template.yaml").read_text())
    properties = image["Resources"]["ModelsFunction"]["Properties"]
    assert (properties["PackageType"], properties["MemorySize"]) == ("Image", 3008)
    assert properties["ImageUri"] == LAMBDA_TAG
    cfn_lint(zipped / "template.yaml", context / "template.yaml")


def test_every_lambda_option_sets_a_config_field() -> None:
    options = {p.name for p in build_command.params if p.name and p.name.startswith("lambda_")}
    fields = {f.name for f in dataclasses.fields(LambdaConfig)} - {"trust_code", "trust_pickle"}
    renamed = {"lambda_memory_mb": "memory_mb", "lambda_timeout_s": "timeout_s",
               "lambda_arch": "architecture", "lambda_tmp_mb": "tmp_mb",
               "lambda_python": "python", "lambda_via_s3": "via_s3"}  # fmt: skip
    assert {renamed[o] for o in options - {"lambda_image", "lambda_zip"}} == fields


def big_version(repo: Path, tmp_path: Path) -> Path:
    """A copy of tiny:1 with 260 MB more (a sparse file, hashed into its manifest)."""
    folder = tmp_path / "models" / "huge" / "1"
    folder.mkdir(parents=True)
    for item in (repo / "tiny" / "1").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    with (folder / "weights.bin").open("wb") as handle:
        handle.truncate(ZIP_UNZIPPED_BYTES + 10 * 2**20)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"] = "huge"
    manifest["artifacts"]["weights.bin"] = sha256(folder / "weights.bin")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder.parent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lambda-zip", "--lambda-memory-mb", "256"], "raise --lambda-memory-mb"),
        (["--lambda-zip", "--lambda-memory-mb", "20000"], "within 128-10240"),
        (["--lambda-zip", "--lambda-tmp-mb", "100"], "within 512-10240"),
        (["--lambda-zip", "--lambda-python", "3.9"], "3.12, 3.13, 3.14"),
        (["--lambda-zip", "--tag", "t:1"], "takes no --tag"),
        (["--lambda"], "Missing option '--tag'"),
        (["--lambda", "--tag", "t:1", "--lambda-arch", "arm64"], "built on such a machine"),
        (
            ["--lambda", "--tag", "t:1", "--base-image", "public.ecr.aws/lambda/python:3.11"],
            "Amazon Linux 2",
        ),
    ],
)
def test_bad_lambda_settings_are_one_clear_line(
    ship_repo: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli("build", str(ship_repo / "tiny:1"), "--output", str(tmp_path / "o"), *args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert not (tmp_path / "o").exists()


def test_a_package_over_lambdas_limit_names_what_to_drop(ship_repo: Path, tmp_path: Path) -> None:
    huge = big_version(ship_repo, tmp_path)
    done = run_cli(
        "build", str(huge), str(ship_repo / "tiny:1"), "--lambda-zip", "--output",
        str(tmp_path / "o"), "--lambda-memory-mb", "4096",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "over Lambda's limit of 250 MB (262144000 bytes)" in done.stderr
    assert "the biggest parts: model huge:1 (260.0 MB), model tiny:1" in done.stderr
    assert "build an image instead (--lambda" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def lambda_image(
    ship_repo: Path, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """sixer:2 and tiny:2, image_v2's models: the same lock, so the same cached package layers."""
    output = tmp_path_factory.mktemp("lambda-image") / "fn"
    started = time.monotonic()
    done = run_cli(
        "build", str(ship_repo / "sixer:2"), str(ship_repo / "tiny:2"), "--lambda", "--tag",
        LAMBDA_TAG, "--base-image", base_image, "--output", str(output), "--lambda-memory-mb",
        "3008",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    print(f"lambda image built in {time.monotonic() - started:.1f} s")
    assert "MODELPORT_TRUST_CODE=1" in (output / "Containerfile").read_text()
    return LAMBDA_TAG, output


@pytest.fixture
def running_image(lambda_image: tuple[str, Path]) -> Iterator[tuple[LambdaRuntime, float]]:
    with LambdaRuntime() as runtime:
        name = f"mp-lambda-{os.getpid()}"
        started = time.monotonic()
        podman(
            "run", "-d", "--rm", "--name", name, "--network=host", "--read-only",
            "-e", f"AWS_LAMBDA_RUNTIME_API={runtime.address}", lambda_image[0],
        )  # fmt: skip
        try:
            yield runtime, started
        finally:
            podman("rm", "--force", "--time", "0", name, check=False)  # it ignores SIGTERM


def test_the_image_answers_events_through_its_entrypoint(
    running_image: tuple[LambdaRuntime, float], ship_repo: Path
) -> None:
    runtime, started = running_image
    expected = modelport.load(ship_repo / "tiny" / "2").predict(X)["logits"]
    result = outputs(runtime.invoke(infer_event(function_url)))
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6)
    sixer = outputs(runtime.invoke(infer_event(rest_api, "sixer")))  # code model: trusted
    assert sixer.as_numpy("six").tolist() == [b"1.17.0", b"1.17.0"]
    assert runtime.first_next is not None
    print(f"image init (podman run to first /next): {runtime.first_next - started:.2f} s")
    bad = runtime.invoke(http_api("POST", "/v2/models/tiny/infer", "{bad"))
    assert (bad["statusCode"], "malformed JSON" in bad["body"]) == (400, True)
    inspected = podman("image", "inspect", "--format", "{{json .Labels}}", LAMBDA_TAG)
    labels = json.loads(inspected.stdout)
    assert labels["io.modelport.lambda"] == "true"
