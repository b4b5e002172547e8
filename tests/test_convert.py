from typing import Any

import numpy as np
import pytest

from modelport import ConversionError, Repository, Tolerance, add_model
from modelport.convert.parity import assert_close
from modelport.convert.sklearn import sklearn_to_onnx


def test_sklearn_pipeline_keeps_its_predictions(
    repo: Repository, digits_pipeline: Any, digits: Any
) -> None:
    x, _ = digits
    add_model(repo, "digits", digits_pipeline, sample_input=x[:64])
    model = repo.load("digits")
    assert model.signature.output_names == ["label", "probabilities"]
    out = model.predict(x[100:400])
    np.testing.assert_allclose(
        out["probabilities"], digits_pipeline.predict_proba(x[100:400]), atol=1e-4
    )
    assert (out["label"] == digits_pipeline.predict(x[100:400])).mean() > 0.99
    assert model.metadata["framework"] == "scikit-learn"


def test_sklearn_regressor(repo: Repository, digits: Any) -> None:
    from sklearn.ensemble import RandomForestRegressor

    x, y = digits
    forest = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    add_model(repo, "forest", forest, sample_input=x[:32])
    got = repo.load("forest").predict(x[:50])["variable"].ravel()
    np.testing.assert_allclose(got, forest.predict(x[:50]), rtol=1e-4, atol=1e-4)


def test_parity_failure_refuses_the_conversion(digits_pipeline: Any, digits: Any) -> None:
    # float32 ONNX against the float64 original can never be exact: zero tolerance must fail.
    with pytest.raises(ConversionError, match="'probabilities' differs from the original"):
        sklearn_to_onnx(digits_pipeline, digits[0][:32], Tolerance(rtol=0, atol=0))


def test_assert_close_reports_the_difference() -> None:
    assert_close("y", np.array([1.0, 2.0]), np.array([1.0, 2.00001]), Tolerance())
    with pytest.raises(ConversionError, match=r"on 1 of 2 values \(largest difference 0.5"):
        assert_close("y", np.array([1.0, 2.0]), np.array([1.0, 2.5]), Tolerance())
    with pytest.raises(ConversionError, match="shape"):
        assert_close("y", np.zeros(2), np.zeros(3), Tolerance())
    with pytest.raises(ConversionError, match="differs"):
        assert_close("y", np.zeros(2), np.array([0.0, np.nan]), Tolerance())


def test_unconvertible_estimator(digits: Any) -> None:
    from sklearn.base import BaseEstimator

    class Custom(BaseEstimator):  # type: ignore[misc]
        def predict(self, x: np.ndarray) -> np.ndarray:
            return x[:, 0]

    with pytest.raises(
        ConversionError, match=r"skl2onnx has no converter for Custom; .* code model"
    ):
        sklearn_to_onnx(Custom(), digits[0][:8])
    with pytest.raises(ConversionError, match="2-D array"):
        sklearn_to_onnx(Custom(), digits[0][0])


@pytest.mark.slow
def test_torch_module_with_dynamic_batch(repo: Repository) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    sample = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    manifest = add_model(repo, "cnn", net, sample_input=sample)
    assert manifest.signature.inputs[0].shape == (-1, 1, 8, 8)
    assert manifest.metadata["framework"] == "pytorch"
    x = np.random.default_rng(1).standard_normal((7, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(repo.load("cnn").predict(x)["output"], expected, atol=1e-5)


@pytest.mark.slow
def test_torch_module_that_cannot_keep_parity(repo: Repository) -> None:
    import torch
    from torch import nn

    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(x)  # a different answer on every run

    with pytest.raises(ConversionError, match="'output' differs from the original"):
        add_model(repo, "noisy", Noisy(), sample_input=np.zeros((4, 3), np.float32))
    assert repo.names() == []
