"""Metrics counted in bulk render exactly as prometheus_client's own updates would."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

import server_models
from modelport.config import ServerConfig
from modelport.server import metrics

VALUES = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 5.0]  # on, under and past the bounds


def rendered(registry: CollectorRegistry, name: str) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    ours = [line for line in lines if line.startswith(name) and "_created" not in line]
    return sorted(line.replace(name, "X") for line in ours)


def test_bulk_histogram_and_counter_match_direct_updates() -> None:
    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1)
    direct = Histogram("direct_seconds", "d", buckets=buckets, registry=registry)
    bulk = metrics.BulkHistogram(Histogram("bulk_seconds", "b", buckets=buckets, registry=registry))
    counted = Counter("direct_total", "d", registry=registry)
    bulk_counter = metrics.BulkCounter(Counter("bulk_total", "b", registry=registry))
    for value in VALUES:
        direct.observe(value)
        bulk.observe(value)
        counted.inc(2)
        bulk_counter.inc(2)
    assert rendered(registry, "bulk_seconds_count") == ["X 0.0"]  # not handed over yet
    metrics.flush()
    assert rendered(registry, "bulk_seconds") == rendered(registry, "direct_seconds")
    assert rendered(registry, "bulk_total") == rendered(registry, "direct_total")
    metrics.flush()  # a second flush hands over nothing twice
    assert rendered(registry, "bulk_seconds") == rendered(registry, "direct_seconds")


def test_several_workers_write_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")  # only read to choose
    registry = CollectorRegistry()
    counter = Counter("through_total", "t", registry=registry)
    bulk = metrics.BulkCounter(counter)
    histogram = metrics.BulkHistogram(Histogram("through_seconds", "t", registry=registry))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    bulk.inc()
    histogram.observe(0.25)
    assert registry.get_sample_value("through_total") == 1.0  # a worker killed now loses nothing
    assert registry.get_sample_value("through_seconds_sum") == 0.25


def test_what_requests_observe_is_handed_over_every_few_requests_without_a_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values kept between scrapes stay bounded: every FLUSH_EVERY admitted requests."""
    monkeypatch.setattr(metrics, "FLUSH_EVERY", 3)
    repo = server_models.build(tmp_path / "models")
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    labels = {"model": "tiny", "version": "2", "phase": "total"}

    def handed_over() -> float:
        return REGISTRY.get_sample_value("modelport_request_duration_seconds_count", labels) or 0.0

    with server_models.in_process(repo, ServerConfig(trust_code=True)) as http:
        metrics.flush()
        before = handed_over()
        for _ in range(3):  # the third is admitted after the first two have finished
            assert http.post("/v2/models/tiny/infer", json=body).status_code == 200
        assert handed_over() == before + 2
        metrics.flush()  # as a scrape does
        assert handed_over() == before + 3
