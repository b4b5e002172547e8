import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport.errors import DeadlineExceededError
from modelport.server.runner import Runner

THREAD_RECORDER = """
import threading
import time

import numpy as np


class Recorder:
    signature = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
        "outputs": [{"name": "thread", "dtype": "int64", "shape": [-1]}],
    }

    def load(self):
        pass

    def predict(self, batch):
        time.sleep(float(batch["x"].max(initial=0)))
        return {"thread": np.full(len(batch["x"]), threading.get_ident(), np.int64)}
"""


@pytest.fixture
def recorder(tmp_path: Path) -> modelport.Model:
    (tmp_path / "model.py").write_text(THREAD_RECORDER)
    return modelport.load(tmp_path, options=modelport.LoadOptions(trust_code=True))


def run_calls(runner: Runner, values: list[float], timeout_s: float = 10) -> list[int]:
    async def calls() -> list[int]:
        loop_thread = threading.get_ident()
        threads = []
        for value in values:
            outputs, _ = await runner.run(
                {"x": np.array([value], np.float32)}, time.monotonic() + timeout_s
            )
            threads.append(int(outputs["thread"][0]) == loop_thread)
        return threads

    return asyncio.run(calls())


def test_fast_models_run_inline_after_warm_up(recorder: modelport.Model) -> None:
    runner = Runner(recorder, max_queue=4, inline_below_s=0.01)
    on_loop = run_calls(runner, [0.0] * 12)
    assert on_loop[:8] == [False] * 8  # measured on the inference thread first
    assert on_loop[8:] == [True] * 4
    runner.close()


def test_slow_models_stay_on_threads(recorder: modelport.Model) -> None:
    runner = Runner(recorder, max_queue=4, inline_below_s=0.001)
    assert run_calls(runner, [0.005] * 10) == [False] * 10
    runner.close()


def test_a_deadline_passed_while_running(recorder: modelport.Model) -> None:
    runner = Runner(recorder, max_queue=4)
    with pytest.raises(DeadlineExceededError, match="within the request deadline"):
        run_calls(runner, [0.5], timeout_s=0.1)
    runner.close()


def test_threads_per_instance_share_the_cpus_the_process_may_use() -> None:
    from modelport.config import RuntimeConfig, ServerConfig
    from modelport.cpus import CpuBudget
    from modelport.server.registry import threads_for

    whole = CpuBudget(count=8, machine=8, affinity=8, quota=None)
    assert threads_for(ServerConfig(), 1, whole).intra_op_threads == 0  # onnxruntime's choice
    assert threads_for(ServerConfig(workers=2), 2, whole).intra_op_threads == 2
    pinned = CpuBudget(count=1, machine=8, affinity=1, quota=None)
    assert threads_for(ServerConfig(), 1, pinned).intra_op_threads == 1
    limited = CpuBudget(count=3, machine=8, affinity=8, quota=3.5)
    assert threads_for(ServerConfig(workers=2), 1, limited).intra_op_threads == 1
    explicit = ServerConfig(runtime=RuntimeConfig(intra_op_threads=3))
    assert threads_for(explicit, 4, pinned).intra_op_threads == 3


def test_stopping_a_batching_runner_ends_its_tasks_and_timers(recorder: modelport.Model) -> None:
    from modelport.config import BatchingConfig

    runner = Runner(recorder, max_queue=4, batching=BatchingConfig(max_batch_size=4))

    async def serve_then_stop() -> set[asyncio.Task[object]]:
        await runner.run({"x": np.array([0.0], np.float32)}, time.monotonic() + 10)
        await runner.stop_batching()
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    assert asyncio.run(serve_then_stop()) == set()
    runner.close()
