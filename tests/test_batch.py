"""Offline scoring into a prediction store, through the library API, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import modelport
from batch_support import features, repo, store_url, write_parquet
from modelport.batch import Store, open_source, score_table
from modelport.batch.database import store_url as url_of
from modelport.config import BatchConfig, LoadOptions, RuntimeConfig
from modelport.cpus import cpu_budget
from modelport.demo import mlp_onnx
from modelport.errors import BatchError

__all__ = ["repo", "store_url"]  # fixtures


def stored(store: Store, model: str, keys: list[str]) -> np.ndarray:
    found = store.lookup(model, keys)
    return np.array([found[k].outputs["logits"] for k in keys], dtype=np.float32)


def test_parquet_into_each_store_matches_the_model(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    x = features(2500)
    source = open_source(str(write_parquet(tmp_path / "x.parquet", x)))
    with repo.load("tiny") as model, Store(store_url) as store:
        summary = score_table(model, source, store, BatchConfig(key="id", chunk_rows=1000))
        expected = model.predict(x)["logits"]
        assert (summary.status, summary.rows, summary.scored, summary.rejected) == (
            "succeeded", 2500, 2500, 0,
        )  # fmt: skip
        assert store.count("tiny") == 2500
        keys = [f"row{i}" for i in range(2500)]
        np.testing.assert_allclose(stored(store, "tiny", keys), expected, rtol=1e-6)
        one = store.lookup("tiny", ["row7"])["row7"]
        assert one.version == 2
        assert one.run_id == summary.run_id
        (run,) = store.runs("tiny")
        assert (run.status, run.rows_scored, run.version) == ("succeeded", 2500, 2)
        assert (run.finished_at or 0) >= run.started_at


def test_every_file_format_and_sql_give_the_same_predictions(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    x = features(300, seed=1)
    ids = [f"k{i}" for i in range(len(x))]
    columns = {"id": ids, **{f"f{j}": x[:, j] for j in range(4)}}
    pacsv.write_csv(pa.table(columns), tmp_path / "x.csv")
    with open(tmp_path / "x.jsonl", "w") as f:
        for i, row in enumerate(x):
            f.write(json.dumps({"id": ids[i], "input": row.tolist()}) + "\n")
    write_parquet(tmp_path / "x.parquet", x)
    database = f"sqlite:///{tmp_path / 'features.db'}"
    engine = sa.create_engine(database)
    with engine.begin() as conn:
        pa_rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
        conn.execute(sa.text("CREATE TABLE feats (id TEXT, f0 REAL, f1 REAL, f2 REAL, f3 REAL)"))
        conn.execute(
            sa.text("INSERT INTO feats VALUES (:id, :f0, :f1, :f2, :f3)"),
            [{k: v if k == "id" else float(v) for k, v in r.items()} for r in pa_rows],
        )
    engine.dispose()
    every = list(range(len(x)))
    positive = [i for i in every if x[i, 0] > 0]
    sources = [
        (open_source(str(tmp_path / "x.csv")), every),
        (open_source(str(tmp_path / "x.jsonl")), every),
        (open_source(str(tmp_path / "x.parquet")), every),
        (open_source(database, table="feats"), every),
        (
            open_source(database, query="SELECT id, f0, f1, f2, f3 FROM feats WHERE f0 > 0"),
            positive,
        ),
    ]
    with repo.load("tiny:1") as model, Store(store_url) as store:
        expected = model.predict(x)["logits"]
        for source, scored in sources:
            summary = score_table(
                model, source, store, BatchConfig(key="id", chunk_rows=128, force=True)
            )
            assert summary.rejected == 0, source.description
            assert summary.scored == len(scored), source.description
            np.testing.assert_allclose(
                stored(store, "tiny", [ids[i] for i in scored]), expected[scored], rtol=1e-6
            )


def test_a_rerun_skips_what_this_version_scored_and_a_new_version_rescores(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    x = features(1000)
    path = str(write_parquet(tmp_path / "x.parquet", x))
    config = BatchConfig(key="id", chunk_rows=300)
    with Store(store_url) as store:
        with repo.load("tiny:1") as v1:
            first = score_table(v1, open_source(path), store, config)
            again = score_table(v1, open_source(path), store, config)
            forced = score_table(v1, open_source(path), store, BatchConfig(key="id", force=True))
        assert (first.scored, again.scored, again.skipped, forced.scored) == (1000, 0, 1000, 1000)
        # Changed features are rescored even by the same version.
        x[5] += 1
        write_parquet(tmp_path / "x.parquet", x)
        with repo.load("tiny:1") as v1:
            changed = score_table(v1, open_source(path), store, config)
        assert (changed.scored, changed.skipped) == (1, 999)
        with repo.load("tiny:2") as v2:
            newer = score_table(v2, open_source(path), store, config)
            expected = v2.predict(x)["logits"]
        assert newer.scored == 1000
        assert store.count("tiny") == 1000  # one current prediction per key
        assert {s.version for s in store.lookup("tiny", ["row0", "row999"]).values()} == {2}
        np.testing.assert_allclose(stored(store, "tiny", ["row5"]), expected[5:6], rtol=1e-6)


def test_bad_rows_go_to_rejects_and_the_run_goes_on(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    lines = [
        {"id": "ok1", "f0": 1, "f1": 2, "f2": 3, "f3": 4},
        {"id": "missing", "f0": 1, "f1": 2, "f2": 3},
        {"id": "text", "f0": "abc", "f1": 2, "f2": 3, "f3": 4},
        {"id": "nan", "f0": float("nan"), "f1": 2, "f2": 3, "f3": 4},  # NaN is not JSON
        {"id": "ok2", "f0": 5, "f1": 6, "f2": 7, "f3": 8},
        {"id": "ok1", "f0": 1, "f1": 1, "f2": 1, "f3": 1},
        {"f0": 1, "f1": 1, "f2": 1, "f3": 1},
    ]
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    with repo.load("tiny") as model, Store(store_url) as store:
        summary = score_table(
            model, open_source(str(path)), store, BatchConfig(key="id", max_reject_ratio=1.0)
        )
        assert (summary.rows, summary.scored, summary.rejected) == (8, 2, 6)
        reasons = {r.row: (r.key, r.reason) for r in store.rejects(summary.run_id)}
        assert reasons[1] == ("missing", "missing feature 'f3'")
        assert reasons[2] == ("text", "feature 'f0': expected a number, got 'abc'")
        assert reasons[3][0] is None
        assert reasons[3][1].startswith("not valid JSON")
        assert reasons[5] == ("ok1", "duplicate key 'ok1' in the same chunk")
        assert reasons[6] == (None, "missing key 'id'")
        assert reasons[7][1].startswith("not valid JSON")
        assert sorted(store.lookup("tiny", ["ok1", "ok2", "nan"])) == ["ok1", "ok2"]


def test_too_many_rejects_fail_the_run_but_keep_what_was_scored(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    x = features(100)
    x[:20, 1] = np.nan
    path = str(write_parquet(tmp_path / "x.parquet", x))
    with repo.load("tiny") as model, Store(store_url) as store:
        with pytest.raises(BatchError, match="20 of 100 rows were rejected, over the limit of 10%"):
            score_table(model, open_source(path), store, BatchConfig(key="id"))
        (run,) = store.runs("tiny")
        assert (run.status, run.rows_scored, run.rows_rejected) == ("failed", 80, 20)
        assert "--max-reject-ratio" in (run.error or "")
        assert store.rejects(run.run_id)[0].reason == "feature 'input' is nan"


def test_a_row_the_model_fails_on_fails_alone(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    x = np.arange(40, dtype=np.float32).reshape(10, 4)  # row 3 holds 13
    path = str(write_parquet(tmp_path / "x.parquet", x))
    with (
        repo.load("slow", options=LoadOptions(trust_code=True)) as model,
        Store(store_url) as store,
    ):
        summary = score_table(
            model,
            open_source(path),
            store,
            BatchConfig(key="id", batch_size=8, max_reject_ratio=0.5),
        )
        assert (summary.scored, summary.rejected) == (9, 1)
        (reject,) = store.rejects(summary.run_id)
        assert (reject.row, reject.key) == (3, "row3")
        assert "13 is unlucky" in reject.reason
        outputs = store.lookup("slow", ["row4"])["row4"].outputs
        np.testing.assert_array_equal(outputs["double"], x[4] * 2)
        np.testing.assert_array_equal(outputs["negative"], -x[4])


def test_mapping_columns_to_inputs(repo: modelport.Repository, tmp_path: Path) -> None:
    x = features(50)
    columns = {"id": list(range(50)), **{f"px_{j}": x[:, j] for j in range(4)}, "note": ["n"] * 50}
    pacsv.write_csv(pa.table(columns), tmp_path / "x.csv")
    source = open_source(str(tmp_path / "x.csv"))
    with repo.load("tiny") as model, Store(tmp_path / "p.db") as store:
        with pytest.raises(BatchError, match="cannot tell which columns feed input 'input'"):
            score_table(model, source, store, BatchConfig(key="id"))
        with pytest.raises(BatchError, match=r"--map names column 'px_9', which the source lacks"):
            score_table(model, source, store, BatchConfig(key="id", mapping=("input=px_0,px_9",)))
        with pytest.raises(BatchError, match="takes 4 features per row"):
            score_table(model, source, store, BatchConfig(key="id", mapping=("input=px_0,px_1",)))
        summary = score_table(model, source, store, BatchConfig(key="id", mapping=("input=px_*",)))
        assert summary.scored == 50
        # A pattern takes its columns in natural order, whatever the file's order.
        shuffled = {"id": columns["id"], **{f"px_{j}": x[:, j] for j in (3, 1, 0, 2)}}
        pacsv.write_csv(pa.table(shuffled), tmp_path / "shuffled.csv")
        mapped = BatchConfig(key="id", mapping=("input=px_*",), force=True)
        again = score_table(model, open_source(str(tmp_path / "shuffled.csv")), store, mapped)
        assert again.scored == 50
        np.testing.assert_allclose(
            stored(store, "tiny", ["0", "49"]), model.predict(x[[0, 49]])["logits"], rtol=1e-6
        )
        np.testing.assert_allclose(
            stored(store, "tiny", ["0", "49"]), model.predict(x[[0, 49]])["logits"], rtol=1e-6
        )


def test_rows_without_a_key_are_keyed_by_their_number(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    x = features(30)
    path = tmp_path / "x.csv"
    pacsv.write_csv(pa.table({f"f{j}": x[:, j] for j in range(4)}), path)
    with repo.load("tiny") as model, Store(tmp_path / "p.db") as store:
        score_table(model, open_source(str(path)), store, BatchConfig(chunk_rows=7))
        assert sorted(store.lookup("tiny", ["0", "29", "30"])) == ["0", "29"]


def test_sources_and_stores_refuse_clearly(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="no such file"):
        open_source(str(tmp_path / "missing.csv"))
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(BatchError, match=r"unknown format '\.xlsx'"):
        open_source(str(tmp_path / "x.xlsx"))
    with pytest.raises(BatchError, match="exactly one of --table or --query"):
        open_source("sqlite:///x.db")
    assert url_of("postgresql://u:secret@h/db") == "postgresql+psycopg://u:secret@h/db"
    assert url_of("p.db").startswith("sqlite:///")


def test_reading_a_store_that_does_not_exist_is_an_error_not_a_new_empty_one(
    tmp_path: Path,
) -> None:
    from modelport.errors import StoreError

    with pytest.raises(StoreError, match=r"no prediction store at .*missing\.db"):
        Store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(StoreError, match="is not a folder"):
        Store(tmp_path / "no" / "such" / "p.db")
    Store(tmp_path / "p.db").close()
    Store(tmp_path / "p.db", create=False).close()


def test_a_key_repeated_in_a_later_chunk_keeps_its_first_prediction(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    x = features(20)
    ids = [f"k{i}" for i in range(20)]
    ids[15] = "k2"  # the same key again, three chunks later
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": ids, "input": list(x)}), path)
    with repo.load("tiny") as model, Store(store_url) as store:
        summary = score_table(
            model, open_source(str(path)), store,
            BatchConfig(key="id", chunk_rows=5, max_reject_ratio=0.5),
        )  # fmt: skip
        assert (summary.rows, summary.scored, summary.rejected) == (20, 19, 1)
        (reject,) = store.rejects(summary.run_id)
        assert (reject.row, reject.key) == (15, "k2")
        assert "duplicate key 'k2'" in reject.reason
        np.testing.assert_allclose(
            stored(store, "tiny", ["k2"]), model.predict(x[2:3])["logits"], rtol=1e-6
        )
        (run,) = store.runs("tiny")
        assert (run.rows_scored, run.rows_rejected) == (19, 1)


def test_storing_other_outputs_rescores_rows_already_scored(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    x = np.arange(40, dtype=np.float32).reshape(10, 4) + 100
    path = str(write_parquet(tmp_path / "x.parquet", x))
    with (
        repo.load("slow", options=LoadOptions(trust_code=True)) as model,
        Store(tmp_path / "p.db") as store,
    ):
        only_double = BatchConfig(key="id", outputs=("double",))
        first = score_table(model, open_source(path), store, only_double)
        again = score_table(model, open_source(path), store, only_double)
        both = score_table(model, open_source(path), store, BatchConfig(key="id"))
        assert (first.scored, again.skipped, both.scored) == (10, 10, 10)
        assert set(store.lookup("slow", ["row1"])["row1"].outputs) == {"double", "negative"}


def test_a_wrong_database_fails_at_once_and_an_outage_is_retried(tmp_path: Path) -> None:
    import time

    from modelport.config import RetryPolicy
    from modelport.errors import StoreError

    with pytest.raises(StoreError, match="mysql stores are not supported"):
        Store("mysql://localhost/x")
    started = time.monotonic()
    with pytest.raises(StoreError, match='database "no_such_database" does not exist'):
        Store("postgresql://postgres@127.0.0.1:5432/no_such_database")
    assert time.monotonic() - started < 2  # not retried: waiting would not help
    closed_port = RetryPolicy(attempts=2, first_delay_s=0.1)
    with pytest.raises(StoreError, match="after 2 attempts"):
        Store("postgresql://postgres@127.0.0.1:1/x", closed_port)


def test_outputs_too_wide_for_a_page_are_stored_whole_beside_narrow_ones(
    repo: modelport.Repository, store_url: str, tmp_path: Path
) -> None:
    # PostgreSQL keeps narrow rows in the table's pages; 12 KB of outputs a row cannot be.
    modelport.add_model(repo, "wide", mlp_onnx((4, 8, 3000), seed=5))
    x = features(30)
    source = str(write_parquet(tmp_path / "x.parquet", x))
    with Store(store_url) as store:
        for name in ("tiny", "wide", "tiny"):
            with repo.load(name) as model:
                summary = score_table(model, open_source(source), store, BatchConfig(
                    key="id", force=True))  # fmt: skip
                assert summary.scored == 30
                keys = [f"row{i}" for i in range(30)]
                np.testing.assert_allclose(
                    stored(store, name, keys), model.predict(x)["logits"], rtol=1e-6
                )


def test_batches_scored_on_every_core_land_in_order(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    x = features(3000)
    source = open_source(str(write_parquet(tmp_path / "x.parquet", x)))
    one_thread = LoadOptions(runtime=RuntimeConfig(intra_op_threads=1))
    with repo.load("tiny", options=one_thread) as model, Store(tmp_path / "p.db") as store:
        assert model.runtime.parallel_calls == cpu_budget().count
        summary = score_table(model, source, store, BatchConfig(key="id", batch_size=7))
        assert summary.scored == 3000
        keys = [f"row{i}" for i in range(3000)]
        np.testing.assert_allclose(stored(store, "tiny", keys), model.predict(x)["logits"],
                                   rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    ("database", "quoted"),
    [("sqlite:///f.db", '"x; DROP TABLE ""y"""'), ("mysql://host/db", '`x; DROP TABLE "y"`')],
)
def test_the_ray_engine_quotes_a_table_name_as_its_database_does(
    database: str, quoted: str
) -> None:
    from modelport.batch.ray_engine import sql_text

    source = open_source(database, table='x; DROP TABLE "y"')
    assert sql_text(source) == f"SELECT * \nFROM {quoted}"
