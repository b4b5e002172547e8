"""scikit-learn estimators and pipelines to ONNX (via skl2onnx), with a parity check.

    onnx_bytes, outputs = sklearn_to_onnx(pipeline, X[:32])

The model takes one float32 tensor named ``input`` of shape ``[-1, n_features]``. Classifiers
give ``label`` and ``probabilities`` (a plain tensor, not a list of maps); regressors
``variable``; transformers their transform.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from modelport.convert.parity import Tolerance, assert_close
from modelport.errors import ConversionError, require

INPUT_NAME = "input"


def sklearn_to_onnx(
    estimator: Any,
    sample: np.ndarray,
    tolerance: Tolerance = Tolerance(),
    target_opset: int | None = None,
) -> bytes:
    """Convert a fitted estimator; raise ConversionError if it fails or loses parity."""
    require("skl2onnx", "sklearn")
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    sample = np.asarray(sample)
    if sample.ndim != 2:
        raise ConversionError(
            f"the sample input must be a 2-D array (rows x features), got shape "
            f"{list(sample.shape)}"
        )
    final = getattr(estimator, "_final_estimator", estimator)
    options = {id(final): {"zipmap": False}} if hasattr(final, "predict_proba") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converter deprecation noise is not the user's concern
        try:
            onx = convert_sklearn(
                estimator,
                initial_types=[(INPUT_NAME, FloatTensorType([None, sample.shape[1]]))],
                options=options,
                target_opset=target_opset,
            )
        except Exception as exc:
            raise ConversionError(
                f"skl2onnx cannot convert {type(estimator).__name__}: {exc}"
            ) from exc
    data: bytes = onx.SerializeToString()
    try:
        _check_parity(estimator, data, sample, tolerance)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"{type(estimator).__name__} raised on the sample input (shape "
            f"{list(sample.shape)}): {exc}; pass rows the estimator was fitted on"
        ) from exc
    return data


def _check_parity(estimator: Any, data: bytes, sample: np.ndarray, tolerance: Tolerance) -> None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        results = session.run(None, {INPUT_NAME: sample.astype(np.float32)})
    except Exception as exc:
        raise ConversionError(f"the converted model fails in onnxruntime: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, results, strict=True))
    if "probabilities" in values and hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(sample)
        assert_close("probabilities", proba, values["probabilities"], tolerance)
        # Labels may differ only where two classes are tied within the tolerance.
        top2 = np.sort(proba, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance.atol
        labels = np.asarray(estimator.predict(sample))
        mismatched = clear & (labels != values["label"].reshape(labels.shape))
        if mismatched.any():
            raise ConversionError(
                f"output 'label' differs from the original model on {int(mismatched.sum())} "
                "sample rows with a clear winning class; the converted model is not faithful"
            )
    elif hasattr(estimator, "predict"):
        expected = np.asarray(estimator.predict(sample), dtype=np.float64)
        assert_close(names[0], expected, values[names[0]].reshape(expected.shape), tolerance)
    else:
        expected = np.asarray(estimator.transform(sample), dtype=np.float64)
        assert_close(names[0], expected, values[names[0]], tolerance)


def sklearn_metadata() -> dict[str, str]:
    import skl2onnx
    import sklearn

    return {
        "framework": "scikit-learn",
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
    }
