"""Configuration as data: one small frozen dataclass per concern, passed down explicitly."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RuntimeConfig:
    """How a model runs in this process.

    ``providers`` lists onnxruntime execution providers in order of preference; ``None`` picks
    automatically (TensorRT, then CUDA, when installed and usable, else CPU). Thread counts of 0
    leave the choice to onnxruntime (one thread per physical core).
    """

    providers: tuple[str, ...] | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0 (0 lets onnxruntime choose)")


@dataclass(frozen=True)
class InputLimits:
    """Bounds checked on every input before any inference runs.

    The default allows 16 Mi elements per input (64 MiB of float32), matching the request body
    limits of mature servers; raise it for large images or embeddings batches.
    """

    max_elements: int = 16 * 2**20

    def __post_init__(self) -> None:
        if self.max_elements < 1:
            raise ValueError("max_elements must be >= 1")


@dataclass(frozen=True)
class LoadOptions:
    """Everything that decides how a model version is loaded.

    ``trust_pickle`` allows pickle and joblib artifacts, which can run arbitrary code when
    loaded; ``trust_code`` allows code models, whose ``model.py`` is Python that runs when
    loaded. Leave both off unless you made the files yourself or trust their source.
    """

    runtime: RuntimeConfig = RuntimeConfig()
    limits: InputLimits = InputLimits()
    trust_pickle: bool = False
    trust_code: bool = False
    verify_requirements: bool = True


@dataclass(frozen=True)
class ServerLimits:
    """Limits every request meets before it costs anything; all on by default.

    The body and depth limits match Triton's; ``max_queue`` bounds the requests waiting for
    one model version, beyond which the server answers 503 at once instead of queueing.
    ``max_json_bytes`` bounds a body that is all JSON (without the binary tensor extension):
    parsing JSON costs far more than its bytes, and the worker's other requests wait for it.
    ``max_string_bytes`` bounds the text (UTF-8) of all BYTES and string inputs of a request.
    ``max_connections`` bounds a worker's open connections (and requests in progress): once
    there are that many, a request is answered 503 and its connection closed (uvicorn's
    ``limit_concurrency``, counted as uvicorn counts it: the asking connection among them).
    """

    max_body_bytes: int = 64 * 2**20
    max_json_bytes: int = 4 * 2**20
    max_json_depth: int = 100
    max_elements: int = InputLimits().max_elements
    max_string_bytes: int = 16 * 2**20
    request_timeout_s: float = 30.0
    max_queue: int = 256
    max_connections: int = 1024
    allow_non_finite: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes", "max_json_bytes", "max_json_depth", "max_elements",
            "max_string_bytes", "max_queue", "max_connections",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")


@dataclass(frozen=True)
class BatchingConfig:
    """How a model's requests are combined; rows count along each input's first dimension.

    In a manifest: ``"serving": {"batching": {"max_batch_size": 32, "max_delay_ms": 2}}``.
    With ``latency_budget_s`` (``latency_budget_ms`` in a manifest) the window and the batch
    size are chosen from the model's measured cost instead, to keep p99 within the budget.
    """

    max_batch_size: int = 32
    max_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    latency_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        if any(not 1 <= s <= self.max_batch_size for s in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must lie within 1..max_batch_size")
        if self.latency_budget_s is not None and self.latency_budget_s <= 0:
            raise ValueError("latency_budget_s must be > 0")

    @classmethod
    def from_manifest(cls, settings: Mapping[str, Any]) -> BatchingConfig:
        """From a manifest's ``serving.batching`` (delays in ms there, as people write them)."""
        known = {"max_batch_size", "max_delay_ms", "preferred_batch_sizes", "latency_budget_ms"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown batching setting {sorted(unknown)[0]!r}")
        return cls(
            max_batch_size=int(settings.get("max_batch_size", cls.max_batch_size)),
            max_delay_s=float(settings.get("max_delay_ms", 0)) / 1000,
            preferred_batch_sizes=tuple(int(s) for s in settings.get("preferred_batch_sizes", ())),
            latency_budget_s=(
                float(settings["latency_budget_ms"]) / 1000
                if settings.get("latency_budget_ms") is not None
                else None
            ),
        )


@dataclass(frozen=True)
class FallbackConfig:
    """What answers for a model that raises or misses its deadline (a manifest's
    ``serving.fallback``), and the circuit breaker in front of it.

    Either ``model`` (another served model taking the same inputs, its latest version) or
    ``outputs`` (a constant answer: output name -> the value of one row). The breaker opens
    after ``failures`` failures within ``window_s``: for ``open_s`` every request gets the
    fallback at once, then one probe goes to the model (half-open) and its outcome closes the
    breaker or opens it again.
    """

    model: str | None = None
    outputs: Mapping[str, Any] | None = None
    deadline_s: float | None = None
    failures: int = 5
    window_s: float = 30.0
    open_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.model is None) == (self.outputs is None):
            raise ValueError("a fallback names either another model or constant outputs")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("fallback deadline_ms must be > 0")
        if self.failures < 1 or self.window_s <= 0 or self.open_s <= 0:
            raise ValueError("fallback failures must be >= 1, window_s and open_s > 0")

    @classmethod
    def from_manifest(cls, settings: Mapping[str, Any]) -> FallbackConfig:
        """From a manifest's ``serving.fallback`` (the deadline in ms there)."""
        known = {"model", "outputs", "deadline_ms", "failures", "window_s", "open_s"}
        if not isinstance(settings, Mapping):
            raise ValueError("the fallback setting must be an object")
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown fallback setting {sorted(unknown)[0]!r}")
        outputs = settings.get("outputs")
        if outputs is not None and (not isinstance(outputs, Mapping) or not outputs):
            raise ValueError("fallback outputs must map output names to one row's value")
        deadline = settings.get("deadline_ms")
        return cls(
            model=None if settings.get("model") is None else str(settings["model"]),
            outputs=outputs,
            deadline_s=None if deadline is None else float(deadline) / 1000,
            failures=int(settings.get("failures", cls.failures)),
            window_s=float(settings.get("window_s", cls.window_s)),
            open_s=float(settings.get("open_s", cls.open_s)),
        )


