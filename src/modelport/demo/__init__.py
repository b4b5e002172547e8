"""The demo model repository, built from data that ships with scikit-learn (no downloads).

- ``digits``: a scikit-learn pipeline (scaler + logistic regression) on the 8x8 digits, as ONNX.
- ``digits-cnn``: a small CNN trained on the same digits, PyTorch to ONNX (when torch is there).
- ``mlp-large``: a 1024-2048-2048-1000 MLP with fixed random weights: about 1 ms per sample on
  one core, the workload where batching and serving overhead matter.
- ``digits-code``: a code model (model.py) with pre/post-processing around ``digits``.

Sample inputs for each model are written to ``<repo>/_samples/<model>.json`` (for
``modelport predict``) and ``<model>.v2.json`` (an Open Inference Protocol request).
What ``modelport demo`` then does with the repository is in ``tour.py``.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import require
from modelport.importing import add_model
from modelport.repository import Repository
from modelport.signature import DATATYPES, dtype_name

SAMPLES = "_samples"
CODE_FOLDER = Path(__file__).parent / "digits_code"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int64)


def _digits_pipeline() -> tuple[Any, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _digits()
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y), x


def build_sklearn_digits(repo: Repository) -> None:
    pipeline, x = _digits_pipeline()
    add_model(
        repo,
        "digits",
        pipeline,
        sample_input=x[:64],
        description="8x8 digits, scikit-learn pipeline: scaler + logistic regression",
    )
    _write_sample(repo, "digits", {"input": x[:2]})


def build_torch_cnn(repo: Repository, epochs: int = 12) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y = _digits()
    images = torch.from_numpy(x.reshape(-1, 1, 8, 8) / 16.0)
    labels = torch.from_numpy(y)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(64):  # type: ignore[no-untyped-call]
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(images[batch]), labels[batch]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    sample = images[:32].numpy()
    add_model(
        repo,
        "digits-cnn",
        net.eval(),
        sample_input=sample,
        description="8x8 digits (pixels / 16), small CNN trained in PyTorch",
    )
    _write_sample(repo, "digits-cnn", {"input": sample[:2]})


def mlp_onnx(sizes: tuple[int, ...] = (1024, 2048, 2048, 1000), seed: int = 0) -> bytes:
    """An MLP with ReLU between layers and fixed He-initialized weights, as ONNX bytes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, current = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}"),
        ]
        last = i == len(sizes) - 2
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], ["logits" if last else f"a{i}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, sizes[-1]])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def build_mlp_large(repo: Repository) -> None:
    # Batching measured here (benchmarks, one core, c=64): 3.8x the requests/s of unbatched,
    # and with no delay window a lone request does not wait.
    add_model(
        repo,
        "mlp-large",
        mlp_onnx(),
        serving={"batching": {"max_batch_size": 32}},
        description="1024-2048-2048-1000 MLP, fixed random weights: a serving workload",
    )
    x = np.random.default_rng(1).standard_normal((2, 1024)).astype(np.float32)
    _write_sample(repo, "mlp-large", {"input": x})


def build_code_model(repo: Repository) -> None:
    from modelport.convert.sklearn import sklearn_to_onnx

    pipeline, x = _digits_pipeline()
    images = (x[:32].reshape(-1, 8, 8) * (255 / 16)).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "digits-code"
        shutil.copytree(CODE_FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__"))
        (folder / "classifier.onnx").write_bytes(sklearn_to_onnx(pipeline, x[:64]))
        add_model(
            repo,
            "digits-code",
            folder,
            trust_code=True,  # our own code, from modelport/demo/digits_code
            sample_input={"image": images},
            description="8x8 grayscale digits (0-255) -> digit, confidence, name",
        )
    _write_sample(repo, "digits-code", {"image": images[:2]})


def _write_sample(repo: Repository, name: str, inputs: dict[str, np.ndarray]) -> None:
    """``<name>.json`` for ``modelport predict``, ``<name>.v2.json`` for curl and any V2 client."""
    folder = repo.root / SAMPLES
    folder.mkdir(exist_ok=True)
    payload = {k: v.tolist() for k, v in inputs.items()}
    (folder / f"{name}.json").write_text(json.dumps(payload) + "\n")
    request = {
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": DATATYPES[dtype_name(v.dtype)],
                "data": v.ravel().tolist(),
            }
            for k, v in inputs.items()
        ]
    }
    (folder / f"{name}.v2.json").write_text(json.dumps(request) + "\n")


BATCH_TABLE = "digits-table.csv"  # in _samples: the digits to score in batch
STORE = "_predictions.db"  # in the demo repository: where the demo's batch run stores them


def write_batch_table(root: str | Path) -> Path:
    """The digits as a table to score in batch: ``id`` (d0, d1...) and the pixels px0..px63."""
    x, _ = _digits()
    path = Path(root) / SAMPLES / BATCH_TABLE
    path.parent.mkdir(exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *(f"px{i}" for i in range(x.shape[1]))])
        writer.writerows([f"d{i}", *(int(v) for v in row)] for i, row in enumerate(x))
    return path


def build_demo(
    root: str | Path, with_torch: bool | None = None, log: Callable[[str], Any] = print
) -> Repository:
    """Build (or add a new version of each model to) the demo repository at ``root``.

    ``with_torch=None`` includes the CNN when torch is installed. Needs the ``sklearn`` extra.
    """
    require("sklearn", "sklearn")
    if with_torch is None:
        with_torch = importlib.util.find_spec("torch") is not None
    elif with_torch:
        require("torch", "torch")
    repo = Repository.init(root)
    steps: list[tuple[str, Callable[[Repository], None]]] = [
        ("digits", build_sklearn_digits),
        ("mlp-large", build_mlp_large),
        ("digits-code", build_code_model),
    ]
    if with_torch:
        steps.insert(1, ("digits-cnn", build_torch_cnn))
    for name, build in steps:
        log(f"building {name} ...")
        build(repo)
    return repo
