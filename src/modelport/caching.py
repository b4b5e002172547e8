"""Prediction caches: in-process LRU with TTL (the default) and Redis (shared by workers).

    cache = open_cache("memory")                 # or "redis://127.0.0.1:6379/0", or "off"
    key = cache_key("digits", 2, inputs, digest=artifacts_sha256, namespace="prod")
    await cache.get(key); await cache.set(key, outputs)

Keys name the namespace (a deployment), the model version and the sha256 of its artifacts, so
neither a new version nor another deployment's model of the same name gets an old answer; and
the inputs exactly: text only as text, tagged str or bytes, each item with its length. Values
are encoded without pickle (a shared cache is not trusted with code). A Redis outage degrades
to no caching with a logged warning, never to errors; the logged URL hides its password.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import orjson

from modelport.errors import InvalidInputError, require

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


def cache_key(
    model: str, version: int, inputs: dict[str, np.ndarray], *, digest: str = "",
    namespace: str = "modelport",
) -> bytes:  # fmt: skip
    """``namespace:`` and a sha256 of the model version, its artifacts' ``digest`` and the
    canonical bytes of every input.

    Text arrays (dtype object) must hold only ``str`` or ``bytes``: anything else raises
    InvalidInputError naming the input, so that ``None`` never passes for ``"None"``.
    """
    hashed = hashlib.sha256(f"{model}\0{version}\0{digest}\0".encode())
    for name in sorted(inputs):
        array = inputs[name]
        hashed.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype == object:
            for item in array.ravel():
                if isinstance(item, str):
                    tag, data = b"s", item.encode("utf-8", "surrogatepass")
                elif isinstance(item, bytes):
                    tag, data = b"b", item
                else:
                    raise InvalidInputError(
                        f"input {name!r}: expected strings, got {type(item).__name__}", name
                    )
                hashed.update(tag + struct.pack("<Q", len(data)) + data)
        else:
            hashed.update(np.ascontiguousarray(array).data)
    return namespace.encode() + b":" + hashed.digest()


def redact(url: str) -> str:
    """``url`` without its password (in the user part or a ``password=`` query), for logs.

    >>> redact("redis://user:secret@cache:6379/0")
    'redis://user:***@cache:6379/0'
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a URL that could not be parsed>"
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        hidden = [(k, "***" if "password" in k.lower() else v) for k, v in pairs]
        query = urlencode(hidden, safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


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


class RedisCache:
    """A cache every worker and replica shares; errors are logged and treated as misses.

    Keys are stored as given: ``cache_key`` starts them with the namespace of the deployment.
    """

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
                redact(self._url), exc, self._retry_after_s,
            )  # fmt: skip
        self._down_until = time.monotonic() + self._retry_after_s

    async def get(self, key: bytes) -> Outputs | None:
        data = None
        if self._available():
            try:
                data = await self._client.get(key)
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
        try:
            await self._client.set(key, encode(value), px=self._ttl_ms)
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
    raise ValueError(
        f"unknown cache {redact(spec)!r}: use 'memory', 'off' or a redis://, rediss:// or "
        "unix:// URL"
    )
