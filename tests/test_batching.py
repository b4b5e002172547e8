import asyncio

import pytest

from modelport.batching import Batcher
from modelport.config import BatchingConfig


def run_all(batcher: Batcher[int, int], items: list[int]) -> list[object]:
    async def go() -> list[object]:
        results = await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)
        await batcher.close()
        return list(results)

    return asyncio.run(go())


def recording(batches: list[list[int]], delay_s: float = 0.0):  # type: ignore[no-untyped-def]
    async def handler(items: list[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(delay_s)
        if any(i < 0 for i in items):
            raise ValueError(f"negative in {items}")
        return [i * 10 for i in items]

    return handler


def test_every_caller_gets_its_own_result_in_bounded_batches() -> None:
    batches: list[list[int]] = []
    batcher = Batcher(recording(batches, 0.01), BatchingConfig(max_batch_size=4))
    assert run_all(batcher, list(range(10))) == [i * 10 for i in range(10)]
    assert all(len(b) <= 4 for b in batches)
    assert len(batches) < 10  # requests that queued while the model was busy were combined
    assert sorted(i for b in batches for i in b) == list(range(10))


def test_items_count_by_their_rows() -> None:
    batches: list[list[int]] = []
    batcher = Batcher(recording(batches, 0.01), BatchingConfig(max_batch_size=5), size_of=int)
    assert run_all(batcher, [3, 3, 2, 7]) == [30, 30, 20, 70]
    assert all(sum(b) <= 5 or len(b) == 1 for b in batches)  # an oversized item runs alone


def test_the_delay_gathers_a_batch() -> None:
    batches: list[list[int]] = []
    config = BatchingConfig(max_batch_size=8, max_delay_s=0.05)

    async def go() -> None:
        batcher = Batcher(recording(batches), config)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)  # arrives within the window of the first
        await asyncio.gather(first, batcher.submit(2))
        await batcher.close()

    asyncio.run(go())
    assert batches == [[1, 2]]


def test_with_two_workers_a_request_joins_the_open_batch() -> None:
    batches: list[list[int]] = []
    config = BatchingConfig(max_batch_size=8, max_delay_s=0.05)

    async def go() -> None:
        batcher = Batcher(recording(batches, 0.01), config, concurrency=2)
        first = batcher.enqueue(1)
        await asyncio.sleep(0.01)  # a worker holds the batch open; the other one is idle
        later = [batcher.enqueue(i) for i in (2, 3)]
        assert await asyncio.gather(first, *later) == [10, 20, 30]
        # Full batches leave the rest to the idle worker, which runs it at the same time.
        assert await asyncio.gather(*(batcher.enqueue(i) for i in range(10, 22))) == [
            i * 10 for i in range(10, 22)
        ]
        await batcher.close()

    asyncio.run(go())
    assert batches[0] == [1, 2, 3]
    assert sorted(len(b) for b in batches[1:]) == [4, 8]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("window_ms", [0.4, 1.4, 3.0])
def test_a_lone_request_waits_its_window_to_the_fraction_of_a_millisecond(
    loop: str, window_ms: float
) -> None:
    import time

    import uvloop

    dispatched: list[float] = []

    async def handler(items: list[int]) -> list[int]:
        dispatched.append(time.monotonic())
        return items

    async def go() -> list[float]:
        batcher = Batcher(handler, BatchingConfig(max_batch_size=8, max_delay_s=window_ms / 1000))
        waits = []
        for i in range(20):
            queued = time.monotonic()
            await batcher.submit(i)
            waits.append((dispatched[-1] - queued) * 1000)
        await batcher.close()
        return waits

    runner = uvloop.new_event_loop() if loop == "uvloop" else asyncio.new_event_loop()
    try:
        waits = sorted(runner.run_until_complete(go()))
    finally:
        runner.close()
    assert waits[0] >= window_ms  # never less than asked for (uvloop's timers were whole ms)
    assert waits[len(waits) // 2] < window_ms + 0.5  # nor much more


def test_the_window_counts_from_when_the_request_reached_the_server() -> None:
    import time

    batches: list[list[int]] = []
    config = BatchingConfig(max_batch_size=8, max_delay_s=0.05)

    async def go() -> float:
        batcher = Batcher(recording(batches), config)
        started = time.monotonic()
        # Arrived 40 ms ago (a slow upload, say): 10 ms of its window are left.
        await batcher.enqueue(1, since=started - 0.04)
        waited = time.monotonic() - started
        await batcher.close()
        return waited

    assert 0.009 < asyncio.run(go()) < 0.04


def test_a_preferred_size_closes_the_batch() -> None:
    batches: list[list[int]] = []
    config = BatchingConfig(max_batch_size=8, max_delay_s=0.05, preferred_batch_sizes=(2,))
    run_all(Batcher(recording(batches), config), [1, 2, 3, 4])
    assert [len(b) for b in batches] == [2, 2]


def test_a_failing_item_fails_alone() -> None:
    batches: list[list[int]] = []
    batcher = Batcher(recording(batches, 0.01), BatchingConfig(max_batch_size=8))
    results = run_all(batcher, [1, 2, -3, 4, 5])
    assert [r for r in results if not isinstance(r, Exception)] == [10, 20, 40, 50]
    (error,) = [r for r in results if isinstance(r, Exception)]
    assert str(error) == "negative in [-3]"


def test_withdrawn_items_never_reach_the_handler() -> None:
    batches: list[list[int]] = []

    async def go() -> None:
        batcher = Batcher(recording(batches, 0.05), BatchingConfig(max_batch_size=1))
        busy = batcher.enqueue(1)
        gone = batcher.enqueue(2)
        await asyncio.sleep(0.01)
        gone.cancel()  # the caller left while queued
        assert await busy == 10
        await asyncio.sleep(0.06)
        await batcher.close()

    asyncio.run(go())
    assert batches == [[1]]


def test_a_handler_returning_the_wrong_count_is_an_error() -> None:
    async def handler(items: list[int]) -> list[int]:
        return []

    results = run_all(Batcher(handler, BatchingConfig(max_batch_size=4)), [1, 2])
    assert all(isinstance(r, RuntimeError) for r in results)


@pytest.mark.parametrize(
    "settings", [{"max_batch_size": 0}, {"max_delay_ms": -1}, {"preferred_batch_sizes": [64]},
                 {"max_batch": 4}],
)  # fmt: skip
def test_bad_settings(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages differ per setting
        BatchingConfig.from_manifest(settings)


def test_latency_target_picks_the_largest_batch_that_fits() -> None:
    from modelport.batching import LatencyTarget

    # 1 ms fixed + 0.5 ms a row: 2 * cost(b) <= 0.8 * 22 ms  ->  b <= 15
    target = LatencyTarget(0.022, 32, {1: 0.0015, 8: 0.005, 32: 0.017})
    size, window = target.choose()
    assert size == 15
    assert window == 0.0  # no traffic measured yet: nobody to wait for
    for i in range(50):  # heavy traffic: a request every 0.1 ms
        target.arrived(i * 0.0001)
    assert target.choose()[1] == 0.0  # no batch has combined requests yet
    target.observe(6, target.cost_s(6))
    size, window = target.choose()
    assert size == 15
    assert 0 < window <= 0.0176 - 2 * target.cost_s(15) + 1e-9
    target.observe(15, 0.030)  # the model got slower: batches shrink to stay in budget
    assert target.choose()[0] < 15


def test_latency_target_batches_under_load() -> None:
    from modelport.batching import LatencyTarget

    batches: list[list[int]] = []
    target = LatencyTarget(0.05, 8, {1: 0.001, 8: 0.004})
    batcher = Batcher(recording(batches, 0.002), BatchingConfig(max_batch_size=8), target=target)
    assert run_all(batcher, list(range(40))) == [i * 10 for i in range(40)]
    assert max(len(b) for b in batches) > 1
    assert all(len(b) <= 8 for b in batches)


def test_a_failure_the_first_item_meets_alone_fails_the_batch_without_more_calls() -> None:
    calls: list[list[int]] = []

    async def broken(items: list[int]) -> list[int]:
        calls.append(list(items))
        await asyncio.sleep(0.01)
        raise RuntimeError("the model's session is gone")

    results = run_all(Batcher(broken, BatchingConfig(max_batch_size=8)), list(range(6)))
    assert all(isinstance(r, RuntimeError) for r in results)
    # The batch fails, its first two items fail alone the same way, and the rest get that
    # error without a call each (retried one by one, a broken model would be called 7 times).
    assert calls == [[0, 1, 2, 3, 4, 5], [0], [1]]


def test_a_failing_first_item_still_fails_alone() -> None:
    async def refuses_negatives(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        if any(i < 0 for i in items):
            raise ValueError("negative input")  # the same words for the batch and the item
        return [i * 10 for i in items]

    results = run_all(Batcher(refuses_negatives, BatchingConfig(max_batch_size=8)), [-1, 1, 2])
    assert isinstance(results[0], ValueError)
    assert results[1:] == [10, 20]
