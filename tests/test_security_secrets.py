"""Security review, issue 23: cache keys that cannot be forged, secrets that stay secret, TLS.

Every check runs the real server: string inputs that would share a cache key, two deployments
behind one Redis, the workers' environment, the log, and REST and gRPC over TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

import modelport
from modelport.caching import cache_key
from modelport.cli import serve
from modelport.errors import InvalidInputError
from modelport.testing import RunningServer, free_port, run_server

REDIS = "redis://127.0.0.1:6379/13"
TOKEN = "tok-" + uuid.uuid4().hex

# Code models run only when trusted, where serve has the opt-in.
TRUST = ("--trust-code",) if any("--trust-code" in p.opts for p in serve.params) else ()

ECHO_MODEL = '''
import os

import numpy as np


class Echo:
    """Each text as '<prefix><type>:<value>@<pid>': who computed it, and from what."""

    signature = {
        "inputs": [{"name": "text", "dtype": "string", "shape": [-1]}],
        "outputs": [{"name": "echo", "dtype": "string", "shape": [-1]}],
    }

    def load(self, path):
        self.prefix = (path / "prefix.txt").read_text()

    def predict(self, batch):
        pid = os.getpid()
        items = [f"{self.prefix}{type(v).__name__}:{v}@{pid}" for v in batch["text"]]
        return {"echo": np.array(items, dtype=object)}
'''

ENV_MODEL = '''
import subprocess
import sys

import numpy as np


class Env:
    """The environment a subprocess of the model gets, as text."""

    signature = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
        "outputs": [{"name": "env", "dtype": "string", "shape": [-1]}],
    }

    def load(self):
        pass

    def predict(self, batch):
        code = "import os; print(dict(os.environ))"
        seen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        return {"env": np.array([seen.stdout] * len(batch["x"]), dtype=object)}
'''


def code_repo(root: Path, prefix: str) -> Path:
    """A repository with echo:1 (whose weights are ``prefix``) and env:1."""
    repo = modelport.Repository.init(root / "models")
    for name, source, extra in (("echo", ECHO_MODEL, prefix), ("env", ENV_MODEL, None)):
        folder = root / f"{name}-src"
        folder.mkdir()
        (folder / "model.py").write_text(source)
        if extra is not None:
            (folder / "prefix.txt").write_text(extra)
        modelport.add_model(repo, name, folder, trust_code=True)
    return root / "models"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return code_repo(tmp_path_factory.mktemp("secrets"), "A/")


@pytest.fixture(scope="module")
def other_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another deployment: the same name and version, other weights."""
    return code_repo(tmp_path_factory.mktemp("secrets-other"), "B/")


