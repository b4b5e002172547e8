"""KServe: a ServingRuntime of our image (Open Inference Protocol v2) and an InferenceService.

The models are inside the image, so the InferenceService names no ``storageUri``: KServe
starts the runtime's container, which serves them. ``min_replicas`` 0 lets KServe's
serverless mode (Knative) scale it to zero; the first request then waits for a start.
"""

from __future__ import annotations

from typing import Any

from modelport.deploy.image import REST_PORT
from modelport.deploy.kubernetes import KubernetesConfig, container, metadata
from modelport.deploy.models import ShippedModel

_FORMATS = {"onnx": ("onnx", "1"), "python": ("modelport-python", "1")}


def formats(models: list[ShippedModel]) -> list[tuple[str, str]]:
    return sorted({_FORMATS[m.manifest.runtime] for m in models})


def serving_runtime(models: list[ShippedModel], config: KubernetesConfig) -> dict[str, Any]:
    spec = container(models, config)
    spec["name"] = "kserve-container"  # the name KServe looks for
    # KServe routes one port to the container; HTTP carries the v2 protocol and the probes.
    spec["ports"] = [{"name": "http1", "containerPort": REST_PORT, "protocol": "TCP"}]
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": metadata(config, f"{config.name}-runtime"),
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(REST_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": [
                {"name": name, "version": version, "autoSelect": False}
                for name, version in formats(models)
            ],
            "protocolVersions": ["v2"],
            "multiModel": False,
            "containers": [spec],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }


def inference_service(models: list[ShippedModel], config: KubernetesConfig) -> dict[str, Any]:
    meta = metadata(config)
    meta["annotations"] = {
        "serving.kserve.io/deploymentMode": "Serverless",  # Knative: scale to zero
        "modelport.io/models": ",".join(m.ref for m in models),
    }
    name, version = formats(models)[0]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {
            "predictor": {
                "minReplicas": config.min_replicas,
                "maxReplicas": config.max_replicas,
                "scaleMetric": "concurrency",
                "scaleTarget": 16,
                "model": {
                    "modelFormat": {"name": name, "version": version},
                    "runtime": f"{config.name}-runtime",
                    "protocolVersion": "v2",
                },
            }
        },
    }


def kserve_objects(models: list[ShippedModel], config: KubernetesConfig) -> list[dict[str, Any]]:
    return [serving_runtime(models, config), inference_service(models, config)]
