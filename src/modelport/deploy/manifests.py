"""Writing manifests: Kubernetes' or KServe's objects as YAML, into a folder of their own.

write_kubernetes(models, KubernetesConfig(name="digits", image="digits:2"), Path("k8s"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelport.deploy.folders import new_folder
from modelport.deploy.kserve import kserve_objects
from modelport.deploy.kubernetes import (
    TOKEN_KEY,
    KubernetesConfig,
    autoscaler,
    deployment,
    disruption_budget,
    service,
)
from modelport.deploy.models import ShippedModel
from modelport.errors import require


def objects(models: list[ShippedModel], config: KubernetesConfig) -> list[dict[str, Any]]:
    """Every object to apply: the Deployment's four, or with ``kserve`` KServe's two."""
    if config.kserve:
        return kserve_objects(models, config)
    return [deployment(models, config), service(config), autoscaler(config),
            disruption_budget(config)]  # fmt: skip


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    require("yaml", "deploy")
    import yaml

    return str(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False))


def write_kubernetes(
    models: list[ShippedModel], config: KubernetesConfig, output: Path, force: bool = False
) -> Path:
    """Write ``kubernetes.yaml`` (or ``kserve.yaml``) into the new folder ``output``."""
    text = dump_yaml(objects(models, config))
    header = (
        f"# modelport deploy k8s: {', '.join(m.ref for m in models)} in {config.image}.\n"
        f"# The token: kubectl create secret generic {config.secret} "
        f"--from-literal={TOKEN_KEY}=...\n"
    )
    with new_folder(output, force) as folder:
        (folder / ("kserve.yaml" if config.kserve else "kubernetes.yaml")).write_text(header + text)
    return output
