import asyncio
import logging
import time

import numpy as np
import pytest

from modelport.caching import MemoryCache, RedisCache, cache_key, decode, encode, open_cache

REDIS = "redis://127.0.0.1:6379/15"


def outputs(value: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "y": np.full((2, 3), value, np.float32),
        "label": np.array([1, 2], np.int64),
        "name": np.array(["one", "twö"], object),
    }


def test_encoding_round_trips_without_pickle() -> None:
    decoded = decode(encode(outputs(2.5)))
    for name, array in outputs(2.5).items():
        np.testing.assert_array_equal(decoded[name], array)
        assert decoded[name].shape == array.shape
    assert decoded["y"].dtype == np.float32


def test_keys_differ_by_version_and_input_and_not_by_dict_order() -> None:
    x = {"a": np.ones((1, 2), np.float32), "b": np.array(["s"], object)}
    assert cache_key("m", 1, x) == cache_key("m", 1, dict(reversed(list(x.items()))))
    assert cache_key("m", 1, x) != cache_key("m", 2, x)
    assert cache_key("m", 1, x) != cache_key("n", 1, x)
    assert cache_key("m", 1, x) != cache_key("m", 1, {**x, "a": np.zeros((1, 2), np.float32)})
    assert cache_key("m", 1, x) != cache_key("m", 1, {**x, "a": np.ones((2, 1), np.float32)})
    assert cache_key("m", 1, x) != cache_key("m", 1, {**x, "a": np.ones((1, 2), np.float64)})


def test_memory_cache_is_an_lru_bounded_by_entries_and_bytes() -> None:
    async def go() -> MemoryCache:
        cache = MemoryCache(max_entries=2, max_bytes=10_000)
        await cache.set(b"a", outputs())
        await cache.set(b"b", outputs())
        assert await cache.get(b"a") is not None  # a is now the most recent
        await cache.set(b"c", outputs())  # evicts b
        assert await cache.get(b"b") is None
        assert await cache.get(b"c") is not None
        big = {"y": np.zeros(4000, np.float32)}  # 16 KB: over the byte bound, not stored
        await cache.set(b"big", big)
        assert await cache.get(b"big") is None
        return cache

    cache = asyncio.run(go())
    assert cache.stats.evictions == 1
    assert cache.stats.hits == 2
    assert cache.stats.misses == 2


def test_memory_cache_entries_expire() -> None:
    async def go() -> None:
        cache = MemoryCache(ttl_s=0.05)
        await cache.set(b"k", outputs())
        assert await cache.get(b"k") is not None
        time.sleep(0.06)
        assert await cache.get(b"k") is None

    asyncio.run(go())


def test_redis_cache_is_shared_between_instances() -> None:
    async def go() -> None:
        writer, reader = RedisCache(REDIS, ttl_s=5), RedisCache(REDIS, ttl_s=5)
        key = cache_key("shared", 1, {"x": np.array([time.time()])})
        assert await reader.get(key) is None
        await writer.set(key, outputs(7.0))
        got = await reader.get(key)
        assert got is not None
        np.testing.assert_array_equal(got["y"], outputs(7.0)["y"])
        await writer.close()
        await reader.close()

    asyncio.run(go())


def test_a_redis_outage_is_a_miss_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> RedisCache:
        cache = RedisCache("redis://127.0.0.1:1/0", retry_after_s=60)
        for _ in range(3):
            assert await cache.get(b"k") is None
            await cache.set(b"k", outputs())
        await cache.close()
        return cache

    with caplog.at_level(logging.WARNING, "modelport.cache"):
        cache = asyncio.run(go())
    assert cache.stats.misses == 3
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_open_cache() -> None:
    assert open_cache("off") is None
    assert isinstance(open_cache("memory"), MemoryCache)
    with pytest.raises(ValueError, match="unknown cache"):
        open_cache("memcached://x")
