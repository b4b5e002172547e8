"""Batch prediction: score tables offline into a prediction store, serve them as lookups.

    from modelport.batch import Store, open_source, score_table
    with Store("predictions.db") as store:
        score_table(repo.load("churn"), open_source("customers.parquet"), store,
                    BatchConfig(key="customer_id"))

Needs the ``batch`` extra (pyarrow, SQLAlchemy); ``postgres`` adds psycopg.
"""

from modelport.errors import require

require("pyarrow", "batch")
require("sqlalchemy", "batch")

from modelport.batch.job import RunSummary, score_table  # noqa: E402
from modelport.batch.sources import Source, open_source  # noqa: E402
from modelport.batch.store import Store  # noqa: E402
from modelport.batch.tables import Run, Stored  # noqa: E402

__all__ = ["Run", "RunSummary", "Source", "Store", "Stored", "open_source", "score_table"]