def v1(url: str, instances: list[Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/echo:predict", json={"instances": instances},
                      timeout=30, **kwargs)  # fmt: skip


# -- 9. cache keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["memory", REDIS])
def test_null_and_the_string_none_do_not_share_an_answer(repo: Path, cache: str) -> None:
    unique = uuid.uuid4().hex  # a fresh key in the shared Redis
    with run_server(repo, "--cache", cache, *TRUST) as server:
        planted = v1(server.url, [unique, None])
        asked = v1(server.url, [unique, "None"])
        numbers = v1(server.url, [unique, 1])
        nested = v1(server.url, [unique, [unique]])
    assert asked.status_code == 200
    assert [p.split("@")[0] for p in asked.json()["predictions"]] == [
        f"A/str:{unique}", "A/str:None",
    ]  # fmt: skip
    for refused in (planted, numbers, nested):  # only text is text
        assert refused.status_code == 400
        assert "'text'" in refused.json()["error"]


def test_string_keys_tag_str_and_bytes_and_refuse_other_values() -> None:
    def key(*items: object) -> bytes:
        return cache_key("m", 1, {"t": np.array(items, dtype=object)})

    assert key("a", "b") != key(b"a", b"b")
    assert key("ab", "c") != key("a", "bc")
    assert key("a", "None") == key("a", "None")
    for bad in (None, 1, ["a"]):
        with pytest.raises(InvalidInputError, match="'t'") as caught:
            key("a", bad)
        assert caught.value.input_name == "t"


def test_keys_carry_the_artifacts_and_the_namespace() -> None:
    x = {"x": np.ones(2, np.float32)}
    assert cache_key("m", 1, x, digest="aa") != cache_key("m", 1, x, digest="bb")
    one = cache_key("m", 1, x, namespace="one")
    assert one.startswith(b"one:")
    assert one != cache_key("m", 1, x, namespace="two")


def test_deployments_behind_one_redis_share_no_answers(repo: Path, other_repo: Path) -> None:
    unique = uuid.uuid4().hex

    def ask(source: Path, *args: str) -> str:
        with run_server(source, "--cache", REDIS, *TRUST, *args) as server:
            answer = v1(server.url, [unique])
        assert answer.status_code == 200, answer.text
        return str(answer.json()["predictions"][0])

    first = ask(repo)
    assert first.startswith("A/")
    assert ask(other_repo).startswith("B/")  # other weights: not A's answer
    assert ask(repo) == first  # the same deployment shares (the check above could fail)
    assert ask(repo, "--cache-namespace", "staging") != first  # another namespace: computed
    assert ask(repo, "--cache-namespace", "staging").startswith("A/")


# -- 14a. the Redis password is not logged -----------------------------------------------------


def test_the_redis_password_is_not_logged(repo: Path) -> None:
    secret = "pw-" + uuid.uuid4().hex
    url = f"redis://user:{secret}@127.0.0.1:1/0"  # nobody listens: the outage is logged
    with run_server(repo, "--cache", url, *TRUST) as server:
        assert v1(server.url, ["x"]).status_code == 200
        deadline = time.monotonic() + 5
        while "unavailable" not in server.log and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.log + server.access_log
    assert secret not in log
    assert "redis://user:***@127.0.0.1:1/0" in log


def test_a_refused_cache_url_is_shown_without_its_password(repo: Path) -> None:
    result = CliRunner().invoke(serve, [str(repo), "--cache", "memcached://u:sekrit99@host/0"])
    assert result.exit_code == 2
    assert "sekrit99" not in result.output
    assert "memcached://u:***@host/0" in result.output


# -- 14b. the token stays out of environments --------------------------------------------------


def children(pid: int, at_least: int, timeout_s: float = 30.0) -> list[int]:
    """The processes ``pid`` started (uvicorn's workers), once there are ``at_least``."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout_s
    while True:
        found = [p.pid for p in psutil.Process(pid).children(recursive=True)]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def model_env(server: RunningServer, token: str) -> str:
    answer = httpx.post(
        f"{server.url}/v1/models/env:predict", json={"instances": [1.0]},
        headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return str(answer.json()["predictions"][0])


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["--token", "MODELPORT_TOKEN"])
def test_workers_and_their_subprocesses_never_see_the_token(
    repo: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args: tuple[str, ...] = ("--token", TOKEN)
    if how == "MODELPORT_TOKEN":
        monkeypatch.setenv("MODELPORT_TOKEN", TOKEN)
        args = ()
    with run_server(repo, "--workers", "2", "--cache", "off", *args, *TRUST) as server:
        workers = children(server.process.pid, at_least=2)
        checked = 0
        for pid in workers:
            try:  # a short-lived child may end between the listing and the reading
                seen_by = environ(pid) + Path(f"/proc/{pid}/cmdline").read_bytes()
            except (ProcessLookupError, FileNotFoundError):
                continue
            assert TOKEN.encode() not in seen_by
            checked += 1
        assert checked >= 2  # at least both workers
        for _ in range(4):  # whichever worker answers
            seen = model_env(server, TOKEN)
            assert TOKEN not in seen
            assert "MODELPORT_SERVE_CONFIG" not in seen
        refused = v1(server.url, ["x"])
        allowed = v1(server.url, ["x"], headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 401
    assert allowed.status_code == 200


def test_one_worker_keeps_the_token_from_a_model_subprocess(repo: Path) -> None:
    with run_server(repo, "--token", TOKEN, "--cache", "off", *TRUST) as server:
        seen = model_env(server, TOKEN)
    assert TOKEN not in seen
    assert "MODELPORT_SERVE_CONFIG" not in seen


# -- 14c. TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "cert.pem", folder / "key.pem"


def test_rest_and_grpc_over_tls(repo: Path, certificate: tuple[Path, Path]) -> None:
    import grpc
    import tritonclient.grpc as triton
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cert, key = certificate
    grpc_port = free_port()
    context = ssl.create_default_context(cafile=str(cert))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with run_server(
        repo, "--tls-cert", str(cert), "--tls-key", str(key), "--token", TOKEN,
        "--grpc-port", str(grpc_port), *TRUST, tls=context,
    ) as server:  # fmt: skip
        answer = v1(server.url, ["hi"], headers=headers, verify=context)
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
            httpx.get(f"http://127.0.0.1:{server.port}/v2/health/ready", timeout=5)

        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        plain = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        with plain, pytest.raises(grpc.RpcError):  # plain gRPC to the TLS port
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        client = triton.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", ssl=True, root_certificates=str(cert)
        )
        text = triton.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"hi"], dtype=object))
        result = client.infer("echo", [text], headers={"authorization": f"Bearer {TOKEN}"})
        client.close()
    assert answer.status_code == 200
    assert answer.json()["predictions"][0].startswith("A/str:hi@")
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    echoed = result.as_numpy("echo")
    assert echoed is not None
    assert echoed[0].decode().startswith("A/")


def test_tls_needs_both_a_certificate_and_a_key(repo: Path, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    result = CliRunner().invoke(serve, [str(repo), "--tls-cert", str(cert)])
    assert result.exit_code == 2
    assert "tls_key" in result.output.replace("-", "_")


def test_a_token_off_loopback_without_tls_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.config import ServerConfig
    from modelport.server.lifecycle import check_security

    warned: list[str] = []
    monkeypatch.setattr(
        "modelport.server.lifecycle.log.warning", lambda text, *args: warned.append(text % args)
    )
    check_security(ServerConfig(host="0.0.0.0", token=TOKEN))
    check_security(ServerConfig(host="0.0.0.0", token=TOKEN, tls_cert="c", tls_key="k"))
    check_security(ServerConfig(host="127.0.0.1", token=TOKEN))
    assert len(warned) == 1
    assert "clear text" in warned[0]
