"""Smaller and faster models, with the accuracy they cost.

- ``rows.py``: calibration, evaluation and training rows read from files, checked against the
  model's signature, with an optional labels column
- ``scoring.py``: what a model's outputs mean (classes or values), accuracy and agreement,
  size and measured latency
- ``quantize.py``: int8 with onnxruntime's quantization tools (dynamic, static QDQ, auto),
  behind an accuracy budget
- ``distill.py``: a small PyTorch student trained on a teacher's outputs
- ``lineage.py``: the result imported as a new version, its parent and numbers in the manifest
- ``bench.py``: latency and throughput by batch size, threads and execution provider
- ``remote.py``: the same against a running service, by concurrency
- ``report.py``: the terminal table and the HTML page with plots

Nothing here is imported by ``import modelport``: onnxruntime's quantization tools, torch and
matplotlib load when a command first needs them.
"""
