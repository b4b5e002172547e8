"""Stored batch predictions as fast lookups that know their age (``serve --store``).

    GET  /v2/models/{name}/predictions/{key}
    POST /v2/models/{name}/predictions   {"keys": [...], "inputs": {key: {input: row}}}

A stored prediction comes back with its version, ``scored_at`` and age, marked ``stale`` when
older than the model's ``--max-age``. A missing or stale one, when the request carries that
key's features and the model is served here, is computed live (and stored with
``--write-back``); otherwise a missing key is 404 (GET) or ``"found": false`` (POST).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from modelport.config import LookupConfig, ServerLimits
from modelport.errors import (
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    NotStoredError,
    require,
)
from modelport.server import metrics, tracing
from modelport.server.engine import Engine, Outputs
from modelport.server.registry import Served
from modelport.server.requests import RequestRecord
from modelport.server.tensors import check_strings, json_inputs
from modelport.signature import validate_inputs

log = logging.getLogger("modelport.server")
_MAX_KEYS = 1000
_MAX_LIVE_KEYS = 100  # keys one request may have computed (and written back) live
_MAX_KEY_CHARS = 512  # the store's key column
_REFRESH_S = 5.0  # how often the runs table is re-read (ages for /metrics, model names)


@dataclass
class _LiveRun:
    run_id: str
    layout: Any


class Lookups:
    """The prediction store behind the lookup endpoints; one per process."""

    def __init__(self, config: LookupConfig, engine: Engine) -> None:
        require("sqlalchemy", "batch")
        from modelport.batch.database import redact
        from modelport.batch.freshness import MaxAge
        from modelport.batch.store import Store

        self.store = Store(config.store, create=False)
        log.info("serving stored predictions from %s", redact(self.store.url))
        self.max_age = MaxAge.parse(config.max_age)
        self.write_back = config.write_back
        self.engine = engine
        self._live_runs: dict[tuple[str, int], _LiveRun] = {}
        self._ages_read = 0.0
        self._models: set[str] = set()
        self._models_read = -_REFRESH_S

    def close(self) -> None:
        self.store.close()

    async def get(self, name: str, key: str, record: RequestRecord) -> dict[str, Any]:
        if len(key) > _MAX_KEY_CHARS:
            raise InvalidInputError(f"a key has at most {_MAX_KEY_CHARS} characters")
        (answer,) = await self.lookup(name, [key], {}, record)
        if not answer["found"]:
            raise NotStoredError(
                f"no stored prediction of model {name!r} for key {key!r}; POST its features "
                f"to /v2/models/{name}/predictions to compute one"
            )
        return answer

    async def lookup(
        self, name: str, keys: list[str], features: dict[str, Any], record: RequestRecord
    ) -> list[dict[str, Any]]:
        if self.engine.draining:
            raise NotReadyError("the server is shutting down", retry_after_s=1.0)
        served = self._served(name)
        if served is None and name not in await asyncio.to_thread(self._store_models):
            raise ModelNotFoundError(
                f"no model {name!r} here: it is neither served nor in the prediction store"
            )
        record.model, record.version = name, "store"
        if len(features) > _MAX_LIVE_KEYS:
            raise InvalidInputError(
                f"inputs carries features for {len(features)} keys; a request computes at most "
                f"{_MAX_LIVE_KEYS} keys live: send the others in further requests"
            )
        # Every key's features are checked before anything is computed or written back.
        limits = self.engine.config.limits
        batches = {
            key: self._features(served, name, key, row, limits) for key, row in features.items()
        }
        check_strings(((n, a) for b in batches.values() for n, a in b.items()), limits)
        looked_at = tracing.now_ns() if record.span is not None else 0
        found = await asyncio.to_thread(self.store.lookup, name, keys)
        if record.span is not None:
            where = {"modelport.model": name, "modelport.keys": len(keys)}
            tracing.phase(record.span, "lookup", looked_at, tracing.now_ns(), where)
        now = time.time()
        max_age = self.max_age.of(name)
        answers: list[dict[str, Any]] = []
        live: list[tuple[str, dict[str, Any], Outputs]] = []  # to write back
        for key in keys:
            stored = found.get(key)
            why = None if stored is None else _stale(stored, now, max_age, served)
            if (stored is None or why) and served is not None and key in batches:
                answers.append(await self._live(served, key, batches[key], record, live))
                continue
            result = "miss" if stored is None else "stale" if why else "hit"
            metrics.LOOKUPS.labels(name, result).inc()
            if stored is None:
                answers.append({"key": key, "found": False})
                continue
            answers.append({
                "key": key, "found": True, "source": "store", "stale": why is not None,
                **({"stale_reason": why} if why else {}),
                "model_version": str(stored.version), "scored_at": _iso(stored.scored_at),
                "age_s": round(now - stored.scored_at, 3), "outputs": stored.outputs,
            })  # fmt: skip
        if live and served is not None:  # one transaction for all of them
            await asyncio.to_thread(self._store, served.name, served.version, live)
        return answers

    def _served(self, name: str) -> Served | None:
        registry = self.engine.registry
        if registry is None or name not in registry.names():
            return None
        return registry.get(name)

    def _store_models(self) -> set[str]:
        """Models with runs in the store (re-read at most every few seconds)."""
        now = time.monotonic()
        if now - self._models_read > _REFRESH_S:
            self._models = self.store.models()
            self._models_read = now
        return self._models

    @staticmethod
    def _features(
        served: Served | None, name: str, key: str, row: Any, limits: ServerLimits
    ) -> dict[str, np.ndarray]:
        if served is None:
            raise ModelNotFoundError(
                f"model {name!r} is not served here, so key {key!r} cannot be computed live; "
                "serve the model's repository along with --store"
            )
        if not isinstance(row, dict):
            raise InvalidInputError(
                f"inputs[{key!r}] must be an object of input name -> one row of features"
            )
        try:
            batch = json_inputs({n: [v] for n, v in row.items()}, limits)  # a batch of one row
            return validate_inputs(served.model.signature, batch, served.model.limits)
        except InvalidInputError as exc:
            raise InvalidInputError(f"inputs[{key!r}]: {exc}", exc.input_name) from None

    async def _live(
        self, served: Served, key: str, batch: dict[str, np.ndarray], record: RequestRecord,
        written: list[tuple[str, dict[str, Any], Outputs]],
    ) -> dict[str, Any]:  # fmt: skip
        served = self.engine.admit(served.name, served.version, record)
        outputs = await self.engine.predict(served, batch, record)
        metrics.LOOKUPS.labels(served.name, "live").inc()
        if self.write_back:
            written.append((key, batch, outputs))
        return {
            "key": key, "found": True, "source": "live", "stale": False,
            "model_version": str(served.version), "scored_at": _iso(time.time()), "age_s": 0.0,
            "outputs": {n: _row(v) for n, v in outputs.items()},
        }  # fmt: skip

    def _store(
        self, name: str, version: int, answers: list[tuple[str, dict[str, Any], Outputs]]
    ) -> None:
        from modelport.batch.codec import Layout
        from modelport.batch.features import input_hashes
        from modelport.batch.tables import Row

        run = self._live_runs.get((name, version))
        if run is None:
            layout = Layout.of(answers[0][2])
            source = f"live answers of {socket.gethostname()} pid {os.getpid()}"
            run = _LiveRun(self.store.start_run(name, version, source, layout, "live"), layout)
            self._live_runs[(name, version)] = run
        rows = {}
        for key, batch, outputs in answers:  # a key asked twice keeps its last answer
            (blob,) = run.layout.encode(outputs)
            (digest,) = input_hashes(batch)
            rows[key] = Row(key, blob, digest, None)
        self.store.write_chunk(
            run.run_id, name, version, list(rows.values()), [], 0, first_wins=False
        )

    def refresh_ages(self) -> None:
        """Set the age gauges from the runs table (at most every few seconds)."""
        now = time.monotonic()
        if now - self._ages_read < _REFRESH_S:
            return
        self._ages_read = now
        from modelport.batch.freshness import freshness

        for entry in freshness(self.store, self.max_age):
            if entry.age_s is not None:
                metrics.PREDICTION_AGE.labels(entry.model).set(entry.age_s)


def parse_lookup(message: Any) -> tuple[list[str], dict[str, Any]]:
    """``{"keys": [...], "inputs": {...}}`` -> (keys, features by key), checked."""
    if not isinstance(message, dict) or not isinstance(message.get("keys"), list):
        raise InvalidInputError('the body must be {"keys": [...]}, with optional "inputs"')
    keys = message["keys"]
    if not keys or len(keys) > _MAX_KEYS:
        raise InvalidInputError(f"keys must hold 1 to {_MAX_KEYS} keys, got {len(keys)}")
    for key in keys:
        if not isinstance(key, str):
            raise InvalidInputError(f"each key must be a string, got {type(key).__name__}")
        if not 0 < len(key) <= _MAX_KEY_CHARS:
            raise InvalidInputError(
                f"each key must have 1 to {_MAX_KEY_CHARS} characters: key {key[:16]!r}... has "
                f"{len(key)} characters"
            )
    features = message.get("inputs", {})
    if not isinstance(features, dict):
        raise InvalidInputError('"inputs" must be an object: key -> {input name: row}')
    unknown = set(features) - set(keys)
    if unknown:
        raise InvalidInputError(f"inputs given for keys not asked for: {sorted(unknown)[:5]}")
    return keys, features


def _stale(stored: Any, now: float, max_age_s: float | None, served: Served | None) -> str | None:
    """Why a stored prediction is stale: "age" (older than --max-age) or "version" (made by an
    older version than the one served here); None when it is fresh."""
    if max_age_s is not None and now - stored.scored_at > max_age_s:
        return "age"
    if served is not None and stored.version < served.version:
        return "version"
    return None


def _row(array: np.ndarray) -> Any:
    """The first row as JSON will show it: float32 stays numpy, which orjson writes as float32
    (0.1, not 0.10000000149011612)."""
    return array[0] if array.dtype == np.float32 else array[0].tolist()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
