"""Small real models for the server tests, written into a repository."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import modelport
from modelport.config import ServerConfig
from modelport.demo import mlp_onnx

if TYPE_CHECKING:
    from starlette.testclient import TestClient

V2_TYPES = {
    "BOOL": 9,
    "UINT8": 2,
    "UINT16": 4,
    "UINT32": 12,
    "UINT64": 13,
    "INT8": 3,
    "INT16": 5,
    "INT32": 6,
    "INT64": 7,
    "FP16": 10,
    "FP32": 1,
    "FP64": 11,
    "BYTES": 8,
}  # fmt: skip  (ONNX TensorProto element types)

SLOW_MODEL = '''
import time

import numpy as np


class Slow:
    """Sleeps for the largest input value, then doubles the input; negative values raise."""

    signature = {
        "inputs": [{"name": "seconds", "dtype": "float32", "shape": [-1]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}],
    }

    def load(self):
        pass

    def predict(self, batch):
        seconds = batch["seconds"]
        if (seconds < 0).any():
            raise ValueError("negative seconds in /secret/internal/path.py")
        time.sleep(float(seconds.max(initial=0)))
        return {"y": seconds * 2}
'''


WHOAMI_MODEL = '''
import os

import numpy as np


class WhoAmI:
    """Answers with the id of the process that computed the answer."""

    signature = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
        "outputs": [{"name": "pid", "dtype": "int64", "shape": [-1]}],
    }

    def load(self):
        pass

    def predict(self, batch):
        return {"pid": np.full(len(batch["x"]), os.getpid(), np.int64)}
'''


def echo_all_types_onnx() -> bytes:
    """One Identity per datatype: input in_<TYPE> [-1, 2] -> output out_<TYPE>."""
    from onnx import helper

    inputs, outputs, nodes = [], [], []
    for name, code in V2_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", code, [None, 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", code, [None, 2]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "types", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def build(root: Path) -> Path:
    repo = modelport.Repository.init(root)
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=4))  # version 2
    modelport.add_model(repo, "types", echo_all_types_onnx())
    slow = root.parent / "slow-src"
    slow.mkdir(exist_ok=True)
    (slow / "model.py").write_text(SLOW_MODEL)
    modelport.add_model(repo, "slow", slow, trust_code=True)
    whoami = root.parent / "whoami-src"
    whoami.mkdir(exist_ok=True)
    (whoami / "model.py").write_text(WHOAMI_MODEL)
    modelport.add_model(repo, "whoami", whoami, trust_code=True)
    modelport.add_model(repo, "whoami-live", whoami, trust_code=True, serving={"cache": False})
    return root


@contextmanager
def in_process(source: Path, config: ServerConfig) -> Iterator[TestClient]:
    """The service for ``source`` in this process, for tests that need no socket.

        with in_process(repo, ServerConfig(trust_code=True)) as http:
            http.get("/v2/health/ready")

    Yields Starlette's TestClient, an ``httpx.Client`` whose requests run the app on an event
    loop in a background thread (httpx's own ASGITransport needs the caller's loop). It runs the
    lifespan too; the models are loaded here first, so the service is ready at once (the
    lifespan alone would load them in the background), and unloaded when the block ends.
    """
    from starlette.testclient import TestClient

    from modelport.server.registry import load_registry
    from modelport.server.service import create_app

    app = create_app(source, config)
    app.registry = load_registry(source, config)
    with TestClient(app, base_url="http://localhost") as client:
        yield client
