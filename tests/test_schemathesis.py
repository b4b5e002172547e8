"""Schemathesis, a fuzzer no one here wrote, against the server's own /openapi.json: every
documented endpoint, examples, coverage cases and random requests, with and without a token.
No 5xx, and the spec describes what the server does (status codes, content types, response
schemas, headers, which requests must be refused, who must authenticate).

One check is left out: ``positive_data_acceptance`` expects every schema-valid body to be
accepted, but one route serves every model, so a body valid for one model's inputs is a 400
for another's. The same run is ``benchmarks/attacks.py``'s fuzzing counterpart by hand:
``.venv/bin/schemathesis run http://127.0.0.1:8000/openapi.json``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelport.demo import build_demo
from modelport.testing import RunningServer, run_server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"  # in the dev extra


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "models"
    build_demo(root, with_torch=False, log=lambda _: None)
    return root


def fuzz(server: RunningServer, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCHEMATHESIS), "run", f"{server.url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "15",
         "--phases", "examples,coverage,fuzzing", "--seed", "7", "--workers", "1", *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_schemathesis_finds_nothing_on_loopback_without_a_token(demo: Path) -> None:
    with run_server(demo, "--trust-code", "--web") as server:
        run = fuzz(server)
        assert server.process.poll() is None  # still up
    assert run.returncode == 0, run.stdout[-8000:]
    assert "generated" in run.stdout  # it ran cases, and found nothing


def test_schemathesis_finds_nothing_with_a_token(demo: Path) -> None:
    with run_server(demo, "--trust-code", "--web", "--token", "s3cret-token") as server:
        run = fuzz(server, "-H", "Authorization: Bearer s3cret-token")
        assert server.process.poll() is None
    assert run.returncode == 0, run.stdout[-8000:]
