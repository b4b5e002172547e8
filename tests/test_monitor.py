"""The prediction log and drift reports: a real server keeps what it predicted (SQLite and
PostgreSQL), and `modelport monitor` compares it with the training data."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

import modelport
from batch_support import POSTGRES, postgres_database
from modelport.config import PredictionLogConfig, ServerConfig
from modelport.demo import build_sklearn_digits
from modelport.errors import StoreError
from modelport.monitor.drift import compare
from modelport.monitor.store import open_log, read_log
from modelport.server.prediction_log import PredictionLog
from modelport.server.registry import load_registry
from modelport.server.requests import RequestRecord
from modelport.testing import run_server


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = modelport.Repository.init(tmp_path_factory.mktemp("monitor") / "models")
    build_sklearn_digits(repo)
    return repo.root


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]
) -> Path:
    """The training data as a user keeps it: 64 pixel columns and the label, in a CSV."""
    x, y = digits
    columns = {f"pixel{j}": x[:1200, j] for j in range(64)} | {"label": y[:1200]}
    path = tmp_path_factory.mktemp("reference") / "train.csv"
    pacsv.write_csv(pa.table(columns), path)
    return path


def predict_rows(url: str, rows: np.ndarray, per_request: int = 20) -> list[str]:
    """Send ``rows`` in requests of ``per_request``; the request ids the server answered with."""
    ids = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, len(rows), per_request):
            chunk = rows[start : start + per_request]
            answer = client.post(
                "/v1/models/digits:predict", json={"instances": chunk.tolist()},
                headers={"cache-control": "no-cache"},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            ids.append(answer.headers["x-request-id"])
    return ids


def monitor(log: str, reference: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", "monitor", "digits", "--reference", str(reference),
         "--log", log, *extra], capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# -- the log ---------------------------------------------------------------------------------


def test_every_sampled_request_is_logged_with_its_outputs(
    digits_repo: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    log = tmp_path / "predictions.db"
    x = digits[0][1200:1400]
    with run_server(digits_repo, "--log-predictions", str(log), "--sample", "1") as server:
        ids = predict_rows(server.url, x)
    logged = read_log(open_log(str(log)), "digits")  # written by shutdown at the latest
    assert [r.request_id for r in logged] == ids
    assert all(r.version == "1" and r.latency_ms > 0 for r in logged)
    assert logged[0].inputs is not None
    np.testing.assert_array_equal(logged[0].inputs["input"], x[:20])
    expected = modelport.load(digits_repo / "digits").predict(x[:20])
    np.testing.assert_array_equal(logged[0].outputs["label"], expected["label"])


def test_inputs_kept_as_hashes_and_a_sample_of_requests(
    digits_repo: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    log = tmp_path / "hashed.db"
    x = digits[0][:10]
    flags = ("--log-predictions", str(log), "--sample", "0.5", "--log-inputs", "hash")
    with run_server(digits_repo, *flags) as server:
        predict_rows(server.url, np.concatenate([x] * 200), per_request=10)  # 200 requests
    engine = open_log(str(log))
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT inputs, inputs_sha256 FROM modelport_predictions")
        ).all()
    assert 60 < len(rows) < 140  # half of 200, give or take chance
    assert {row.inputs for row in rows} == {None}
    assert len({row.inputs_sha256 for row in rows}) == 1  # the same inputs each time


def test_the_log_in_postgresql(digits_repo: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    for url in postgres_database():
        with run_server(digits_repo, "--log-predictions", url, "--sample", "1") as server:
            ids = predict_rows(server.url, digits[0][:60])
            engine = open_log(url)
            deadline = time.monotonic() + 10
            while len(read_log(engine, "digits")) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)  # written within a flush interval, while the server runs
            assert [r.request_id for r in read_log(engine, "digits")] == ids
            engine.dispose()


def logged_total(result: str) -> float:
    return REGISTRY.get_sample_value("modelport_prediction_log_total", {"result": result}) or 0.0


def test_a_database_that_goes_down_never_slows_requests(
    digits_repo: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    with pytest.raises(StoreError, match="cannot open the prediction log at postgresql"):
        open_log("postgresql://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    registry = load_registry(digits_repo, ServerConfig())
    served = registry.get("digits")
    admin = sa.create_engine(
        POSTGRES.replace("postgresql", "postgresql+psycopg") + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(sa.text("DROP DATABASE IF EXISTS modelport_log_down"))
        connection.execute(sa.text("CREATE DATABASE modelport_log_down"))
    kept = PredictionLog(PredictionLogConfig(f"{POSTGRES}/modelport_log_down", sample=1.0))
    kept.start()
    with admin.connect() as connection:  # the database goes away under the writer
        connection.execute(sa.text("DROP DATABASE modelport_log_down WITH (FORCE)"))
    admin.dispose()
    failed = logged_total("failed")
    x, outputs = {"input": digits[0][:4]}, {"label": np.zeros(4, np.int64)}
    started = time.perf_counter()
    for _ in range(100):
        kept.offer(served, x, outputs, RequestRecord("r", time.monotonic()))
    assert time.perf_counter() - started < 0.05  # 100 requests' worth: nothing waits for it
    kept.close()
    assert logged_total("failed") - failed == 100
    registry.close()


def test_a_full_queue_drops_and_counts(digits_repo: Path) -> None:
    registry = load_registry(digits_repo, ServerConfig())
    served = registry.get("digits")
    config = PredictionLogConfig(str(digits_repo.parent / "full.db"), max_queue_bytes=10_000)
    kept = PredictionLog(dataclasses.replace(config, sample=1.0))  # not started: not drained
    dropped = logged_total("dropped")
    row = {"input": np.zeros((10, 64), np.float32)}  # 2,560 bytes of inputs
    for _ in range(10):
        kept.offer(served, row, {"label": np.zeros(10, np.int64)}, RequestRecord("r", 0.0))
    assert logged_total("dropped") - dropped == 7  # 3 fit in 10,000 bytes
    registry.close()


# -- drift -------------------------------------------------------------------------------------


def test_drift_statistics_agree_with_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    same = compare("x", reference, rng.normal(0, 1, 2000))
    live = rng.normal(0.8, 1, 2000)
    moved = compare("x", reference, live)
    assert same.psi < 0.05
    assert not same.drifted
    assert moved.psi > 0.2
    assert moved.drifted
    assert moved.p_value == pytest.approx(stats.ks_2samp(reference, live).pvalue)
    plans = np.array(["basic"] * 700 + ["pro"] * 300, dtype=object)
    shifted = np.array(["basic"] * 300 + ["pro"] * 600 + ["team"] * 100, dtype=object)
    category = compare("plan", plans, shifted)
    assert (category.kind, category.test) == ("category", "chi2")
    table = np.array([[700, 300, 0], [300, 600, 100]])
    assert category.p_value == pytest.approx(stats.chi2_contingency(table).pvalue)
    assert category.drifted
    few = compare("plan", plans, np.array(["basic"] * 4 + ["pro"] * 6, dtype=object))
    assert few.psi > 0.2  # a large move in ten rows...
    assert not few.drifted  # ...that chance explains (p well over 0.01)


def test_monitor_exit_code_table_and_report(
    digits_repo: Path, digits: tuple[np.ndarray, np.ndarray], reference: Path, tmp_path: Path
) -> None:
    log = str(tmp_path / "predictions.db")
    x = digits[0]
    with run_server(digits_repo, "--log-predictions", log, "--sample", "1") as server:
        predict_rows(server.url, x[1200:1700])  # unseen rows like the training data
    steady = monitor(log, reference, "--since", "1h")
    assert steady.returncode == 0, steady.stdout + steady.stderr
    assert "pixel" not in steady.stdout  # features are named as the model's: input[j]
    assert "input[36]" in steady.stdout
    assert "label" in steady.stdout  # predicted labels against the training labels
    assert "0 of 65 drifted" in steady.stdout

    with run_server(digits_repo, "--log-predictions", log, "--sample", "1") as server:
        predict_rows(server.url, np.clip(x[1200:1700] * 0.4 + 6, 0, 16))  # a faded scanner
    report = tmp_path / "drift.html"
    drifted = monitor(log, reference, "--since", "1h", "--html", str(report))
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "DRIFT" in drifted.stdout
    page = report.read_text()
    assert page.count("<svg") == 65
    assert "DRIFT" in page


def test_monitor_explains_what_it_cannot_do(reference: Path, tmp_path: Path) -> None:
    empty = str(tmp_path / "empty.db")
    open_log(empty)
    nothing = monitor(empty, reference)
    assert nothing.returncode == 1
    assert "no predictions of model 'digits' were logged" in nothing.stderr
    bad = monitor(empty, reference, "--since", "yesterday")
    assert bad.returncode == 2
    assert "like 24h" in bad.stderr
    missing = monitor(empty, tmp_path / "nope.csv")
    assert missing.returncode == 1
    assert "nope.csv: no such file" in missing.stderr
