from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import modelport

# The container tests' session fixtures: images are built once per run, shared by their files.
from containers import (  # noqa: F401
    base_image,
    container_env,
    image_v1,
    image_v2,
    services_image,
    ship_repo,
)  # fmt: skip
from modelport.demo import mlp_onnx
from modelport.testing import RunningServer, free_port


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="session")
def digits_pipeline(digits: tuple[np.ndarray, np.ndarray]) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = digits
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


@pytest.fixture(scope="session")
def tiny_onnx() -> bytes:
    """A 4-8-3 MLP: input 'input' float32 [-1, 4], output 'logits' float32 [-1, 3]."""
    return mlp_onnx((4, 8, 3), seed=3)


@pytest.fixture
def tiny_onnx_file(tmp_path: Path, tiny_onnx: bytes) -> Path:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_onnx)
    return path


@pytest.fixture
def one_node_onnx(tmp_path: Path) -> Callable[[str, int], Path]:
    """Write a model of one float op, x -> y, stamped with an opset, and return its path."""
    from onnx import TensorProto, helper

    def write(op: str, opset: int) -> Path:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8
        )
        path = tmp_path / f"{op.lower()}-{opset}.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    return write


@pytest.fixture
def repo(tmp_path: Path) -> modelport.Repository:
    return modelport.Repository.init(tmp_path / "models")


@pytest.fixture(scope="module")
def grpc_port() -> int:
    """A free port for the module's ``server`` to serve gRPC on."""
    return free_port()


@pytest.fixture(scope="module")
def wire(server: RunningServer) -> Iterator[httpx.Client]:
    """A client of the module's own ``server`` fixture, a real process, over a loopback socket."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


CODE_MODEL = """
import numpy as np


class Doubler:
    signature = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 2]}],
    }

    def load(self, path):
        self.factor = float((path / "factor.txt").read_text())

    def predict(self, batch):
        return {"y": batch["x"] * self.factor}
"""


@pytest.fixture
def code_folder(tmp_path: Path) -> Path:
    """A code model that multiplies its input by the number in factor.txt (2)."""
    folder = tmp_path / "doubler"
    folder.mkdir()
    (folder / "model.py").write_text(CODE_MODEL)
    (folder / "factor.txt").write_text("2")
    return folder


@pytest.fixture
def external_data_onnx() -> Callable[[str, str], bytes]:
    """ONNX bytes, y = x + w, whose tensor w keeps its data in the file ``location``: in the
    graph's initializers, its sparse initializers, a Constant node, or an If branch."""
    from onnx import TensorProto, helper

    def build(where: str, location: str) -> bytes:
        w = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
        w.ClearField("float_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "4")):
            w.external_data.add(key=key, value=value)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        nodes, initializers, sparse = [helper.make_node("Add", ["x", "w"], ["y"])], [], []
        constant = helper.make_node("Constant", [], ["w"], value=w)
        if where == "initializer":
            initializers.append(w)
        elif where == "sparse_initializer":
            indices = helper.make_tensor("w_indices", TensorProto.INT64, [1], [0])
            sparse.append(helper.make_sparse_tensor(w, indices, [1]))
        elif where == "constant":
            nodes.insert(0, constant)
        else:  # inside an If node's branch
            branch = helper.make_graph(
                [constant],
                "branch",
                [],
                [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])],
            )
            cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
            initializers.append(cond)
            nodes.insert(0, helper.make_node("If", ["cond"], ["w"], then_branch=branch,
                                             else_branch=branch))  # fmt: skip
        graph = helper.make_graph(nodes, "g", [x], [y], initializer=initializers,
                                  sparse_initializer=sparse)  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        return bytes(model.SerializeToString())

    return build


@pytest.fixture(scope="session")
def churn() -> tuple[Any, Any, Any]:
    """(pipeline, training frame, unseen frame): see tabular_models.py."""
    from tabular_models import churn, churn_pipeline

    frame, left = churn(400)
    unseen, _ = churn(200, seed=1)
    return churn_pipeline(frame, left), frame, unseen
