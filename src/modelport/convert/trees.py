"""Boosted trees to ONNX: XGBoost and LightGBM through onnxmltools, CatBoost through its own
ONNX export, each with the parity check.

    onnx_bytes = trees_to_onnx(xgb_classifier, X[:64])
    model = load_tree_file(Path("model.ubj"))      # native files: .json/.ubj, .txt, .cbm

The model takes one float32 tensor named ``input`` of shape ``[-1, n_features]``, in the order
the model was fitted on. Classifiers give ``label`` and ``probabilities`` (a plain tensor),
regressors ``variable``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelport.convert.parity import Tolerance, assert_close, check_labels, quiet_session
from modelport.convert.tabular import check_width
from modelport.errors import ConversionError, ModelLoadError, installed, require
from modelport.rows import is_frame

LIBRARIES = ("xgboost", "lightgbm", "catboost")
# Native model files, by suffix.
SUFFIXES = {".json": "xgboost", ".ubj": "xgboost", ".txt": "lightgbm", ".cbm": "catboost"}
INPUT_NAME = "input"


def library_of(model: Any) -> str | None:
    """ "xgboost", "lightgbm" or "catboost" for a fitted model of one of them, else None."""
    top = type(model).__module__.split(".")[0]
    return top if top in LIBRARIES else None


def load_tree_file(path: Path) -> Any:
    """A native XGBoost (.json, .ubj), LightGBM (.txt) or CatBoost (.cbm) model file."""
    library = SUFFIXES[path.suffix.lower()]
    require(library, "trees")
    try:
        if library == "xgboost":
            import xgboost

            booster = xgboost.Booster(model_file=str(path))
            kind = _xgboost_kind(booster)
            if kind is None:
                return booster
            model = xgboost.XGBClassifier() if kind == "classifier" else xgboost.XGBRegressor()
            model.load_model(str(path))
            return model
        if library == "lightgbm":
            import lightgbm

            return lightgbm.Booster(model_file=str(path))
        import catboost

        return catboost.CatBoost().load_model(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{library} cannot load {path}: {exc}") from exc


def _xgboost_kind(booster: Any) -> str | None:
    import json

    try:
        estimator = json.loads(booster.attr("scikit_learn") or "{}").get("_estimator_type")
    except ValueError:
        return None
    return estimator if estimator in ("classifier", "regressor") else None


def trees_to_onnx(model: Any, sample: Any, tolerance: Tolerance = Tolerance()) -> bytes:
    """Convert a fitted XGBoost, LightGBM or CatBoost model; ConversionError on failure."""
    library = library_of(model)
    if library is None:
        raise ConversionError(
            f"{type(model).__name__} is not an XGBoost, LightGBM or CatBoost model"
        )
    matrix = np.asarray(sample.to_numpy() if is_frame(sample) else sample)
    if matrix.ndim == 2 and matrix.dtype.kind not in "biuf":
        raise ConversionError(
            f"{type(model).__name__} converts to ONNX with numeric features only (neither "
            "onnxmltools nor CatBoost's ONNX export takes categorical or text features): encode "
            "such columns before the model (a scikit-learn pipeline with a OneHotEncoder, say), "
            "or import it as a code model (a folder with model.py that loads and calls it)"
        )
    if matrix.ndim != 2:
        raise ConversionError(
            f"the sample input must be a 2-D array of numbers (rows x features), got "
            f"{matrix.dtype} of shape {list(matrix.shape)}"
        )
    check_width(_n_features(model, library), matrix)
    matrix = matrix.astype(np.float32)
    # The original sees what it was fitted on (a DataFrame keeps its names), as float32.
    original = sample.astype(np.float32) if is_frame(sample) else matrix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            proto = _convert(model, library, matrix.shape[1])
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"cannot convert {type(model).__name__}: {exc}") from exc
    data: bytes = _plain_outputs(proto).SerializeToString()
    _check_parity(model, library, data, original, tolerance)
    return data


def _n_features(model: Any, library: str) -> int | None:
    for attribute in ("n_features_in_", "n_features_"):
        value = getattr(model, attribute, None)
        if isinstance(value, (int, np.integer)) and value > 0:
            return int(value)
    if library == "lightgbm" and hasattr(model, "num_feature"):
        return int(model.num_feature())
    if library == "xgboost" and hasattr(model, "num_features"):
        return int(model.num_features())
    return None


def _convert(model: Any, library: str, width: int) -> Any:
    if library == "catboost":
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            model.save_model(str(path), format="onnx")
            proto = onnx.load(str(path))
        proto.graph.input[0].name = _rename(proto, proto.graph.input[0].name, INPUT_NAME)
        outputs = proto.graph.output
        if len(outputs) == 1 and outputs[0].name != "variable":  # a regressor's "predictions"
            for node in proto.graph.node:
                node.output[:] = ["variable" if n == outputs[0].name else n for n in node.output]
            outputs[0].name = "variable"
        return proto
    require("onnxmltools", "trees")
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [(INPUT_NAME, FloatTensorType([None, width]))]
    if library == "xgboost":
        import copy

        from onnxmltools import convert_xgboost

        model = copy.deepcopy(model)  # onnxmltools reads only f0, f1... as feature names
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        booster.feature_names = None
        return convert_xgboost(model, initial_types=types)
    from onnxmltools import convert_lightgbm

    return convert_lightgbm(model, initial_types=types, zipmap=False)


def _rename(proto: Any, old: str, new: str) -> str:
    for node in proto.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    return new


def _plain_outputs(proto: Any) -> Any:
    """Probabilities as a plain tensor rather than ZipMap's list of maps, and every output's
    first dimension dynamic (onnxmltools fixes LightGBM's label at 1)."""
    import onnx

    graph = proto.graph
    for node in [n for n in graph.node if n.op_type == "ZipMap"]:
        output = next(o for o in graph.output if o.name == node.output[0])
        source = node.input[0]
        graph.node.remove(node)
        for other in graph.node:
            other.output[:] = [output.name if name == source else name for name in other.output]
        output.CopyFrom(
            onnx.helper.make_tensor_value_info(output.name, onnx.TensorProto.FLOAT, [None, None])
        )
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    return proto


def _original(model: Any, library: str, matrix: Any, classes: bool) -> np.ndarray:
    """The model's own probabilities (classifiers) or predictions, as a 2-D array."""
    if hasattr(model, "predict_proba") and classes:
        return np.asarray(model.predict_proba(matrix))
    if library == "xgboost" and type(model).__name__ == "Booster":
        import xgboost

        values = np.asarray(model.predict(xgboost.DMatrix(matrix)))
    elif library == "catboost" and classes:
        values = np.asarray(model.predict(matrix, prediction_type="Probability"))
    else:
        values = np.asarray(model.predict(matrix))
    if classes and values.ndim == 1:  # a binary booster: the positive class alone
        values = np.column_stack([1 - values, values])
    return values.reshape(len(matrix), -1)


def _check_parity(model: Any, library: str, data: bytes, sample: Any, tolerance: Tolerance) -> None:
    matrix = np.asarray(sample.to_numpy() if is_frame(sample) else sample, dtype=np.float32)
    try:
        session = quiet_session(data)
        results = session.run(None, {INPUT_NAME: matrix})
    except Exception as exc:
        raise ConversionError(f"the converted model fails in onnxruntime: {exc}") from exc
    values = dict(zip([o.name for o in session.get_outputs()], results, strict=True))
    classes = "probabilities" in values
    name = "probabilities" if classes else next(iter(values))
    expected = _original(model, library, sample, classes)
    assert_close(name, expected, values[name].reshape(expected.shape), tolerance)
    if classes and hasattr(model, "predict_proba"):
        labels = np.asarray(model.predict(sample)).reshape(-1)
        check_labels(expected, labels, values["label"], tolerance)


def trees_metadata(model: Any, sample: Any = None) -> dict[str, Any]:
    """The library's version (and onnxmltools'); with a DataFrame sample, its ``columns``, the
    order the input matrix takes them in (``Model.predict`` orders a DataFrame by them)."""
    import importlib

    library = library_of(model) or "trees"
    meta: dict[str, Any] = {
        "framework": library,
        library: importlib.import_module(library).__version__,
    }
    if library != "catboost":
        import onnxmltools

        meta["onnxmltools"] = onnxmltools.__version__
    if is_frame(sample):
        meta["columns"] = [str(c) for c in sample.columns]
    return meta


def register_trees() -> None:
    """Teach skl2onnx onnxmltools' converters, for XGBoost and LightGBM inside a pipeline."""
    require("onnxmltools", "trees")
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    if installed("xgboost"):
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        for cls, shapes in (
            (xgboost.XGBClassifier, calculate_linear_classifier_output_shapes),
            (xgboost.XGBRegressor, calculate_linear_regressor_output_shapes),
        ):
            update_registered_converter(
                cls, f"XGBoost{cls.__name__}", shapes, convert_xgboost,
                options=options if cls is xgboost.XGBClassifier else None,
            )  # fmt: skip
    if installed("lightgbm"):
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        for cls, shapes in (
            (lightgbm.LGBMClassifier, calculate_linear_classifier_output_shapes),
            (lightgbm.LGBMRegressor, calculate_linear_regressor_output_shapes),
        ):
            update_registered_converter(
                cls, f"LightGbm{cls.__name__}", shapes, convert_lightgbm,
                options=options if cls is lightgbm.LGBMClassifier else None,
            )  # fmt: skip
