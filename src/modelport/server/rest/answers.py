"""Answers kept for requests that come again byte for byte (with ``--cache memory``).

A hit skips parsing, the checks and encoding, which for a small model are most of what a
request costs; the prediction cache (the engine's) needs the parsed inputs for its key. Not
with Redis, whose users expect one shared cache that an outage or a flush empties.
"""

from __future__ import annotations

from typing import NamedTuple

from modelport.caching import LRU
from modelport.config import ServerConfig
from modelport.server.registry import Served
from modelport.server.requests import RequestRecord
from modelport.server.rest.http import Response


class AnswerKey(NamedTuple):
    """What a kept answer is found by. The body itself rather than a digest of it: exact, and
    cheaper to hash and compare."""

    model: str
    version: int
    route: str
    shape: str | None  # a header that shapes the answer (Inference-Header-Content-Length)
    body: bytes


class KeptAnswers:
    """Whole answers by the exact request; bounded by count, bytes and the cache's TTL."""

    def __init__(self, config: ServerConfig) -> None:
        self._lru: LRU[Response] | None = None
        if config.cache == "memory":
            self._lru = LRU(max_entries=10_000, max_bytes=64 * 2**20, ttl_s=config.cache_ttl_s)

    def key(
        self, served: Served, use_cache: bool, route: str, body: bytes, shape: str | None = None
    ) -> AnswerKey | None:
        """The key of the answer to ``body`` at ``route``, or None when none is kept for it."""
        if self._lru is None or not use_cache or not served.cacheable:
            return None
        return AnswerKey(served.name, served.version, route, shape, body)

    def get(self, served: Served, key: AnswerKey | None, record: RequestRecord) -> Response | None:
        """The answer kept for ``key``, counted as a cache hit."""
        if key is None or self._lru is None:
            return None
        answer = self._lru.get(key)
        if answer is not None:
            served.measured.cache_hit.inc()
            record.cache = "hit"
        return answer

    def keep(self, key: AnswerKey | None, answer: Response) -> None:
        """Keep ``answer`` for the next identical request."""
        if key is not None and self._lru is not None:
            self._lru.put(key, answer, len(answer.body) + len(key.body))
