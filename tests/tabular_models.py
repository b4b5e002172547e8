"""A churn-like table and the scikit-learn pipeline people fit on one: text, categorical,
integer and float columns, missing values, ColumnTransformer + OneHotEncoder."""

from __future__ import annotations

from typing import Any

import numpy as np

NUMBERS = ["tenure_months", "monthly_charges", "support_calls"]


def churn(rows: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """A DataFrame of customers, and whether each left."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "plan": rng.choice(["basic", "plus", "pro"], rows).astype(object),
            "region": pd.Categorical(rng.choice(["north", "south", "east", "west"], rows)),
            "tenure_months": rng.integers(0, 72, rows),
            "monthly_charges": rng.normal(60, 20, rows).round(2),
            "support_calls": rng.integers(0, 10, rows),
        }
    )
    frame.loc[rng.random(rows) < 0.1, "monthly_charges"] = np.nan
    frame.loc[rng.random(rows) < 0.1, "plan"] = np.nan
    left = (frame.tenure_months < 12) ^ (frame.support_calls > 5) ^ (frame.plan == "basic")
    return frame, left.to_numpy().astype(np.int64)


def churn_pipeline(frame: Any, left: np.ndarray) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    columns = ColumnTransformer(
        [
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
            (
                "plan",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="none"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                ["plan"],
            ),
            ("region", OrdinalEncoder(), ["region"]),
        ]
    )
    model = Pipeline([("columns", columns), ("classifier", LogisticRegression(max_iter=500))])
    return model.fit(frame, left)
