"""A modelport model embedded in an existing FastAPI app.

    pip install uvicorn
    MODELPORT_MODEL=demo-models/digits uvicorn examples.fastapi_app:app
    curl -s localhost:8000/predict -H 'content-type: application/json' \\
        -d '{"inputs": {"input": [[0, 0, 5, 13, 9, 1, 0, 0, ...64 numbers...]]}}'
    # -> {"outputs": {"label": [0], "probabilities": [[0.99, ...]]}}

The model is loaded once, when the app starts, and closed when it stops. ``/predict`` is a
plain ``def``: FastAPI runs it in its threadpool, so inference never blocks the event loop
(``Model.predict`` is thread-safe and onnxruntime releases the GIL while it computes).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import modelport


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Read the path here, not at import, so tests and deployments can set it before startup.
    with modelport.load(os.environ.get("MODELPORT_MODEL", "demo-models/digits")) as model:
        app.state.model = model
        yield


app = FastAPI(title="shop", lifespan=lifespan)

# --- the app as it was: nothing here knows about the model --------------------------------

PRODUCTS = {1: {"id": 1, "name": "teapot", "price": 18.5}, 2: {"id": 2, "name": "cup", "price": 4}}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/products/{product_id}")
def product(product_id: int) -> dict[str, Any]:
    if product_id not in PRODUCTS:
        raise HTTPException(status_code=404, detail="no such product")
    return PRODUCTS[product_id]


# --- the model ------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    # Input name -> nested list, or a bare nested list when the model has one input.
    inputs: dict[str, Any] | list[Any]


@app.post("/predict")
def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
    outputs = request.app.state.model.predict(body.inputs)
    return {"outputs": {name: value.tolist() for name, value in outputs.items()}}


@app.exception_handler(modelport.InvalidInputError)
def invalid_input(request: Request, exc: modelport.InvalidInputError) -> JSONResponse:
    # The message names the input, what the model expects and what came: show it to the client.
    return JSONResponse({"error": str(exc)}, status_code=400)
