import threading
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport import LoadOptions, ModelLoadError, RequirementsError, RuntimeConfig


def reference(onnx: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(onnx).run(None, {"input": x})[0]


def test_load_an_onnx_file_and_predict(tiny_onnx_file: Path, tiny_onnx: bytes) -> None:
    model = modelport.load(tiny_onnx_file)
    assert model.signature.to_dict() == {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 3]}],
    }
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = model.predict(x.tolist())  # plain lists are fine
    np.testing.assert_array_equal(out["logits"], reference(tiny_onnx, x))
    assert model.metadata["providers"] == ["CPUExecutionProvider"]


def test_predict_is_safe_from_many_threads(tiny_onnx_file: Path, tiny_onnx: bytes) -> None:
    model = modelport.load(tiny_onnx_file)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((i % 5 + 1, 4)).astype(np.float32) for i in range(64)]
    results: list[np.ndarray | None] = [None] * len(inputs)

    def work(i: int) -> None:
        results[i] = model.predict(inputs[i])["logits"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got, reference(tiny_onnx, x), rtol=1e-6)


def test_thread_counts_are_configurable(tiny_onnx_file: Path) -> None:
    options = LoadOptions(runtime=RuntimeConfig(intra_op_threads=1, inter_op_threads=1))
    with modelport.load(tiny_onnx_file, options=options) as model:
        assert model.predict(np.ones((1, 4)))["logits"].shape == (1, 3)
    with pytest.raises(ValueError, match="thread counts"):
        RuntimeConfig(intra_op_threads=-1)


def test_an_unavailable_provider_is_a_clear_error(tiny_onnx_file: Path) -> None:
    options = LoadOptions(runtime=RuntimeConfig(providers=("CUDAExecutionProvider",)))
    with pytest.raises(RequirementsError, match="CUDAExecutionProvider is not available"):
        modelport.load(tiny_onnx_file, options=options)


def test_corrupt_onnx_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(
        ModelLoadError, match=r"corrupt\.onnx is not a valid ONNX file.*corrupt or truncated"
    ):
        modelport.load(bad)


def test_truncated_onnx_file_is_refused(tmp_path: Path, tiny_onnx: bytes) -> None:
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(tiny_onnx[: len(tiny_onnx) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        modelport.load(bad)


def test_loading_something_else_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelLoadError, match="modelport import"):
        modelport.load(tmp_path / "model.joblib")
    with pytest.raises(ModelLoadError, match="does not exist"):
        modelport.load(tmp_path / "nope.onnx")
    with pytest.raises(modelport.ManifestError, match="is not a model"):
        modelport.load(tmp_path)


def test_a_model_that_fails_at_run_time_raises_prediction_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from onnx import TensorProto, helper

    # Reshape to a fixed 3 elements: any batch other than 3 values fails inside onnxruntime.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [1], [3])],
    )
    path = tmp_path / "reshape.onnx"
    path.write_bytes(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
        ).SerializeToString()
    )
    model = modelport.load(path)
    assert model.predict([1, 2, 3])["y"].tolist() == [1, 2, 3]
    with pytest.raises(modelport.PredictionError, match="onnxruntime failed"):
        model.predict([1, 2])
    assert capfd.readouterr().err == ""  # the exception says it; onnxruntime's C++ log does not
