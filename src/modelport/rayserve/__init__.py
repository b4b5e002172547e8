"""Serving on Ray Serve: ``modelport serve SOURCE --ray`` and ``modelport deploy ray``.

    modelport serve models --ray --replicas 2          # a local cluster, started on demand
    modelport serve models --ray --ray-address 10.0.0.5:6379 --min-replicas 1 --max-replicas 4
    modelport deploy ray models -o ray                 # ray/serve.yaml, for serve deploy/KubeRay

The design: one Serve application per model, plus a front.

- A model's application is one deployment, named after the model, at the route prefix
  ``/v2/models/NAME``: Ray Serve's proxy sends that model's Open Inference Protocol calls
  (infer, metadata, ready, versions) straight to one of its replicas, and each replica runs our
  own Service (the REST routes, the engine's validation, batching, cache and metrics) over that
  model's versions. Replicas, autoscaling and CPUs are set per model (flags, else the
  manifest's ``serving.ray``), a replica that dies is replaced by Ray, and a model that fails
  or scales touches no other.
- The front (application ``_modelport`` at ``/``) answers what belongs to no model: health,
  server metadata, its own metrics, 404s naming the models served; it forwards the
  ``/v1/models/NAME:predict`` calls, which no route prefix can reach, to the model's replicas
  through a deployment handle (one more hop for /v1 only).

Why not one deployment serving the whole repository: every replica would load every model, so
models could not be scaled apart, and a large model's replicas would cost every small one's
memory. Why not an ingress deployment routing to per-model deployments: each request would take
two hops through Ray instead of one, where the proxy's hop is already most of the cost.

``plan.py`` makes the applications as data (no Ray needed: ``deploy ray`` writes them as a
``serve deploy`` config file); ``deployments.py`` holds the deployments a replica runs;
``cluster.py`` joins or starts the cluster and runs them.
"""

from modelport.rayserve.cluster import RayConfig, serve_on_ray
from modelport.rayserve.plan import App, Scaling, plan_apps, serve_config

__all__ = ["App", "RayConfig", "Scaling", "plan_apps", "serve_config", "serve_on_ray"]
