"""The model service: Open Inference Protocol (KServe V2) REST, the simple :predict form,
metrics, health, limits, workers and graceful shutdown.

    modelport serve demo-models --port 8000
"""
