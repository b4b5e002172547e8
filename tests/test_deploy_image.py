"""``modelport build``: real images built with podman, run, and called with tritonclient.

The images (tests/containers.py) are built once per run; the first build on a machine also
makes the local base image with debootstrap and fills modelport's wheel cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

import modelport
from containers import TOKEN, Image, build, podman, run_cli, start, stop
from modelport.deploy.folders import new_folder
from modelport.manifest import artifacts_digest, read_manifest
from modelport.testing import free_port

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], np.float32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def context_only(repo: Path, tmp_path: Path, *sources: str) -> Path:
    context = tmp_path / "context"
    done = run_cli(
        "build", *[str(repo / s) for s in sources], "--tag", "t:1", "--context", str(context),
        "--context-only",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return context


def locked(context: Path) -> dict[str, str]:
    pins = {}
    lines = (context / "lock.txt").read_text() + (context / "lock-modelport.txt").read_text()
    for line in lines.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[name] = rest.split()[0]
    return pins


def test_an_onnx_image_locks_exact_versions_and_carries_no_training_frameworks(
    ship_repo: Path, tmp_path: Path
) -> None:
    context = context_only(ship_repo, tmp_path, "tiny:1")
    pins = locked(context)
    assert (
        pins["onnxruntime"]
        == read_manifest(ship_repo / "tiny" / "1").requirements["packages"]["onnxruntime"]
    )
    assert {"modelport", "numpy", "grpcio", "redis"} <= set(pins)
    assert not {"torch", "scikit-learn", "skl2onnx", "six"} & set(pins)
    assert all("--hash=sha256:" in line for line in (context / "lock.txt").read_text().splitlines()
               if line and not line.startswith("#"))  # fmt: skip
    assert sorted(p.name for p in (context / "models" / "tiny").iterdir()) == ["1"]
    containerfile = (context / "Containerfile").read_text()
    for needed in ("USER 10001:10001", "EXPOSE 8000 8001", "HEALTHCHECK", "/v2/health/ready"):
        assert needed in containerfile
    # The packages come before the models: a new model version leaves them cached.
    assert containerfile.index("lock.txt") < containerfile.index("COPY models/")


def test_a_code_models_pins_come_with_it(ship_repo: Path, tmp_path: Path) -> None:
    assert locked(context_only(ship_repo, tmp_path, "sixer:1"))["six"] == "1.16.0"


def test_versions_whose_pins_conflict_cannot_share_an_image(
    ship_repo: Path, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    done = run_cli(
        "build", str(ship_repo / "sixer:1"), str(ship_repo / "sixer:2"), "--tag", "t:1",
        "--context", str(context), "--context-only",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "six: 1.16.0 (sixer:1), 1.17.0 (sixer:2)" in done.stderr
    assert "one image each" in done.stderr
    assert not context.exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written beside it either


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{repo}/nothing", "--tag", "t:1"], "does not exist"),
        (["{repo}/tiny:9", "--tag", "t:1"], "has no version 9"),
        (["{repo}/tiny", "--tag", "Bad Tag!"], "is not a valid image reference"),
        (["{repo}/tiny", "--tag", "t:1", "--builder", "no-such-builder"], "no container builder"),
        (["{repo}/tiny", "--tag", "t:1", "--context-only"], "needs --context"),
    ],
)
def test_bad_input_is_one_clear_line(
    ship_repo: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli("build", *[a.format(repo=ship_repo) for a in args])
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stderr.startswith("error: ")
    assert done.stderr.count("\n") == 1, done.stderr


def test_no_builder_installed_is_one_clear_line(ship_repo: Path, tmp_path: Path) -> None:
    done = run_cli("build", str(ship_repo / "tiny"), "--tag", "t:1", env={"PATH": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.startswith("error: no container builder found (podman or docker")
    assert "--context-only" in done.stderr


def test_no_auth_is_baked_in_only_on_purpose(ship_repo: Path, tmp_path: Path) -> None:
    done = run_cli(
        "build", str(ship_repo / "tiny:1"), "--tag", "t:1", "--context", str(tmp_path / "c"),
        "--context-only", "--no-auth",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    containerfile = (tmp_path / "c" / "Containerfile").read_text()
    assert '"--no-auth"]' in containerfile
    assert 'io.modelport.no-auth="true"' in containerfile
    default = context_only(ship_repo, tmp_path, "tiny:1") / "Containerfile"
    assert "--no-auth" not in default.read_text()


def test_an_existing_context_folder_is_refused_unless_forced(
    ship_repo: Path, tmp_path: Path
) -> None:
    (tmp_path / "context").mkdir()
    (tmp_path / "context" / "mine.txt").write_text("keep me")
    args = ["build", str(ship_repo / "tiny:1"), "--tag", "t:1", "--context-only"]
    done = run_cli(*args, "--context", str(tmp_path / "context"))
    assert done.returncode == 1
    assert "exists" in done.stderr
    assert "--force" in done.stderr
    assert (tmp_path / "context" / "mine.txt").read_text() == "keep me"
    done = run_cli(*args, "--context", str(tmp_path / "context"), "--force")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "context" / "mine.txt").exists()
    assert (tmp_path / "context" / "Containerfile").is_file()


def test_an_output_folder_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out"

    def fail_midway() -> None:
        with new_folder(target) as folder:
            (folder / "half.txt").write_text("written before the failure")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        fail_midway()
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "old.txt").write_text("old")
    with new_folder(target, force=True) as folder:
        (folder / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_failing_builder_shows_its_last_lines_and_leaves_nothing(
    ship_repo: Path, tmp_path: Path, container_env: None
) -> None:
    done = run_cli(
        "build", str(ship_repo / "tiny:1"), "--tag", "t:1", "--base-image",
        "localhost/modelport-no-such-base:1", "--context", str(tmp_path / "context"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "podman build failed (exit" in done.stderr
    assert "its last lines" in done.stderr
    assert "modelport-no-such-base" in done.stderr
    assert not (tmp_path / "context").exists()


def triton_http_predict(url: str, model: str, version: str = "") -> dict[str, np.ndarray]:
    client = triton_http.InferenceServerClient(url.removeprefix("http://"))
    item = triton_http.InferInput("x" if model == "sixer" else "input", list(X.shape), "FP32")
    item.set_data_from_numpy(X)
    result = client.infer(model, [item], model_version=version, headers=AUTH)
    names = ["y", "six"] if model == "sixer" else ["logits"]
    return {name: result.as_numpy(name) for name in names}


def test_the_image_serves_rest_and_grpc_as_tritonclient_expects(
    image_v1: Image, ship_repo: Path
) -> None:
    container = start(image_v1.tag, port=free_port(), grpc_port=free_port())
    try:
        expected = modelport.load(ship_repo / "tiny" / "1").predict(X)["logits"]
        got = triton_http_predict(container.url, "tiny")
        np.testing.assert_allclose(got["logits"], expected, rtol=1e-6)
        grpc = triton_grpc.InferenceServerClient(container.grpc)
        item = triton_grpc.InferInput("input", list(X.shape), "FP32")
        item.set_data_from_numpy(X)
        result = grpc.infer("tiny", [item], headers={"authorization": f"Bearer {TOKEN}"})
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6)
        assert grpc.is_server_ready()
        assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    finally:
        stop(container)


def test_each_version_runs_with_its_own_pins(image_v1: Image, image_v2: Image) -> None:
    for image, six in ((image_v1, b"1.16.0"), (image_v2, b"1.17.0")):
        container = start(image.tag, port=free_port(), grpc_port=free_port())
        try:
            assert list(triton_http_predict(container.url, "sixer")["six"]) == [six, six]
        finally:
            stop(container)


def test_it_runs_as_a_user_that_cannot_change_the_models(image_v1: Image) -> None:
    done = podman(
        "run", "--rm", "--entrypoint", "sh", image_v1.tag, "-c",
        "id -u; touch /models/tiny/1/model.onnx || echo refused",
    )  # fmt: skip
    assert done.stdout.split() == ["10001", "refused"]


def test_it_refuses_to_start_without_a_token_and_reads_one_from_a_file(
    image_v1: Image, tmp_path: Path
) -> None:
    done = podman("run", "--rm", image_v1.tag, check=False)
    assert done.returncode != 0
    assert "pass --token (or --token-file)" in done.stderr
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o644)
    mounted = "/run/secrets/modelport_token"
    container = start(
        image_v1.tag, "-v", f"{secret}:{mounted}:ro,Z", "-e", f"MODELPORT_TOKEN_FILE={mounted}",
        "-e", "MODELPORT_TOKEN=", port=free_port(), grpc_port=free_port(),
    )  # fmt: skip
    try:
        assert triton_http_predict(container.url, "tiny")["logits"].shape == (2, 3)
    finally:
        stop(container)


def test_labels_say_what_is_inside(image_v1: Image, ship_repo: Path) -> None:
    inspected = json.loads(podman("image", "inspect", image_v1.tag).stdout)[0]
    labels = inspected["Config"]["Labels"]
    assert labels["io.modelport.models"] == "sixer:1,tiny:1"
    assert labels["io.modelport.version"] == modelport.__version__
    assert labels["io.modelport.no-auth"] == "false"
    assert labels["org.opencontainers.image.created"].startswith("20")
    for name in ("tiny", "sixer"):
        digest = artifacts_digest(read_manifest(ship_repo / name / "1").artifacts)
        assert labels[f"io.modelport.model.{name}.1.sha256"] == digest
    assert inspected["Config"]["User"] == "10001:10001"


def layers(tag: str) -> list[str]:
    return list(json.loads(podman("image", "inspect", tag).stdout)[0]["RootFS"]["Layers"])


def test_a_new_model_version_rebuilds_only_its_layer_and_layers_are_reproducible(
    image_v1: Image, image_v2: Image, ship_repo: Path, base_image: str
) -> None:
    changed = build(ship_repo, "localhost/modelport-test:v1b", "tiny:2", "sixer:1", base=base_image)
    before, after = layers(image_v1.tag), layers(changed.tag)
    assert len(before) == len(after)
    # sixer's layer comes first (the larger), then tiny's: only tiny's differs.
    same = [a == b for a, b in zip(before, after, strict=True)]
    assert same == [True] * (len(before) - 1) + [False]
    # tiny:2 was copied in two builds onto different layers: the same files, the same layer.
    assert layers(image_v2.tag)[-1] == after[-1]


def test_a_cpu_limit_sizes_onnxruntime_threads(image_v1: Image) -> None:
    container = start(image_v1.tag, "--cpus=1", port=free_port(), grpc_port=free_port())
    try:
        logs = podman("logs", container.name).stderr
    finally:
        stop(container)
    assert "onnxruntime threads per model instance: 1 (" in logs
    assert "cgroup quota 1 CPUs" in logs
