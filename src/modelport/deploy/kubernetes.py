"""Kubernetes manifests for an image of ``modelport build``: they agree with it by construction.

    deployment(models, KubernetesConfig(name="digits", image="digits:2"))   # a dict

``kubernetes.yaml`` holds a Deployment (readiness ``/v2/health/ready``, liveness
``/v2/health/live``, a startup probe, resources, a non-root security context, a read-only
root filesystem with an emptyDir at /tmp), a Service, a HorizontalPodAutoscaler and a
PodDisruptionBudget. The token comes from a Secret that is referenced, never written:
``kubectl create secret generic NAME-token --from-literal=token=...``. With ``kserve``,
``kserve.yaml`` (kserve.py) holds a ServingRuntime and an InferenceService instead of
running pods itself; manifests.py writes either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from modelport.deploy.image import GRPC_PORT, REST_PORT, UID, ImageConfig, serve_command
from modelport.deploy.models import ShippedModel
from modelport.errors import DeployError

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")
TOKEN_KEY = "token"


@dataclass(frozen=True)
class KubernetesConfig:
    """How the image runs on Kubernetes. ``min_replicas`` 0 is for KServe alone (Knative
    scales to zero; a HorizontalPodAutoscaler cannot)."""

    name: str
    image: str
    replicas: int = 2
    min_replicas: int = 2
    max_replicas: int = 10
    target_cpu_percent: int = 70
    cpu: str = "1"
    memory: str = "1Gi"
    grpc: bool = True
    grpc_probe: bool = False  # readiness over gRPC health checking instead of HTTP
    kserve: bool = False
    namespace: str | None = None

    def __post_init__(self) -> None:
        if not _DNS_LABEL.fullmatch(self.name):
            raise DeployError(
                f"{self.name!r} cannot name Kubernetes objects: use up to 52 lowercase letters, "
                "digits and '-', starting and ending with a letter or digit (--name)"
            )
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise DeployError("replicas: need 0 <= --min-replicas <= --max-replicas, max >= 1")
        if self.min_replicas == 0 and not self.kserve:
            raise DeployError(
                "--min-replicas 0 needs --kserve: KServe (Knative) scales to zero, a "
                "HorizontalPodAutoscaler cannot"
            )
        if self.grpc_probe and not self.grpc:
            raise DeployError("--grpc-probe needs the gRPC port (drop --no-grpc)")

    @property
    def secret(self) -> str:
        return f"{self.name}-token"


def labels(config: KubernetesConfig) -> dict[str, str]:
    return {"app.kubernetes.io/name": config.name, "app.kubernetes.io/part-of": "modelport"}


def metadata(config: KubernetesConfig, name: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name or config.name, "labels": labels(config)}
    if config.namespace:
        found["namespace"] = config.namespace
    return found


def container_args(models: list[ShippedModel], config: KubernetesConfig) -> list[str]:
    """The server's arguments: the image's own command, less gRPC with ``--no-grpc``."""
    args = serve_command(models, ImageConfig(tag=config.image))
    if not config.grpc:
        at = args.index("--grpc-port")
        del args[at : at + 2]
    return args


def container(models: list[ShippedModel], config: KubernetesConfig) -> dict[str, Any]:
    """The server's container spec, shared by the Deployment and KServe's ServingRuntime."""
    ports = [{"name": "http", "containerPort": REST_PORT, "protocol": "TCP"}]
    if config.grpc:
        ports.append({"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"})
    http = {"httpGet": {"path": "/v2/health/ready", "port": REST_PORT}}
    ready = {"grpc": {"port": GRPC_PORT}} if config.grpc_probe else http
    return {
        "name": "modelport",
        "image": config.image,
        "imagePullPolicy": "IfNotPresent",
        "args": container_args(models, config),
        "ports": ports,
        "env": [
            {
                "name": "MODELPORT_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": config.secret, "key": TOKEN_KEY}},
            }
        ],
        "readinessProbe": {**ready, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": REST_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": REST_PORT},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "resources": {
            "requests": {"cpu": config.cpu, "memory": config.memory},
            "limits": {"cpu": config.cpu, "memory": config.memory},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def deployment(models: list[ShippedModel], config: KubernetesConfig) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(config),
        "spec": {
            "replicas": max(config.replicas, config.min_replicas),
            "selector": {"matchLabels": labels(config)},
            "template": {
                "metadata": {
                    "labels": labels(config),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(REST_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 40,  # the server drains for 30 s
                    "containers": [container(models, config)],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def service(config: KubernetesConfig) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [
        {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"}
    ]
    if config.grpc:
        ports.append(
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
             "appProtocol": "kubernetes.io/h2c"}
        )  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(config),
        "spec": {"type": "ClusterIP", "selector": labels(config), "ports": ports},
    }


def autoscaler(config: KubernetesConfig) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(config),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.name},
            "minReplicas": max(1, config.min_replicas),
            "maxReplicas": config.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": config.target_cpu_percent,
                        },
                    },
                }
            ],
        },
    }


def disruption_budget(config: KubernetesConfig) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(config),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(config)}},
    }
