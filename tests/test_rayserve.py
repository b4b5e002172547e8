"""modelport on Ray Serve: one local cluster for the module, the CLI joining it as a user's
existing cluster, real replicas behind Ray Serve's HTTP proxy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import modelport
from modelport.config import ServerConfig
from modelport.demo import mlp_onnx
from modelport.importing import add_model
from modelport.rayserve import RayConfig, Scaling, plan_apps
from modelport.testing import free_port

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

# The cluster decides quickly: replicas and routers report their load every half second.
FAST = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}
X = np.array([[1, 2, 3, 4]], np.float32)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A local Ray cluster with Serve's proxy on a free port, for every test here."""
    from modelport.rayserve.cluster import connect, deploy, undeploy

    saved = {name: os.environ.get(name) for name in FAST}
    os.environ.update(FAST)
    started = connect(RayConfig(), [])
    import ray

    port = free_port()
    try:
        deploy([], ServerConfig(port=port))  # starts Serve: its proxy listens from now on
        yield {"url": f"http://127.0.0.1:{port}", "port": port,
               "address": ray.get_runtime_context().gcs_address}  # fmt: skip
    finally:
        undeploy([], started)
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray") / "models"
    repo = modelport.Repository.init(root)
    add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    return root


def _expected() -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(mlp_onnx((4, 8, 3), seed=3))
    return np.asarray(session.run(None, {"input": X})[0])


@pytest.fixture(scope="module")
def served(
    cluster: dict[str, Any], models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``modelport serve models --ray --ray-address ... --replicas 2``, joined to the cluster."""
    log = tmp_path_factory.mktemp("ray-cli") / "serve.log"
    with log.open("w") as stderr:
        command = [sys.executable, "-m", "modelport", "serve", str(models), "--ray",
                   "--ray-address", cluster["address"], "--replicas", "2",
                   "--version-policy", "latest"]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 90
        while "serving tiny on Ray Serve" not in log.read_text():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield cluster["url"]
    finally:
        server.send_signal(2)
        assert server.wait(60) == 0, log.read_text()


BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def _infer(url: str, model: str = "tiny") -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", json=BODY, timeout=30)


def _replica_metrics(model: str, calls: int = 24) -> dict[str, str]:
    """Each replica's Prometheus text, by replica (actor) name, asking the deployment."""
    from ray import serve

    handle = serve.get_deployment_handle(model, app_name=model)
    answers = [handle.metrics.remote() for _ in range(calls)]
    return {name: text.decode() for name, text in (a.result() for a in answers)}


def _served_requests(text: str, model: str) -> float:
    pattern = rf'modelport_requests_total{{[^}}]*model="{model}"[^}}]*status="200"[^}}]*}} (\S+)'
    return sum(float(n) for n in re.findall(pattern, text))


def test_two_replicas_answer_the_open_inference_protocol_through_the_proxy(served: str) -> None:
    import tritonclient.http as triton

    expected = _expected()
    for _ in range(40):
        answer = _infer(served)
        assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected[0], rtol=1e-6)
    assert httpx.get(f"{served}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{served}/v2/models/tiny/ready").status_code == 200
    assert httpx.get(f"{served}/v2/models/tiny").json()["inputs"][0]["shape"] == [-1, 4]
    v1 = httpx.post(f"{served}/v1/models/tiny:predict", json={"instances": [[1, 2, 3, 4]]})
    np.testing.assert_allclose(v1.json()["predictions"][0], expected[0], rtol=1e-6)
    missing = httpx.get(f"{served}/v2/models/nope/ready")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no model named 'nope' is served; served: tiny"}

    client = triton.InferenceServerClient(served.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_model_ready("tiny")
    tensor = triton.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)  # binary, as tritonclient sends by default
    result = client.infer("tiny", [tensor])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6)

    replicas = _replica_metrics("tiny")
    assert len(replicas) == 2
    assert all(_served_requests(text, "tiny") > 0 for text in replicas.values()), replicas


class Load:
    """``threads`` callers asking one model in a loop; every answer kept with its time."""

    def __init__(self, url: str, model: str, threads: int) -> None:
        self.url, self.model = url, model
        self.answers: list[tuple[float, int]] = []  # (when, status or 0 for an error)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        url = f"{self.url}/v2/models/{self.model}/infer"
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    status = client.post(url, json=BODY).status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((time.monotonic(), status))


def _running(app: str, deployment: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))


