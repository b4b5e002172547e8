"""Has what the model sees moved away from what it was trained on? Per feature, a number.

    result = compare("age", reference_ages, live_ages)
    result.psi, result.p_value, result.drifted

Numbers get the population stability index over the reference's deciles and a two-sample
Kolmogorov-Smirnov test; categories (text, booleans, few integer values) the index over the
categories and a chi-squared test of the two samples' counts. A feature has drifted when both
say so: the index at least ``psi_threshold`` (the distribution moved enough to matter) and the
test's p-value under ``alpha`` (the move is not sampling noise). Either alone misleads: with a
million rows every tiny move is significant, with fifty a large index can be chance.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

PSI_THRESHOLD = 0.2  # the common rule: under 0.1 stable, 0.1-0.2 watch, over 0.2 moved
ALPHA = 0.01
_BINS = 10
_EPSILON = 1e-4  # for empty bins: the index takes a logarithm of each share
_MAX_CATEGORIES = 20  # integers with at most this many distinct values count as categories


@dataclass(frozen=True)
class Drift:
    """One feature's comparison; ``bins`` labels the shares, for plots."""

    feature: str
    kind: str  # "number" or "category"
    psi: float
    test: str  # "KS" or "chi2"
    p_value: float
    reference_n: int
    live_n: int
    drifted: bool
    bins: list[str] = field(default_factory=list)
    reference_share: list[float] = field(default_factory=list)
    live_share: list[float] = field(default_factory=list)


def kind_of(reference: np.ndarray) -> str:
    """``number`` or ``category``: text and booleans, or integers with few distinct values."""
    if reference.dtype.kind in "OUSb":
        return "category"
    if reference.dtype.kind in "iu" and len(np.unique(reference)) <= _MAX_CATEGORIES:
        return "category"
    return "number"


def compare(
    feature: str, reference: np.ndarray, live: np.ndarray,
    psi_threshold: float = PSI_THRESHOLD, alpha: float = ALPHA,
) -> Drift:  # fmt: skip
    """``live`` against ``reference`` (one feature each, any length; missing values dropped)."""
    from scipy import stats  # type: ignore[import-untyped]

    kind = kind_of(reference)
    reference, live = _present(reference, kind), _present(live, kind)
    if not len(reference) or not len(live):
        raise ValueError(f"feature {feature!r}: no values to compare (reference or live empty)")
    if kind == "number":
        reference, live = reference.astype(np.float64), live.astype(np.float64)
        edges = np.unique(np.quantile(reference, np.linspace(0, 1, _BINS + 1)[1:-1]))
        ref_counts = np.bincount(
            np.searchsorted(edges, reference, "right"), minlength=len(edges) + 1
        )
        live_counts = np.bincount(np.searchsorted(edges, live, "right"), minlength=len(edges) + 1)
        labels = _ranges(edges)
        p_value = float(stats.ks_2samp(reference, live).pvalue)
        test = "KS"
    else:
        reference, live = _labels(reference), _labels(live)
        labels = sorted(set(reference.tolist()) | set(live.tolist()))
        index = {label: i for i, label in enumerate(labels)}
        ref_counts = np.bincount([index[v] for v in reference], minlength=len(labels))
        live_counts = np.bincount([index[v] for v in live], minlength=len(labels))
        p_value = _chi2(ref_counts, live_counts)
        test = "chi2"
    ref_share = ref_counts / ref_counts.sum()
    live_share = live_counts / live_counts.sum()
    psi = _psi(ref_share, live_share)
    return Drift(
        feature, kind, psi, test, p_value, len(reference), len(live),
        drifted=psi >= psi_threshold and p_value < alpha,
        bins=labels, reference_share=ref_share.tolist(), live_share=live_share.tolist(),
    )  # fmt: skip


def _counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts: np.ndarray = np.bincount(np.searchsorted(edges, values, "right"), len(edges) + 1)
    return counts


def _labels(values: np.ndarray) -> np.ndarray:
    """Categories as text; numbers alike whatever their type (a CSV's 3 and a tensor's 3.0)."""
    if values.dtype.kind in "iuf":
        return np.array([f"{v:g}" for v in values.astype(np.float64)], dtype=object)
    return values.astype(str)


def _present(values: np.ndarray, kind: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    if kind == "number" or values.dtype.kind == "f":
        if values.dtype.kind in "fc":
            present: np.ndarray = values[~np.isnan(values)]
            return present
        return values
    kept: np.ndarray = values[[v is not None and v == v for v in values]]  # None and NaN out
    return kept


def _psi(reference: np.ndarray, live: np.ndarray) -> float:
    ref = np.clip(reference, _EPSILON, None)
    now = np.clip(live, _EPSILON, None)
    return float(np.sum((now - ref) * np.log(now / ref)))


def _chi2(reference: np.ndarray, live: np.ndarray) -> float:
    from scipy import stats

    table = np.array([reference, live])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0  # one category seen on both sides: nothing moved
    return float(stats.chi2_contingency(table).pvalue)


def _ranges(edges: np.ndarray) -> list[str]:
    bounds = [f"{e:.4g}" for e in edges]
    if not bounds:
        return ["all"]
    return [
        f"< {bounds[0]}",
        *(f"{a} - {b}" for a, b in itertools.pairwise(bounds)),
        f">= {bounds[-1]}",
    ]
