"""``modelport batch`` as a user runs it: killed and resumed, a database that goes away,
``batch status`` for cron, and the Ray engine next to the local one."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import modelport
from batch_support import cli, features, repo, write_parquet
from modelport.batch import Store
from modelport.testing import free_port

__all__ = ["repo"]  # fixture
PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"), Path("/usr/lib/postgresql/bin"))


def count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM modelport_predictions").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_killed_run_resumes_without_duplicates_or_gaps(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    rows, chunk = 4000, 100
    source = write_parquet(tmp_path / "x.parquet", features(rows))
    db = tmp_path / "p.db"
    command = [
        sys.executable, "-m", "modelport", "batch", "slow", "--trust-code", "--repo", repo.root,
        "--input", source, "--key", "id", "--store", db, "--chunk-rows", str(chunk),
        "--batch-size", str(chunk),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while count(db) < 5 * chunk and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    done = count(db)
    assert 0 < done < rows
    assert done % chunk == 0  # whole chunks only: each is one transaction

    resumed = cli("batch", "slow", "--trust-code", "--repo", repo.root, "--input", source,
                  "--key", "id", "--store", db, "--chunk-rows", str(chunk),
                  "--no-progress")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"{rows - done:,} scored, {done:,} already scored, 0 rejected" in resumed.stdout
    with Store(db) as store:
        assert store.count("slow") == rows
        found = store.lookup("slow", [f"row{i}" for i in range(rows)])
        assert len(found) == rows
        interrupted, succeeded = sorted(store.runs("slow"), key=lambda r: r.started_at)
        assert interrupted.status == "interrupted"  # its process is gone
        assert interrupted.rows_scored == done
        assert succeeded.status == "succeeded"
    with sqlite3.connect(db) as conn:
        (dupes,) = conn.execute(
            "SELECT count(*) FROM (SELECT key FROM modelport_predictions GROUP BY model, key "
            "HAVING count(*) > 1)"
        ).fetchone()
    assert dupes == 0


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    data = Path(tempfile.mkdtemp(prefix="modelport-pg-"))
    shutil.chown(data, "postgres", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", PG_BIN / "initdb", "-D", data / "db",
                    "--auth=trust", "-U", "postgres"], check=True, capture_output=True)  # fmt: skip
    port = free_port()
    (data / "port").write_text(str(port))
    pg("start", data)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", data
    finally:
        pg("stop", data)
        shutil.rmtree(data, ignore_errors=True)


def pg(action: str, data: Path) -> None:
    port = (data / "port").read_text()
    options = ["-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "-l", str(data / "log")]
    extra = ["-m", "immediate"] if action == "stop" else options
    subprocess.run(["runuser", "-u", "postgres", "--", PG_BIN / "pg_ctl", "-D", data / "db",
                    "-w", *extra, action], capture_output=True, timeout=60)  # fmt: skip


def pg_count(url: str) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(sa.text("SELECT count(*) FROM modelport_predictions")).scalar_one()
            )
    except sa.exc.DBAPIError:
        return 0
    finally:
        engine.dispose()


def test_a_database_that_goes_away_is_retried_then_fails_cleanly_and_resumes(
    repo: modelport.Repository, own_postgres: tuple[str, Path], tmp_path: Path
) -> None:
    url, data = own_postgres
    rows = 6000
    source = write_parquet(tmp_path / "x.parquet", features(rows))
    args = ["batch", "slow", "--trust-code", "--repo", repo.root, "--input", source, "--key",
            "id", "--store", url, "--chunk-rows", "100", "--batch-size", "100",
            "--no-progress"]  # fmt: skip
    command = [sys.executable, "-m", "modelport", *map(str, args)]

    def start_run() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while pg_count(url) < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        return process

    # A short outage: the run retries with backoff and finishes.
    process = start_run()
    pg("stop", data)
    time.sleep(1.5)
    pg("start", data)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "retrying in" in err
    assert pg_count(url) == rows

    # A long one: the run gives up with a clear message, and a rerun resumes.
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM modelport_predictions WHERE key >= 'row3'"))
    engine.dispose()
    left = pg_count(url)
    process = start_run()
    pg("stop", data)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "after 5 attempts" in err
    assert "run the same command again (a batch run resumes where it stopped)" in err
    assert "Traceback" not in err
    pg("start", data)
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert pg_count(url) == rows
    assert f"{left:,} already scored" in resumed.stdout


def test_a_sql_query_source_with_the_progress_line(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    database = tmp_path / "features.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE feats (id TEXT, f0 REAL, f1 REAL, f2 REAL, f3 REAL)")
        conn.executemany("INSERT INTO feats VALUES (?, ?, ?, ?, ?)",
                         [(f"k{i}", i, 1.0, 2.0, 3.0) for i in range(30)])  # fmt: skip
    query = "SELECT * FROM feats WHERE f0 < 10"
    done = cli("batch", "tiny", "--repo", repo.root, "--store", tmp_path / "p.db", "--key", "id",
               "--input", f"sqlite:///{database}", "--query", query)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "10 scored" in done.stdout
    missing = cli("batch", "tiny", "--repo", repo.root, "--store", tmp_path / "p.db",
                  "--input", f"sqlite:///{database}", "--table", "nope")  # fmt: skip
    assert missing.returncode == 1
    assert "there is no table 'nope'" in missing.stderr


def test_batch_status_exits_non_zero_when_a_model_is_stale(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    db = tmp_path / "p.db"
    source = write_parquet(tmp_path / "x.parquet", features(50))
    assert cli("batch", "tiny", "--repo", repo.root, "--input", source, "--store", db,
               "--key", "id").returncode == 0  # fmt: skip
    broken = tmp_path / "broken.csv"
    broken.write_text("a,b\n1,2\n")
    refused = cli("batch", "slow", "--trust-code", "--repo", repo.root, "--input", broken,
                  "--store", db)  # fmt: skip
    assert refused.returncode == 1
    assert "cannot tell which columns feed input 'input'" in refused.stderr
    nan = features(10)
    nan[:5] = np.nan
    failed = cli("batch", "slow", "--trust-code", "--repo", repo.root, "--store", db, "--input",
                 write_parquet(tmp_path / "nan.parquet", nan))  # fmt: skip
    assert failed.returncode == 1
    assert "5 of 10 rows were rejected" in failed.stderr

    fresh = cli("batch", "status", "--store", db, "--max-age", "24h")
    assert fresh.returncode == 1  # 'slow' has no good run
    lines = fresh.stdout.splitlines()
    assert lines[0].split() == [
        "MODEL",
        "VERSION",
        "ROWS",
        "AGE",
        "MAX",
        "AGE",
        "STATE",
        "LATEST",
        "RUN",
    ]
    assert lines[1].split()[:2] == ["slow", "-"]
    assert "NEVER SCORED" in lines[1]
    assert lines[2].split()[:2] == ["tiny", "2"]
    assert "fresh" in lines[2]

    report = json.loads(
        cli("batch", "status", "--store", db, "--json", "--max-age", "tiny=0s").stdout
    )
    tiny = next(r for r in report if r["model"] == "tiny")
    assert (tiny["stale"], tiny["version"], tiny["rows"], tiny["max_age_s"]) == (True, 2, 50, 0)

    with sqlite3.connect(db) as conn:  # only the good model left: fresh, exit 0
        conn.execute("DELETE FROM modelport_runs WHERE model = 'slow'")
    ok = cli("batch", "status", "--store", db, "--max-age", "1h")
    assert ok.returncode == 0, ok.stdout
    assert cli("batch", "status", "--store", db, "--max-age", "tiny=0s").returncode == 1
    missing = cli("batch", "status", "--store", tmp_path / "typo.db")
    assert missing.returncode == 1
    assert "no prediction store at" in missing.stderr
    bad = cli("batch", "status", "--store", db, "--max-age", "soon")
    assert bad.returncode == 2
    assert "'soon' is not an age" in bad.stderr


def test_the_ray_engine_stores_exactly_what_the_local_engine_stores(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    x = features(3000)
    x[7, 2] = np.nan
    source = write_parquet(tmp_path / "x.parquet", x, row_group=500)
    common = ["batch", "tiny", "--repo", repo.root, "--input", source, "--key", "id",
              "--chunk-rows", "400", "--no-progress"]  # fmt: skip
    local = cli(*common, "--store", tmp_path / "local.db")
    assert local.returncode == 0, local.stderr
    on_ray = cli(*common, "--store", tmp_path / "ray.db", "--engine", "ray", timeout=300)
    assert on_ray.returncode == 0, on_ray.stderr
    assert "2,999 scored, 0 already scored, 1 rejected" in on_ray.stdout

    def table(db: Path) -> list[tuple[object, ...]]:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "SELECT model, key, version, outputs, input_hash FROM modelport_predictions "
                "ORDER BY key"
            ).fetchall()

    assert len(table(tmp_path / "local.db")) == 2999
    assert table(tmp_path / "ray.db") == table(tmp_path / "local.db")
    with Store(tmp_path / "ray.db") as store:
        (reject,) = store.rejects(store.runs()[0].run_id)
        assert (reject.key, reject.reason) == ("row7", "feature 'input' is nan")


def test_a_failed_run_says_why_and_outputs_may_be_listed_with_commas(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    x = features(10)
    x[:4, 0] = np.nan
    source = write_parquet(tmp_path / "x.parquet", x)
    failed = cli("batch", "slow", "--trust-code", "--repo", repo.root, "--input", source,
                 "--key", "id", "--store", tmp_path / "p.db")  # fmt: skip
    assert failed.returncode == 1
    assert "First: row 0: feature 'input' is nan; row 1: feature 'input' is nan" in failed.stderr
    done = cli("batch", "slow", "--trust-code", "--repo", repo.root, "--input", source,
               "--key", "id", "--store", tmp_path / "q.db", "--outputs", "negative,double",
               "--max-reject-ratio", "0.5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Store(tmp_path / "q.db") as store:
        assert set(store.lookup("slow", ["row9"])["row9"].outputs) == {"negative", "double"}


def test_the_ray_engine_reads_a_table_whose_name_needs_quoting(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    database = tmp_path / "features.db"
    name = 'daily "scores"; DROP TABLE keep'  # a space, quotes, and SQL after a semicolon
    quoted = '"' + name.replace('"', '""') + '"'
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE keep (id TEXT)")
        conn.execute(f"CREATE TABLE {quoted} (id TEXT, f0 REAL, f1 REAL, f2 REAL, f3 REAL)")
        conn.executemany(f"INSERT INTO {quoted} VALUES (?, ?, ?, ?, ?)",
                         [(f"k{i}", i, 1.0, 2.0, 3.0) for i in range(30)])  # fmt: skip
    done = cli("batch", "tiny", "--repo", repo.root, "--store", tmp_path / "p.db", "--key", "id",
               "--input", f"sqlite:///{database}", "--table", name, "--engine", "ray",
               "--no-progress", timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "30 scored" in done.stdout
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM keep").fetchone() == (0,)  # still there
