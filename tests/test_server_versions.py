"""Versions in production: warm-up, serve --watch (atomic swap, drain), broken versions,
rollback, against a real server process and real clients."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import modelport
from modelport.config import ServerConfig
from modelport.demo import mlp_onnx
from modelport.errors import WarmupError
from modelport.server.registry import load_registry
from modelport.testing import run_server
from version_models import add_scorer, infer_body, land_copy, load, metric, wait_for

WATCH = ("--watch", "--watch-interval-s", "0.1", "--trust-code", "--control", "--cache", "off")


def test_imports_keep_sample_rows_and_loading_warms_up(tmp_path: Path) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    sample = np.arange(40, dtype=np.float32).reshape(10, 4)
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3), sample_input=sample)
    stored = repo.manifest("tiny").metadata["sample"]
    assert stored == {"input": {"shape": [4, 4], "data": sample[:4].ravel().tolist()}}
    add_scorer(repo, "scorer")
    registry = load_registry(repo.root, ServerConfig(trust_code=True))
    try:
        scorer = registry.get("scorer")
        first = scorer.model.predict({"x": np.ones(1, np.float32)})
        assert first["calls"][0] >= 8  # ran before the first request: ready means fast
        assert scorer.runner._calls == 0  # inline or not is judged on real requests only
    finally:
        registry.close()


def test_a_model_that_raises_at_warm_up_does_not_load(tmp_path: Path) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    add_scorer(repo, "broken", fail=True)
    with pytest.raises(WarmupError, match="broken:1 failed its warm-up"):
        load_registry(repo.root, ServerConfig(trust_code=True))


def test_a_version_added_under_load_takes_traffic_only_warm_with_no_error(
    tmp_path: Path,
) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    add_scorer(repo, "scorer", factor=2.0)
    with run_server(repo.root, *WATCH) as server, load(server.url, "scorer") as traffic:
        wait_for(lambda: len(traffic.answers) > 50, what="traffic on version 1")
        landed = time.monotonic()
        add_scorer(repo, "scorer", factor=3.0, load_s=0.3)  # version 2, slow to load
        wait_for(lambda: "2" in traffic.versions(), what="version 2 answering")
        switched_s = time.monotonic() - landed
        count = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) > count + 100, what="traffic on version 2")
        log = server.log
    assert traffic.failures() == []
    assert traffic.versions() == {"1", "2"}
    assert all(a.header == a.version for a in traffic.answers)
    second = [a for a in traffic.answers if a.version == "2"]
    assert min(a.calls for a in second if a.calls is not None) >= 8  # warm-up came first
    assert switched_s < 5
    assert "scorer now serves version(s) 2 (retiring 1)" in log
    assert "scorer:1 unloaded" in log


def _corrupt(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "model.py").write_text((folder / "model.py").read_text() + "\n# changed\n")


def _needs_missing_package(folder: Path, manifest: dict[str, Any]) -> None:
    manifest["requirements"]["packages"] = {"modelport-no-such-package": "1.0"}


def test_broken_versions_never_take_traffic(tmp_path: Path) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    add_scorer(repo, "scorer")
    with (
        run_server(repo.root, *WATCH) as server,
        load(server.url, "scorer", 2) as traffic,
        httpx.Client(base_url=server.url) as http,
    ):
        reasons = {}
        for broken, reason in (
            (lambda: land_copy(repo, "scorer", 1, _corrupt), "integrity"),
            (lambda: land_copy(repo, "scorer", 1, _needs_missing_package), "requirements"),
            (lambda: add_scorer(repo, "scorer", fail=True), "warmup"),
        ):
            version = broken()
            wait_for(
                    lambda v=version, r=reason: metric(  # type: ignore[misc]
                        http.get("/metrics").text, "modelport_version_loads_total",
                        model="scorer", version=str(v), result=r,
                    ) == 1,
                    what=f"version {version} refused ({reason})",
                )  # fmt: skip
            index = http.post("/v2/repository/index").json()
            reasons[reason] = next(e for e in index if e["version"] == str(version))
        time.sleep(0.3)  # a few more scans: nothing is tried again while files stay
        page = http.get("/metrics").text
        # An explicit load tries the latest again, and says why it fails; version 1 stays.
        loaded = http.post("/v2/repository/models/scorer/load")
        assert loaded.status_code == 400
        assert "could not load 'scorer': scorer:4 failed its warm-up" in loaded.json()["error"]
        log = server.log
    assert traffic.failures() == []
    assert traffic.versions() == {"1"}
    assert "does not match its manifest" in reasons["integrity"]["reason"]
    assert "modelport-no-such-package" in reasons["requirements"]["reason"]
    assert "failed its warm-up" in reasons["warmup"]["reason"]
    assert all(e["state"] == "UNAVAILABLE" for e in reasons.values())
    assert str(repo.root) not in str(reasons)
    for version, reason in ((2, "integrity"), (3, "requirements"), (4, "warmup")):
        labels = {"model": "scorer", "version": str(version), "result": reason}
        assert metric(page, "modelport_version_loads_total", **labels) == 1
    assert "scorer:4 does not take traffic" in log


def test_unload_drains_the_requests_in_flight(tmp_path: Path) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    repo = modelport.Repository.init(tmp_path / "models")
    add_scorer(repo, "slow", sleep_s=0.8)  # on inputs >= 50
    with run_server(repo.root, *WATCH) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        slow: dict[str, Any] = {}

        def long_request() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                slow["answer"] = http.post("/v2/models/slow/infer", json=infer_body([60.0]))

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(0.2)  # the request is in the model now
        started = time.monotonic()
        client.unload_model("slow")
        unload_s = time.monotonic() - started
        thread.join()
        assert slow["answer"].status_code == 200
        assert unload_s >= 0.4  # it waited for the request in flight
        gone = httpx.post(f"{server.url}/v2/models/slow/infer", json=infer_body([1.0]))
        assert gone.status_code == 404
        assert not client.is_model_ready("slow")
        time.sleep(0.3)  # the watcher leaves an unloaded model alone
        again = httpx.post(f"{server.url}/v2/models/slow/infer", json=infer_body([1.0]))
        assert again.status_code == 404
        client.load_model("slow")
        assert client.is_model_ready("slow")
        with pytest.raises(InferenceServerException, match="no model named 'nope'"):
            client.load_model("nope")


def test_rollback_takes_effect_on_a_watching_server(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from modelport.cli import main

    repo = modelport.Repository.init(tmp_path / "models")
    add_scorer(repo, "scorer", factor=2.0)
    add_scorer(repo, "scorer", factor=3.0)
    cli = CliRunner()
    with run_server(repo.root, *WATCH) as server, load(server.url, "scorer", 2) as traffic:
        wait_for(lambda: traffic.versions() == {"2"}, what="version 2 answering")
        result = cli.invoke(
            main, ["rollback", "scorer", "--reason", "AUC dropped", "--repo", str(repo.root)]
        )
        assert result.exit_code == 0, result.output
        assert "withdrew 2; latest is now 1" in result.output
        count = len(traffic.answers)
        wait_for(lambda: traffic.answers[-1].version == "1", what="version 1 answering again")
        wait_for(lambda: len(traffic.answers) > count + 50, what="more traffic")
        index = httpx.post(f"{server.url}/v2/repository/index").json()
    assert traffic.failures() == []
    assert {"name": "scorer", "version": "2", "state": "UNAVAILABLE",
            "reason": "withdrawn: AUC dropped"} in index  # fmt: skip
    listed = cli.invoke(main, ["list", "--repo", str(repo.root)]).output
    assert "withdrawn 2 at" in listed
    assert "AUC dropped" in listed
    shown = cli.invoke(main, ["show", "scorer:2", "--repo", str(repo.root)]).output
    assert '"reason": "AUC dropped"' in shown
    assert repo.manifest("scorer").version == 1  # latest skips what is withdrawn
    restored = cli.invoke(main, ["rollback", "scorer", "--restore", "2", "--repo", str(repo.root)])
    assert "latest is now 2" in restored.output


def test_without_inotify_a_scan_finds_new_and_withdrawn_versions(tmp_path: Path) -> None:
    import asyncio

    from modelport.server.engine import Engine
    from modelport.server.versions import Versions
    from modelport.server.watch import Watcher

    repo = modelport.Repository.init(tmp_path / "models")
    modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=3))
    config = ServerConfig(watch=True, watch_interval_s=0.05)

    async def follow() -> list[int]:
        engine = Engine(config)
        versions = Versions(repo.root, config, engine)
        engine.registry = versions.load_all()
        watching = asyncio.create_task(Watcher(versions, config, inotify=False).run())
        seen = [engine.models().get("tiny").version]

        async def until(version: int) -> None:
            for _ in range(200):
                await asyncio.sleep(0.02)
                if engine.models().get("tiny").version == version:
                    seen.append(version)
                    return
            raise TimeoutError(f"version {version} never served")

        await asyncio.to_thread(modelport.add_model, repo, "tiny", mlp_onnx((4, 8, 3), seed=4))
        await until(2)
        repo.withdraw("tiny", [2], "test")
        await until(1)
        shutil.rmtree(repo.root / "tiny")  # a model removed: it is no longer served
        for _ in range(200):
            await asyncio.sleep(0.02)
            if "tiny" not in engine.models().names():
                seen.append(0)
                break
        watching.cancel()
        await versions.close()
        await engine.close()
        return seen

    assert asyncio.run(follow()) == [1, 2, 1, 0]


def test_rollback_to_a_version_and_its_refusals(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from modelport.cli import main

    repo = modelport.Repository.init(tmp_path / "models")
    for seed in (1, 2, 3, 4):
        modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=seed))
    cli = CliRunner()

    def rollback(*args: str) -> Any:
        return cli.invoke(main, ["rollback", "tiny", *args, "--repo", str(repo.root)])

    assert "withdrew 3, 4; latest is now 2" in rollback("--to", "2").output
    assert repo.select(modelport.VersionPolicy.parse("all")) == {"tiny": [1, 2]}
    assert repo.select(modelport.VersionPolicy.parse("specific:4")) == {"tiny": [4]}
    refused = rollback("--to", "3")
    assert refused.exit_code == 1
    assert "no version 3 to go back to; not withdrawn: 1, 2" in str(refused.exception)
    assert rollback().exit_code == 0  # back to 1
    only = rollback()
    assert "its only version not withdrawn" in str(only.exception)
    assert "latest is now 4" in rollback("--restore", "4").output
    assert repo.manifest("tiny").version == 4
    (repo.root / "tiny" / "withdrawn.json").write_text("[1, 2]")
    with pytest.raises(modelport.ManifestError, match=r"withdrawn\.json is malformed"):
        repo.withdrawn("tiny")


def test_a_request_in_flight_finishes_on_the_version_being_replaced(tmp_path: Path) -> None:
    import datetime as dt

    repo = modelport.Repository.init(tmp_path / "models")
    add_scorer(repo, "scorer", factor=2.0, sleep_s=2.5)  # on inputs >= 50
    with run_server(repo.root, *WATCH) as server:
        slow: dict[str, Any] = {}

        def long_request() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                slow["answer"] = http.post("/v2/models/scorer/infer", json=infer_body([60.0]))
            slow["done"] = time.time()

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(0.2)  # in the model now
        add_scorer(repo, "scorer", factor=3.0)
        thread.join()
        wait_for(lambda: "scorer:1 unloaded" in server.log, what="version 1 unloaded")
        log = server.log

    def logged(text: str) -> float:  # when the server logged a line (its local time, to ms)
        line = next(line for line in log.splitlines() if text in line)
        return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    answer = slow["answer"]
    assert answer.status_code == 200
    assert answer.json()["model_version"] == "1"
    assert answer.json()["outputs"][0]["data"] == [120.0]
    # Swapped while the request ran; version 1 unloaded only once it had answered.
    assert logged("scorer now serves version(s) 2 (retiring 1)") < slow["done"]
    assert logged("scorer:1 unloaded") >= slow["done"] - 0.05


def test_every_worker_follows_the_repository(tmp_path: Path) -> None:
    repo = modelport.Repository.init(tmp_path / "models")
    add_scorer(repo, "scorer", factor=2.0)
    args = ("--watch", "--watch-interval-s", "0.1", "--trust-code", "--cache", "off",
            "--workers", "2")  # fmt: skip
    with run_server(repo.root, *args) as server, httpx.Client(base_url=server.url) as http:

        def versions(count: int) -> set[str]:  # a connection each: both workers answer
            url = f"{server.url}/v2/models/scorer/infer"
            answers = [httpx.post(url, json=infer_body([1.0])) for _ in range(count)]
            return {answer.json()["model_version"] for answer in answers}

        assert versions(10) == {"1"}
        add_scorer(repo, "scorer", factor=3.0)
        wait_for(lambda: versions(20) == {"2"}, what="every worker on version 2")
        page = http.get("/metrics").text
    loaded = {"model": "scorer", "version": "2", "result": "loaded"}
    assert metric(page, "modelport_version_loads_total", **loaded) == 2  # summed over workers


def test_a_withdrawn_canary_stops_and_its_share_goes_to_the_default(tmp_path: Path) -> None:
    import asyncio

    from modelport.server.engine import Engine
    from modelport.server.requests import RequestRecord
    from modelport.server.versions import Versions

    repo = modelport.Repository.init(tmp_path / "models")
    for seed in (1, 2, 3):
        modelport.add_model(repo, "tiny", mlp_onnx((4, 8, 3), seed=seed))
    config = ServerConfig(version_policy="latest")

    async def shares() -> tuple[set[int], set[int]]:
        engine = Engine(config)
        versions = Versions(repo.root, config, engine)
        versions.set_rules(["tiny=2:50,3:50"], [])
        engine.registry = versions.load_all()

        def drawn() -> set[int]:
            records = [RequestRecord(str(i), time.monotonic()) for i in range(200)]
            answered = {engine.admit("tiny", None, r).version for r in records}
            for record in records:
                record.release()
            return answered

        before = drawn()
        repo.withdraw("tiny", [3], "canary failed")
        await versions.sync()
        after = drawn()
        await versions.close()
        await engine.close()
        return before, after

    before, after = asyncio.run(shares())
    assert before == {2, 3}
    assert after == {2}
