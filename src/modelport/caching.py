"""Prediction caches: in-process LRU with TTL (the default) and Redis (shared by workers).

    cache = open_cache("memory")                 # or "redis://127.0.0.1:6379/0", or "off"
    key = cache_key("digits", 2, inputs)         # model, version and the inputs' exact bytes
    await cache.get(key); await cache.set(key, outputs)

Keys include the model version, so a new version never gets an old version's answer. Values
are encoded without pickle (a shared cache is not trusted with code). A Redis outage degrades
to no caching with a logged warning, never to errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import orjson

from modelport.errors import require

log = logging.getLogger("modelport.cache")

Outputs = dict[str, np.ndarray]
V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class Cache(Protocol):
    stats: CacheStats

    async def get(self, key: bytes) -> Outputs | None: ...

    async def set(self, key: bytes, value: Outputs) -> None: ...

    async def close(self) -> None: ...


def cache_key(model: str, version: int, inputs: dict[str, np.ndarray]) -> bytes:
    """A digest of the model version and the canonical bytes of every input."""
    digest = hashlib.sha256(f"{model}\0{version}\0".encode())
    for name in sorted(inputs):
        array = inputs[name]
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype == object:
            for item in array.ravel():
                data = item if isinstance(item, bytes) else str(item).encode()
                digest.update(struct.pack("<Q", len(data)) + data)
        else:
            digest.update(np.ascontiguousarray(array).data)
    return digest.digest()


def encode(outputs: Outputs) -> bytes:
    """Outputs as bytes: a JSON header, then each numeric array's raw bytes."""
    header: dict[str, Any] = {}
    blobs = []
    for name, array in outputs.items():
        if array.dtype.kind in "OUS":
            items = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
            header[name] = ["string", list(array.shape), items]
        else:
            blob = np.ascontiguousarray(array).tobytes()
            header[name] = [array.dtype.str, list(array.shape), len(blob)]
            blobs.append(blob)
    head = orjson.dumps(header)
    return struct.pack("<I", len(head)) + head + b"".join(blobs)


def decode(data: bytes) -> Outputs:
    (length,) = struct.unpack_from("<I", data)
    header = orjson.loads(data[4 : 4 + length])
    offset = 4 + length
    outputs: Outputs = {}
    for name, (dtype, shape, extra) in header.items():
        if dtype == "string":
            outputs[name] = np.array(extra, dtype=object).reshape(shape)
        else:
            outputs[name] = np.frombuffer(data, dtype, int(np.prod(shape)), offset).reshape(shape)
            offset += extra
    return outputs


@dataclass
class LRU(Generic[V]):
    """Values bounded by count and bytes, each living ``ttl_s`` seconds; the least recently
    used go first. Not thread-safe: one event loop owns it."""

    max_entries: int = 10_000
    max_bytes: int = 256 * 2**20
    ttl_s: float = 600.0
    evictions: int = 0
    _entries: OrderedDict[Hashable, tuple[float, int, V]] = field(default_factory=OrderedDict)
    _bytes: int = 0

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            if entry is not None:
                self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[2]

    def put(self, key: Hashable, value: V, size: int) -> None:
        """Keep ``value`` (``size`` bytes), evicting the least recently used past a bound."""
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + self.ttl_s, size, value)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    def _drop(self, key: Hashable) -> None:
        _, size, _ = self._entries.pop(key)
        self._bytes -= size

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


class MemoryCache:
    """The prediction cache in this process: an LRU bounded by entries and bytes, with a TTL."""

    def __init__(
        self, max_entries: int = 10_000, max_bytes: int = 256 * 2**20, ttl_s: float = 600.0
    ) -> None:
        self._lru: LRU[Outputs] = LRU(max_entries, max_bytes, ttl_s)
        self.stats = CacheStats()

    async def get(self, key: bytes) -> Outputs | None:
        value = self._lru.get(key)
        if value is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return value

    async def set(self, key: bytes, value: Outputs) -> None:
        self._lru.put(key, value, sum(a.nbytes for a in value.values()) + len(key))
        self.stats.evictions = self._lru.evictions

    async def close(self) -> None:
        self._lru.clear()


async def _in_task() -> None:
    """Go on in a task: redis-py times its reads with asyncio.timeout, which needs one, and
    our HTTP/1.1 protocol starts requests outside any (see modelport.server.http1)."""
    if asyncio.current_task() is None:
        await asyncio.sleep(0)  # the protocol hands a request that waits over to a task


class RedisCache:
    """A cache every worker and replica shares; errors are logged and treated as misses."""

    def __init__(self, url: str, ttl_s: float = 600.0, retry_after_s: float = 5.0) -> None:
        require("redis", "redis")
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._ttl_ms = max(int(ttl_s * 1000), 1)
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._url = url
        self.stats = CacheStats()

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        if self._available():  # one warning per outage window, not one per request
            log.warning(
                "redis cache at %s is unavailable (%s); serving without a cache for %.0f s",
                self._url, exc, self._retry_after_s,
            )  # fmt: skip
        self._down_until = time.monotonic() + self._retry_after_s

    async def get(self, key: bytes) -> Outputs | None:
        data = None
        if self._available():
            await _in_task()
            try:
                data = await self._client.get(b"modelport:" + key)
            except Exception as exc:
                self._failed(exc)
        if not isinstance(data, bytes):
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return decode(data)

    async def set(self, key: bytes, value: Outputs) -> None:
        if not self._available():
            return
        await _in_task()
        try:
            await self._client.set(b"modelport:" + key, encode(value), px=self._ttl_ms)
        except Exception as exc:
            self._failed(exc)

    async def close(self) -> None:
        await self._client.aclose()


def open_cache(spec: str, ttl_s: float = 600.0) -> Cache | None:
    """``"off"``, ``"memory"`` or a ``redis://`` URL."""
    if spec == "off":
        return None
    if spec == "memory":
        return MemoryCache(ttl_s=ttl_s)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(spec, ttl_s)
    raise ValueError(f"unknown cache {spec!r}: use 'memory', 'off' or a redis:// URL")
