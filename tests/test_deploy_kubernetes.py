"""``modelport deploy k8s``: every object validated (core ones with kubernetes-validate
--strict, KServe's against KServe's own CRD schemas), and the Deployment run by podman."""

from __future__ import annotations

import base64
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.http as triton_http
import yaml

from containers import TOKEN, Image, podman, run_cli, wait_ready
from modelport.testing import free_port

KSERVE_SCHEMAS = Path(__file__).parent / "schemas" / "kserve"  # Apache-2.0, see SOURCE.txt
K8S_VERSION = "1.33"


def generate(repo: Path, output: Path, *args: str, image: str = "localhost/digits:2") -> list[Any]:
    done = run_cli(
        "deploy", "k8s", str(repo / "tiny:2"), str(repo / "sixer:2"), "--image", image,
        "--output", str(output), *args,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (written,) = output.glob("*.yaml")
    return list(yaml.safe_load_all(written.read_text()))


def strict(schema: Any) -> Any:
    """A CRD schema as the API server's strict field validation applies it: no unknown fields
    where the schema lists properties (and does not keep unknown ones)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    plural = {"InferenceService": "inferenceservices", "ServingRuntime": "servingruntimes"}[kind]
    text = (KSERVE_SCHEMAS / f"serving.kserve.io_{plural}.yaml").read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("args", [[], ["--no-grpc"], ["--grpc-probe", "--namespace", "ml"]])
def test_core_objects_validate_strictly(ship_repo: Path, tmp_path: Path, args: list[str]) -> None:
    objects = generate(ship_repo, tmp_path / "k8s", *args)
    assert [o["kind"] for o in objects] == [
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    ]  # fmt: skip
    for item in objects:
        kubernetes_validate.validate(item, K8S_VERSION, strict=True)
    pod = objects[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"].get("httpGet", {}).get("path") in ("/v2/health/ready", None)
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "digits-token"
    assert "--trust-code" in container["args"]
    ports = [p["containerPort"] for p in container["ports"]]
    assert ports == ([8000] if "--no-grpc" in args else [8000, 8001])
    if "--grpc-probe" in args:
        assert container["readinessProbe"]["grpc"] == {"port": 8001}


def test_a_misspelt_field_fails_validation(ship_repo: Path, tmp_path: Path) -> None:
    deployment = generate(ship_repo, tmp_path / "k8s")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kserve_objects_validate_against_kserve_crds(ship_repo: Path, tmp_path: Path) -> None:
    objects = generate(ship_repo, tmp_path / "kserve", "--kserve", "--min-replicas", "0")
    assert [o["kind"] for o in objects] == ["ServingRuntime", "InferenceService"]
    for item in objects:
        errors = [e.message for e in crd_validator(item["kind"]).iter_errors(item)]
        assert errors == [], item["kind"]
    runtime, service = objects
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert {f["name"] for f in runtime["spec"]["supportedModelFormats"]} == {
        "onnx", "modelport-python",
    }  # fmt: skip
    assert runtime["spec"]["containers"][0]["image"] == "localhost/digits:2"
    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] == 0
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    # The validator does refuse what KServe would: an unknown field.
    service["spec"]["predictor"]["model"]["runtme"] = "x"
    assert next(crd_validator("InferenceService").iter_errors(service), None) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-replicas", "0"], "--min-replicas 0 needs --kserve"),
        (["--name", "Not_A_Name"], "cannot name Kubernetes objects"),
        (["--no-grpc", "--grpc-probe"], "--grpc-probe needs the gRPC port"),
    ],
)
def test_bad_settings_are_one_clear_line(
    ship_repo: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli(
        "deploy", "k8s", str(ship_repo / "tiny"), "--image", "t:1", "-o", str(tmp_path / "o"),
        *args,
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr
    assert not (tmp_path / "o").exists()


def test_podman_runs_the_generated_deployment(
    image_v2: Image, ship_repo: Path, tmp_path: Path
) -> None:
    objects = generate(
        ship_repo, tmp_path / "k8s", "--name", "mp-kube-test", "--replicas", "1",
        "--min-replicas", "1", image=image_v2.tag,
    )  # fmt: skip
    deployment = objects[0]
    # podman 4.3 publishes every containerPort on the host: give them free ports there.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for port in container["ports"]:
        port["hostPort"] = free_port()
    rest = container["ports"][0]["hostPort"]
    played = tmp_path / "deployment.yaml"
    played.write_text(yaml.safe_dump(deployment))
    # podman's secretKeyRef reads a podman secret holding a JSON map of base64 values.
    secret = json.dumps({"token": base64.b64encode(TOKEN.encode()).decode()})
    subprocess.run(
        ["podman", "secret", "create", "mp-kube-test-token", "-"], input=secret, text=True,
        capture_output=True, check=True,
    )  # fmt: skip
    try:
        podman("kube", "play", str(played))
        url = f"http://127.0.0.1:{rest}"
        wait_ready(url)
        client = triton_http.InferenceServerClient(url.removeprefix("http://"))
        item = triton_http.InferInput("x", [1, 4], "FP32")
        item.set_data_from_numpy(np.ones((1, 4), np.float32))
        result = client.infer("sixer", [item], headers={"Authorization": f"Bearer {TOKEN}"})
        assert result.as_numpy("y").tolist() == [4.0]
        inspected = json.loads(podman("inspect", "mp-kube-test-pod-0-modelport").stdout)[0]
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True
        assert inspected["Config"]["User"] == "10001:10001"
    finally:
        podman("kube", "down", str(played), check=False)
        podman("secret", "rm", "mp-kube-test-token", check=False)