@dataclass(frozen=True)
class LookupConfig:
    """Serving stored batch predictions (``serve --store``).

    ``max_age`` holds ``AGE`` or ``MODEL=AGE`` items (``24h``, ``fraud=1h``): older predictions
    are answered marked stale, or computed live when the request carries the features.
    ``write_back`` stores those live answers.
    """

    store: str
    max_age: tuple[str, ...] = ()
    write_back: bool = False


@dataclass(frozen=True)
class PredictionLogConfig:
    """Keeping what the server predicted (``serve --log-predictions URL``), for audits and
    ``modelport monitor``: a SQLite file or a PostgreSQL URL.

    ``sample`` is the share of requests kept; ``inputs`` is ``"full"`` or ``"hash"`` (only a
    sha256 of each request's inputs is kept). Records wait in memory, up to
    ``max_queue_bytes`` of tensors, for a background writer that inserts them in batches;
    beyond that they are dropped and counted, and requests never wait for the database.
    """

    url: str
    sample: float = 0.01
    inputs: str = "full"
    max_queue_bytes: int = 64 * 1024 * 1024
    flush_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.sample <= 1.0:
            raise ValueError("the prediction log's sample must be within (0, 1]")
        if self.inputs not in ("full", "hash"):
            raise ValueError("the prediction log keeps inputs 'full' or as a 'hash'")
        if self.max_queue_bytes < 1 or self.flush_s <= 0:
            raise ValueError("max_queue_bytes and flush_s must be positive")


