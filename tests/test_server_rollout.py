"""Traffic splits and shadows against a real server: proportions, stickiness, the version
that answered, reloads of a routes file, and shadows that never touch the live answer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelport
from modelport.demo import mlp_onnx
from modelport.testing import free_port, run_server
from version_models import add_scorer, infer_body, metric, wait_for


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> modelport.Repository:
    repo = modelport.Repository.init(tmp_path_factory.mktemp("rollout") / "models")
    add_scorer(repo, "scorer", factor=2.0)
    add_scorer(repo, "scorer", factor=3.0, counting=False)
    # version 3: agrees with 2 on small inputs, not beyond 100, and is slow on inputs >= 50
    add_scorer(repo, "scorer", factor=3.0, odd=5.0, sleep_s=0.3, counting=False)
    add_scorer(repo, "mixed")
    modelport.add_model(repo, "mixed", mlp_onnx((4, 8, 3), seed=3))  # other tensors
    return repo


def test_a_split_keeps_its_proportions_and_a_key_its_version(
    repo: modelport.Repository,
) -> None:
    import tritonclient.grpc as triton_grpc

    grpc_port = free_port()
    args = ("--trust-code", "--cache", "off", "--route", "scorer=1:70,2:30", "--grpc-port",
            str(grpc_port))  # fmt: skip
    with run_server(repo.root, *args) as server, httpx.Client(base_url=server.url) as http:
        seen: Counter[str] = Counter()
        for _ in range(400):
            answer = http.post("/v2/models/scorer/infer", json=infer_body([1.0]))
            version = answer.json()["model_version"]
            assert answer.headers["model-version"] == version
            y = answer.json()["outputs"][0]["data"][0]
            assert y == {"1": 2.0, "2": 3.0}[version]  # the version named made the answer
            seen[version] += 1
        assert 0.2 < seen["2"] / 400 < 0.4, seen
        by_key = {}
        for key in (f"customer-{i}" for i in range(30)):
            versions = {
                http.post(
                    "/v2/models/scorer/infer", json=infer_body([1.0]),
                    headers={"x-routing-key": key},
                ).json()["model_version"]
                for _ in range(3)
            }  # fmt: skip
            assert len(versions) == 1, key
            by_key[key] = versions.pop()
        assert set(by_key.values()) == {"1", "2"}
        # gRPC draws the same version for the same key.
        rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = triton_grpc.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.ones(1, np.float32))
        for key in list(by_key)[:10]:
            result = rpc.infer("scorer", [x], headers={"x-routing-key": key})
            assert result.get_response().model_version == by_key[key]
        import grpc

        from modelport.server.grpc.proto import grpc_predict_v2_pb2 as pb

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            request = pb.ModelInferRequest(model_name="scorer")
            request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(
                1
            )
            answer, call = infer.with_call(request)
            trailers = dict(call.trailing_metadata())
            assert trailers["model-version"] == answer.model_version
        # A request that names its version is not split; v1 answers say so too.
        named = http.post("/v2/models/scorer/versions/2/infer", json=infer_body([1.0]))
        assert named.json()["model_version"] == "2"
        v1 = http.post("/v1/models/scorer:predict", json={"instances": [1.0]})
        assert v1.headers["model-version"] in {"1", "2"}


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelport", "serve", *args, "--port", str(free_port())]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_bad_routes_and_shadows_are_refused_at_start(repo: modelport.Repository) -> None:
    from click.testing import CliRunner

    from modelport.cli import main
    from modelport.config import ServerConfig
    from modelport.server.engine import Engine
    from modelport.server.versions import Versions

    root = str(repo.root)
    for route, message in (
        ("scorer=1:70,2:20", "the weights sum to 90, not 100"),
        ("scorer=1:70,2", "'2' is not VERSION:PERCENT"),
        ("scorer", "expected MODEL=..."),
        ("scorer=1:50,1:50", "version 1 appears twice"),
        ("scorer=1:50,2:50 --route scorer=1:100", "model 'scorer' has two routes"),
    ):
        flags = [part for r in route.split(" --route ") for part in ("--route", r)]
        refused = CliRunner().invoke(main, ["serve", root, *flags])
        assert refused.exit_code == 2, route
        assert message in refused.output
    # Checked against the repository when the server starts: it exits 1 with the reason.
    for workers in ("1", "2"):  # several: refused before any worker starts (and restarts)
        started = _serve(root, "--trust-code", "--route", "scorer=1:50,9:50", "--workers", workers)
        assert started.returncode == 1
        assert "route of 'scorer': the repository has no version 9; it has 1, 2" in started.stderr
    versions = Versions(repo.root, ServerConfig(), Engine(ServerConfig()))
    for routes, shadows, message in (
        (["nope=1:100"], [], "route of 'nope': the repository has no such model"),
        ([], ["mixed=1"], "version 1 has other inputs or outputs than the live version"),
        ([], ["scorer=7"], "shadow of 'scorer': the repository has no version 7"),
    ):
        with pytest.raises(modelport.RolloutError, match=message):
            versions.set_rules(routes, shadows)


def test_a_routes_file_is_reloaded_and_a_bad_one_keeps_the_last_good(
    repo: modelport.Repository, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.txt"
    routes.write_text("# canary\nscorer=1:100\n")
    args = ("--trust-code", "--cache", "off", "--watch", "--watch-interval-s", "0.1",
            "--routes-file", str(routes))  # fmt: skip
    with run_server(repo.root, *args) as server, httpx.Client(base_url=server.url) as http:

        def version() -> str:
            answer = http.post("/v2/models/scorer/infer", json=infer_body([1.0]))
            assert answer.status_code == 200
            return str(answer.json()["model_version"])

        assert {version() for _ in range(20)} == {"1"}
        routes.write_text("scorer=2:100\n")
        wait_for(lambda: version() == "2", what="the new route")
        for bad in ("scorer=2:50\n", "scorer=9:100\n"):
            routes.write_text(bad)
            wait_for(
                lambda b=bad: f"{b.strip()!r}" in server.log or "no version 9" in server.log,  # type: ignore[misc]
                what="the bad routes refused",
            )
            assert {version() for _ in range(20)} == {"2"}
        page = http.get("/metrics").text
    assert metric(page, "modelport_rollout_rules_total", result="refused") == 2
    assert metric(page, "modelport_rollout_rules_total", result="applied") == 2


def test_a_shadow_never_changes_or_delays_answers_and_counts_agreement(
    repo: modelport.Repository,
) -> None:
    from click.testing import CliRunner

    from modelport.cli import main

    args = ("--trust-code", "--cache", "off", "--version-policy", "latest",
            "--shadow", "scorer=3")  # fmt: skip
    with run_server(repo.root, *args) as server, httpx.Client(base_url=server.url) as http:

        def ask(x: float) -> tuple[float, str, float]:
            started = time.monotonic()
            answer = http.post("/v2/models/scorer/infer", json=infer_body([x])).json()
            return (
                answer["outputs"][0]["data"][0],
                answer["model_version"],
                (time.monotonic() - started),
            )

        fast = [ask(float(i % 7)) for i in range(30)]
        shadow_page = lambda: http.get("/metrics").text  # noqa: E731
        counted = {"model": "scorer", "live_version": "2", "candidate_version": "3"}
        wait_for(
            lambda: metric(shadow_page(), "modelport_shadow_requests_total", **counted,
                           result="agree") == 30,
            what="30 agreements",
        )  # fmt: skip
        slow = [ask(200.0 + i) for i in range(4)]  # the shadow sleeps 0.3 s on each of these
        wait_for(
            lambda: metric(shadow_page(), "modelport_shadow_requests_total", **counted,
                           result="disagree") == 4,
            what="4 disagreements",
        )  # fmt: skip
        report = CliRunner().invoke(main, ["shadow", "report", "--url", server.url])
    sent = [i % 7 for i in range(30)] + [200, 201, 202, 203]
    for (y, version, _), x in zip(fast + slow, sent, strict=True):
        assert version == "2"
        assert y == 3.0 * x  # the live answer, never the shadow's (5x beyond 100)
    assert max(seconds for *_, seconds in slow) < 0.2  # answered before the shadow's 0.3 s
    assert report.exit_code == 0, report.output
    assert "scorer" in report.output
    assert "88.24%" in report.output  # 30 of 34
    assert "4 disagreement(s) kept" in report.output
    assert "candidate y=[1015.0]" in report.output  # 203 x 5


def test_shadow_comparison_by_row_argmax_labels_and_tolerance() -> None:
    from modelport.server.shadow import compare

    live = {
        "label": np.array([1, 2, 3]),
        "scores": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32),
    }
    shadow = {
        "label": np.array([1, 2, 0]),  # row 2 differs
        "scores": np.array([[0.7, 0.3], [0.6, 0.4], [0.6, 0.4]], np.float32),  # row 1 flips
    }
    agree, worst = compare(live, shadow, 3, 1e-4)
    assert agree.tolist() == [True, False, False]
    np.testing.assert_allclose(worst, [0.2, 0.4, 0.0], atol=1e-6)
    values = {"y": np.array([1.0, 2.0], np.float32)}
    agree, _ = compare(values, {"y": np.array([1.00001, 2.1], np.float32)}, 2, 1e-4)
    assert agree.tolist() == [True, False]
    agree, worst = compare(values, {"y": np.zeros(3, np.float32)}, 2, 1e-4)  # other shape
    assert agree.tolist() == [False, False]
    assert np.isinf(worst).all()
    fixed = {"grid": np.zeros((2, 3, 4), np.float32)}  # a fixed-shape answer, compared whole
    agree, worst = compare(fixed, {"grid": np.ones((2, 3, 4), np.float32)}, 1, 1e-4)
    assert agree.tolist() == [False]
    assert worst.tolist() == [1.0]
