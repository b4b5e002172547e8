"""The endpoint a user would write by hand: FastAPI + onnxruntime, no batching.

    MODEL_PATH=repo/digits/1/model.onnx .venv/bin/uvicorn --app-dir benchmarks \\
        fastapi_baseline:app --loop uvloop --http httptools --no-access-log

``POST /predict`` takes the same JSON body as the Open Inference Protocol's V2 infer endpoint
(``{"inputs": [{"name", "shape", "datatype", "data"}]}``) and answers
``{"outputs": [{"name", "shape", "data"}]}``. The endpoint is a plain ``def``, so FastAPI runs
it in its threadpool; the response goes through FastAPI's default JSON encoding.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = "FP32"
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(
    os.environ["MODEL_PATH"], options, providers=["CPUExecutionProvider"]
)
output_names = [o.name for o in session.get_outputs()]
app = FastAPI()


@app.post("/predict")
def predict(request: InferRequest) -> dict[str, Any]:
    feeds = {t.name: np.asarray(t.data, dtype=np.float32).reshape(t.shape) for t in request.inputs}
    results = session.run(output_names, feeds)
    return {
        "outputs": [
            {"name": name, "shape": list(value.shape), "data": value.ravel().tolist()}
            for name, value in zip(output_names, results, strict=True)
        ]
    }


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