@dataclass(frozen=True)
class ServerConfig:
    """How ``modelport serve`` runs: where it listens, who may call it, how it stops.

    Listening on anything but loopback needs ``token`` (clients send ``Authorization: Bearer
    <token>``) unless ``no_auth`` is set explicitly. Health endpoints stay open for probes.
    ``grpc_port`` set also serves the Open Inference Protocol over gRPC, on the same host.
    With ``tls_cert`` and ``tls_key`` both doors speak TLS only; without them a token sent
    beyond loopback travels in clear text (unless a proxy in front terminates TLS).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    lookups: LookupConfig | None = None
    workers: int = 1
    token: str | None = None
    no_auth: bool = False
    grace_s: float = 30.0
    version_policy: str = "latest"
    limits: ServerLimits = ServerLimits()
    runtime: RuntimeConfig = RuntimeConfig()
    trust_pickle: bool = False
    trust_code: bool = False  # serve code models (their model.py runs in the server)
    batching: BatchingConfig | None = None  # set: overrides every model's own batching
    cache: str = "memory"  # "memory", "off" or a Redis URL shared by workers and replicas
    cache_ttl_s: float = 600.0
    cache_namespace: str = "modelport"  # starts every cache key: deployments sharing a Redis
    tls_cert: str | None = None  # PEM certificate (chain) and key: REST and gRPC speak TLS
    tls_key: str | None = None
    http: str = "modelport"  # the HTTP/1.1 protocol: ours, or "uvicorn" (its httptools one)
    web: bool = False  # serve each ONNX model's browser bundle at /web/NAME/, edge telemetry
    web_webgpu: str | None = None  # an installed onnxruntime-web: its WebGPU build in the bundles
    prediction_log: PredictionLogConfig | None = None
    otlp_endpoint: str | None = None  # OpenTelemetry traces to this OTLP/HTTP collector
    # Versions in production (server/versions.py): follow the repository, the control API,
    # traffic splits ("churn=2:90,3:10") and shadows ("churn=3").
    watch: bool = False
    watch_interval_s: float = 1.0  # how often the repository is scanned without inotify
    control: bool = False  # the repository extension: index, load, unload
    control_token: str | None = None  # its own (and the shadow report's); needed off loopback
    routes: tuple[str, ...] = ()
    routes_file: str | None = None  # one route a line; reloaded when it changes (with watch)
    shadows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._check_rollout()
        if self.http not in ("modelport", "uvicorn"):
            raise ValueError(f"unknown http protocol {self.http!r}: use modelport or uvicorn")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0-65535")
        if self.grpc_port is not None:
            if not 1 <= self.grpc_port <= 65535:
                raise ValueError("grpc_port must be within 1-65535")
            if self.grpc_port == self.port:
                raise ValueError("grpc_port must differ from port (REST listens there)")
        if self.grace_s < 0:
            raise ValueError("grace_s must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "a TLS certificate and its key go together (--tls-cert and --tls-key, "
                "ServerConfig.tls_cert and tls_key): pass both, or neither"
            )
        if not self.cache_namespace or any(c.isspace() for c in self.cache_namespace):
            raise ValueError("cache_namespace must be non-empty, without spaces")

    def _check_rollout(self) -> None:
        if self.watch_interval_s <= 0:
            raise ValueError("watch_interval_s (--watch-interval-s) must be > 0")
        if self.control_token is not None and self.control_token == self.token:
            raise ValueError(
                "the control token must differ from the access token: whoever may predict "
                "must not be able to load and unload models"
            )
        if self.control and self.control_token is None and not is_loopback(self.host):
            raise ValueError(
                f"--control on {self.host} lets the network load and unload models: pass "
                "--control-token (or --control-token-file), a token of its own"
            )


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying when a database drops the connection: ``attempts`` tries,
    waiting ``first_delay_s`` and doubling up to ``max_delay_s`` between them."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")


@dataclass(frozen=True)
class BatchConfig:
    """One offline scoring run.

    ``mapping`` holds ``INPUT=COLUMN[,COLUMN...]`` or ``INPUT=PATTERN*`` items; inputs it does
    not name take the column of the same name (or, for a single input, every column but the
    key). ``batch_size`` ``None`` measures the model and takes the batch size with the best
    throughput. Without ``key`` rows are keyed by their number in the source.
    ``max_reject_ratio`` fails the run when more than this share of its rows were rejected.
    """

    chunk_rows: int | None = None  # None: about 32 MiB of features and outputs, <= 10,000 rows
    batch_size: int | None = None
    key: str | None = None
    mapping: tuple[str, ...] = ()
    outputs: tuple[str, ...] | None = None
    force: bool = False
    max_reject_ratio: float = 0.1
    allow_non_finite: bool = False
    retry: RetryPolicy = RetryPolicy()

    def __post_init__(self) -> None:
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= self.max_reject_ratio <= 1:
            raise ValueError("max_reject_ratio must be within 0-1")


def url_host(host: str) -> str:
    """``host`` as it goes in a URL or a host:port address: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """Whether a host name or address (no brackets, no port) is this machine's loopback."""
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
