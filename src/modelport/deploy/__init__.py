"""Shipping: container images with frozen dependencies, and the manifests that run them.

- ``models.py``: which model versions ship (``SOURCE[:VERSION]`` made concrete)
- ``lock.py``: the lock file of exact versions and sha256 sums, and its wheels
- ``image.py``: the build context (Containerfile, lock, wheels, models, labels)
- ``builder.py``: podman or docker builds it; image references checked
- ``compose.py``: a Compose stack: replicas behind HAProxy, Redis, Prometheus
- ``kubernetes.py``: Deployment, Service, HPA, PDB; ``kserve.py``: ServingRuntime and
  InferenceService; ``manifests.py`` writes them as YAML
- ``folders.py``: output folders written whole or not at all

    from modelport.deploy import ImageConfig, build_image
    build_image(["models/digits"], ImageConfig(tag="digits:1"))
"""

from modelport.deploy.builder import BuildResult, build_image, check_tag
from modelport.deploy.image import ImageConfig

__all__ = ["BuildResult", "ImageConfig", "build_image", "check_tag"]