def test_a_replica_killed_under_load_loses_only_its_requests_and_is_replaced(served: str) -> None:
    import ray

    before = set(_replica_metrics("tiny"))
    victim = sorted(before)[0]
    with Load(served, "tiny", threads=8) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        time.sleep(3.0)
    failed = [when for when, status in load.answers if status != 200]
    after_kill = [status for when, status in load.answers if when > killed_at]
    assert len(failed) <= 8, f"{len(failed)} failed: more than the 8 requests in flight"
    assert after_kill.count(200) > 50  # the other replica went on serving
    deadline = time.monotonic() + 30
    while len(replicas := set(_replica_metrics("tiny")) - {victim}) < 2:
        assert time.monotonic() < deadline, f"Ray did not replace the replica: {replicas}"
        time.sleep(0.5)
    assert _infer(served).status_code == 200


def test_autoscaling_adds_a_replica_under_load(cluster: dict[str, Any], tmp_path: Path) -> None:
    from modelport.rayserve.cluster import deploy, undeploy

    model = tmp_path / "scaled.onnx"  # one model, served as it is
    model.write_bytes(mlp_onnx((4, 8, 3), seed=4))
    scaling = Scaling(min_replicas=1, max_replicas=2, target_ongoing_requests=1,
                      upscale_delay_s=0.5, look_back_period_s=2)  # fmt: skip
    apps = plan_apps(model, ServerConfig(), scaling)[:-1]  # its application, not a front
    deploy(apps, ServerConfig(port=cluster["port"]))
    try:
        assert _running("scaled", "scaled") == 1
        with Load(cluster["url"], "scaled", threads=8) as load:
            deadline = time.monotonic() + 30
            while _running("scaled", "scaled") < 2:
                assert time.monotonic() < deadline, "no second replica within 30 s"
                time.sleep(0.2)
        assert {status for _, status in load.answers} == {200}
    finally:
        undeploy(apps, started=False)


def test_deploy_ray_writes_a_config_file_ray_serve_accepts(tmp_path: Path) -> None:
    import yaml
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    repo = modelport.Repository.init(tmp_path / "models")
    add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    elastic = {"ray": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}}
    add_model(repo, "elastic", mlp_onnx((4, 8, 3), seed=4), serving=elastic)
    result = _cli("deploy", "ray", repo.root, "-o", tmp_path / "ray", "--cluster-path", "/models")
    assert result.returncode == 0, result.stderr

    written = yaml.safe_load((tmp_path / "ray/serve.yaml").read_text())
    config = ServeDeploySchema.model_validate(written)
    apps = {app.name: app for app in config.applications}
    assert list(apps) == ["elastic", "tiny", "_modelport"]
    assert apps["tiny"].route_prefix == "/v2/models/tiny"
    assert apps["tiny"].args["source"] == "/models"
    assert apps["tiny"].deployments[0].num_replicas == 1
    scaling = apps["elastic"].deployments[0].autoscaling_config
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 4)
    for app in apps.values():  # what serve run / serve deploy do with each entry
        builder = import_attr(app.import_path)
        built = call_user_app_builder_with_args_if_necessary(builder, app.args)
        assert type(built).__name__ == "Application"


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "2"], "--replicas needs --ray"),
        (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --ray"),
        (["--ray", "--workers", "2"], "--workers cannot be used with --ray"),
        (["--ray", "--grpc-port", "8001"], "--grpc-port cannot be used with --ray"),
        (["--ray", "--replicas", "2", "--max-replicas", "3"], "--replicas and --min-replicas"),
        (["--ray", "--max-replicas", "3"], "--max-replicas needs the other"),
        (["--ray", "--target-ongoing-requests", "4"], "--target-ongoing-requests needs"),
        (["--ray", "--ray-address", "nowhere"], "--ray-address 'nowhere' is not HOST:PORT"),
    ],
)
def test_serve_on_ray_refuses_flags_that_do_not_fit(
    tiny_onnx_file: Path, flags: list[str], message: str
) -> None:
    result = _cli("serve", tiny_onnx_file, *flags)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_ray_address_that_does_not_answer_fails_fast_leaving_nothing(
    tiny_onnx_file: Path,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    command = [sys.executable, "-m", "modelport", "serve", str(tiny_onnx_file), "--ray",
               "--ray-address", address]  # fmt: skip
    cli = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, stderr = cli.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert cli.returncode == 1
    assert f"error: no Ray cluster answers at {address} (Connection refused)" in stderr
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _session(p) == cli.pid]
    assert left == []


def _session(proc: Path) -> int | None:
    try:
        return os.getsid(int(proc.name))
    except OSError:
        return None
