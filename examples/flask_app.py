"""A modelport model embedded in an existing Flask app.

    MODELPORT_MODEL=demo-models/digits flask --app examples/flask_app.py run
    curl -s localhost:5000/predict -H 'content-type: application/json' \\
        -d '{"inputs": {"input": [[0, 0, 5, 13, 9, 1, 0, 0, ...64 numbers...]]}}'
    # -> {"outputs": {"label": [0], "probabilities": [[0.99, ...]]}}

The model is loaded once, in the app factory, and shared by every request; ``Model.predict`` is
thread-safe, so a threaded server (Flask's own, gunicorn --threads) can call it concurrently.
"""

import os
from typing import Any

from flask import Flask, abort, request

import modelport

PRODUCTS = {1: {"id": 1, "name": "teapot", "price": 18.5}, 2: {"id": 2, "name": "cup", "price": 4}}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MODELPORT_MODEL"] = os.environ.get("MODELPORT_MODEL", "demo-models/digits")
    app.config.update(config or {})

    # --- the app as it was: nothing here knows about the model ----------------------------

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/products/<int:product_id>")
    def product(product_id: int) -> dict[str, Any]:
        if product_id not in PRODUCTS:
            abort(404)
        return PRODUCTS[product_id]

    # --- the model --------------------------------------------------------------------------

    model = modelport.load(app.config["MODELPORT_MODEL"])

    @app.post("/predict")
    def predict() -> tuple[dict[str, Any], int]:
        body = request.get_json()  # a missing or malformed JSON body is a 400 already
        if not isinstance(body, dict) or "inputs" not in body:
            return {"error": 'expected a JSON object {"inputs": ...}'}, 400
        # Input name -> nested list, or a bare nested list when the model has one input.
        outputs = model.predict(body["inputs"])
        return {"outputs": {name: value.tolist() for name, value in outputs.items()}}, 200

    @app.errorhandler(modelport.InvalidInputError)
    def invalid_input(exc: modelport.InvalidInputError) -> tuple[dict[str, str], int]:
        # The message names the input, what the model expects and what came.
        return {"error": str(exc)}, 400

    return app
