"""``modelport deploy compose``: the stack run for real with podman-compose (PyPI), 3 replicas
behind HAProxy, Redis shared by them, Prometheus scraping each.

HAProxy, Redis and Prometheus come from one local image of Debian packages
(scripts/services_image.sh): no registry can be reached here to pull the official ones, which
are the defaults of the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import yaml

from containers import Image, podman, run_cli
from modelport.testing import free_port

REPLICAS = ("model-1", "model-2", "model-3")


@dataclass(frozen=True)
class Stack:
    folder: Path
    project: str
    url: str
    grpc: str
    prometheus: str
    token: str

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def infer(self, client: httpx.Client, value: float) -> httpx.Response:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                            "data": [value, 1.0, 2.0, 3.0]}]}  # fmt: skip
        return client.post(
            f"{self.url}/v2/models/sixer/infer", json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )  # fmt: skip

    def metric(self, service: str, name: str, **labels: str) -> float:
        """A replica's own count, read inside it (replicas publish no port)."""
        code = (
            "import urllib.request as u; r = u.Request('http://127.0.0.1:8000/metrics', "
            f"headers={{'Authorization': 'Bearer {self.token}'}}); "
            "print(u.urlopen(r, timeout=5).read().decode())"
        )
        text = podman("exec", self.container(service), "python", "-c", code).stdout
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def compose(stack_folder: Path, project: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podman_compose", "-p", project, *args], cwd=stack_folder,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def wait_for(check: object, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(
    image_v2: Image, services_image: str, ship_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("compose") / "stack"
    port, grpc, prometheus = free_port(), free_port(), free_port()
    done = run_cli(
        "deploy", "compose", str(ship_repo / "sixer:2"), str(ship_repo / "tiny:2"),
        "--image", image_v2.tag, "--replicas", "3", "-o", str(folder), "--port", str(port),
        "--grpc-port", str(grpc), "--prometheus-port", str(prometheus),
        "--lb-image", services_image, "--redis-image", services_image,
        "--prometheus-image", services_image,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    project = f"mptest{uuid.uuid4().hex[:6]}"
    up = compose(folder, project, "up", "-d")
    assert up.returncode == 0, up.stderr[-3000:]
    token = (folder / "secrets" / "token").read_text().strip()
    stack = Stack(folder, project, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc}",
                  f"http://127.0.0.1:{prometheus}", token)  # fmt: skip
    try:
        wait_for(lambda: _targets_up(stack) == 3, "Prometheus to see 3 replicas up")
        yield stack
    finally:
        compose(folder, project, "down", "-t", "5")


def _targets_up(stack: Stack) -> int:
    answer = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=2).json()
    return sum(t["health"] == "up" for t in answer["data"]["activeTargets"])


def test_the_stack_is_what_was_asked_for(stack: Stack) -> None:
    running = podman("ps", "--filter", f"label=io.podman.compose.project={stack.project}",
                     "--format", "{{.Names}}").stdout.split()  # fmt: skip
    assert sorted(running) == sorted(
        stack.container(s) for s in (*REPLICAS, "lb", "redis", "prometheus")
    )
    for service in REPLICAS:
        inspected = json.loads(podman("inspect", stack.container(service)).stdout)[0]
        assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert inspected["Config"]["User"] == "10001:10001"


def test_requests_through_the_load_balancer_reach_every_replica(stack: Stack) -> None:
    before = {s: stack.metric(s, "modelport_requests_total", model="sixer") for s in REPLICAS}
    with httpx.Client(timeout=10) as client:
        for i in range(30):
            answer = stack.infer(client, 1000.0 + i)
            assert answer.status_code == 200, answer.text
    after = {s: stack.metric(s, "modelport_requests_total", model="sixer") for s in REPLICAS}
    served = {s: after[s] - before[s] for s in REPLICAS}
    assert sum(served.values()) == 30
    assert all(n >= 5 for n in served.values()), served


def test_grpc_goes_through_the_load_balancer_too(stack: Stack) -> None:
    client = triton_grpc.InferenceServerClient(stack.grpc)
    item = triton_grpc.InferInput("input", [1, 4], "FP32")
    item.set_data_from_numpy(np.ones((1, 4), np.float32))
    auth = {"authorization": f"Bearer {stack.token}"}
    assert client.infer("tiny", [item], headers=auth).as_numpy("logits").shape == (1, 3)


def test_postgres_stores_predictions_when_asked(
    ship_repo: Path, tmp_path: Path
) -> None:  # written only: no PostgreSQL image can be pulled or built small here
    done = run_cli(
        "deploy", "compose", str(ship_repo / "tiny:2"), "--image", "t:1", "--postgres",
        "-o", str(tmp_path / "stack"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stack = yaml.safe_load((tmp_path / "stack" / "compose.yaml").read_text())
    assert stack["services"]["postgres"]["image"] == "docker.io/library/postgres:16"
    command = stack["services"]["model-1"]["command"]
    assert command[command.index("--store") + 1].startswith("postgresql://")
    assert "postgres" in stack["services"]["model-3"]["depends_on"]
    assert (tmp_path / "stack" / "secrets").stat().st_mode & 0o777 == 0o700


def test_a_prediction_cached_by_one_replica_is_a_hit_on_another(stack: Stack) -> None:
    def hits() -> dict[str, float]:
        return {s: stack.metric(s, "modelport_cache_total", model="sixer", event="hit")
                for s in REPLICAS}  # fmt: skip

    def misses() -> dict[str, float]:
        return {s: stack.metric(s, "modelport_cache_total", model="sixer", event="miss")
                for s in REPLICAS}  # fmt: skip

    hits_before, misses_before = hits(), misses()
    value = 7.0 + uuid.uuid4().int % 1000  # never asked before
    with httpx.Client(timeout=10) as client:
        first = stack.infer(client, value).json()
        (computed_by,) = [s for s, n in misses().items() if n > misses_before[s]]
        for _ in range(3):  # round robin: these land on the other replicas too
            assert stack.infer(client, value).json()["outputs"] == first["outputs"]
    gained = {s: n - hits_before[s] for s, n in hits().items()}
    assert sum(gained.values()) == 3
    assert any(n > 0 for s, n in gained.items() if s != computed_by), (computed_by, gained)


def test_stopping_a_replica_under_load_loses_no_request(stack: Stack) -> None:
    statuses: list[int] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                statuses.append(stack.infer(client, worker * 100000.0 + i).status_code)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    podman("stop", "--time", "20", stack.container("model-2"))
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    try:
        assert len(statuses) > 50
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    finally:
        podman("start", stack.container("model-2"), check=False)
