"""The REST door's endpoints, one table: the app routes by it and the OpenAPI document
describes it, so that the two cannot disagree.

    handler, params = route("POST", "/v2/models/digits/infer", "/v2/models/digits/infer")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from modelport.errors import InvalidInputError
from modelport.repository import check_name, check_version
from modelport.server.rest.http import HTTPError


@dataclass(frozen=True)
class Endpoint:
    handler: str  # the app's method _<handler>
    method: str  # lower case, as OpenAPI writes it
    path: str  # an OpenAPI path template; "*" marks where "/versions/{model_version}" may go
    request: str  # a schema name, or "-" for no body
    response: str  # a schema name or a media type
    errors: str  # error statuses it documents: "all", "-" or "401,404"
    tag: str
    summary: str
    needs: str = ""  # "lookups", "graphql", "web", "control", "shadow": a server that has it
    # No token: the /v2/health/ probes, and a bundle's page and runtime (public code, the same
    # for every model); its manifest and model files take the token.
    open: bool = False


# handler, method, path, request, response, errors, tag, summary [| needs]
_TABLE = """
live get /v2/health/live - ServerLive - health Is the server process alive
ready get /v2/health/ready - ServerReady 503 health Are the models loaded and work accepted
server_metadata get /v2 - ServerMetadata 401 server Server name, version and protocol extensions
model_stats get /v2/models/stats - ModelStatisticsResponse 401 statistics Statistics of every served model version
model_metadata get /v2/models/{model_name}* - ModelMetadata 401,404 models Model metadata and signature
model_ready get /v2/models/{model_name}*/ready - ModelReady 401,404,503 models Is the model ready
model_stats get /v2/models/{model_name}*/stats - ModelStatisticsResponse 401,404 statistics Statistics of a model's versions, or of one
model_config get /v2/models/{model_name}*/config - ModelConfig 401,404 models How the model is served (Triton's model configuration)
infer post /v2/models/{model_name}*/infer InferRequest InferResponse all inference Run inference
predict_v1 post /v1/models/{model_name}*:predict PredictRequest PredictResponse all inference Predict instances
metrics get /metrics - text/plain 401 ops Prometheus metrics (text exposition format)
openapi get /openapi.json - application/json 401 ops This OpenAPI document
docs get /docs - text/html 401 ops Human-readable API documentation
prediction get /v2/models/{model_name}/predictions/{key} - StoredPrediction 400,401,404 predictions A prediction | lookups
predictions post /v2/models/{model_name}/predictions LookupRequest LookupResponse all predictions Many keys | lookups
graphql post /graphql GraphQLRequest GraphQLResponse 400,401,504 graphql Query the models and predict with GraphQL | graphql
web_manifest get /web/{model_name}/manifest.json - application/json 401,404 edge The version of a model that pages should run: signature, sha256, the model's address (serve --web) | web
web_model get /web/{model_name}*/model.onnx - application/octet-stream 401,404 edge A model file for pages, the current version or one (serve --web) | web
web get /web/{model_name}/{file} - */* 404 edge A model's page, modelport.js and onnxruntime-web: public code, the same for every model (serve --web) | web
telemetry post /v2/edge/telemetry TelemetryRequest TelemetryResponse 400,401,404,413,429 edge Counts and latencies of predictions on devices (serve --web) | web
repository_index post /v2/repository/index - RepositoryIndex 400,401,403 control Every model version in the repository, with its state | control
repository_load post /v2/repository/models/{model_name}/load - application/json 400,401,403,404,409 control Load a model from the repository (version policy, warm-up) | control
repository_unload post /v2/repository/models/{model_name}/unload - application/json 400,401,403,404,409 control Stop serving a model once its requests finish | control
shadow_report get /v2/shadow - ShadowReport 401,403,404 control Shadow agreement counts and the last disagreements | shadow
"""  # noqa: E501


def _endpoint(line: str) -> Endpoint:
    described, _, needs = line.partition(" | ")
    handler, method, path, request, response, errors, tag, summary = described.split(maxsplit=7)
    open_ = path.startswith("/v2/health/") or handler == "web"
    return Endpoint(handler, method, path, request, response, errors, tag, summary, needs, open_)


ENDPOINTS = tuple(_endpoint(line) for line in _TABLE.strip().splitlines())

MAX_KEY_CHARS = 512  # a stored prediction's key: the store's key column, OpenAPI's maxLength
_VERSIONS = r"(?:/versions/(?P<version>[^/]+))?"
_PLACEHOLDER = re.compile(r"\{(\w+)\}|\*")
_GROUP = {"model_name": "name", "key": "key"}
_FILE = r"(?:/(?P<file>.*))?"  # "/{file}": the rest of the path, slashes too, or nothing


def _pattern(path: str) -> re.Pattern[str]:
    parts, at = [], 0
    for match in _PLACEHOLDER.finditer(path):
        if match[1] == "file":
            parts.append(re.escape(path[at : match.start() - 1]) + _FILE)
        else:
            parts.append(re.escape(path[at : match.start()]))
            parts.append(_VERSIONS if match[0] == "*" else rf"(?P<{_GROUP[match[1]]}>[^/]+)")
        at = match.end()
    parts.append(re.escape(path[at:]))
    pattern = "".join(parts)
    if path == "/v2" or path == "/docs":  # a trailing slash is forgiven here
        pattern += "/?"
    return re.compile(pattern)


_ROUTES = tuple((e.method.upper(), _pattern(e.path), e) for e in ENDPOINTS)


def route(method: str, path: str, shown: str) -> tuple[Endpoint, dict[str, str]]:
    """The endpoint and raw parameters for a request line, or the HTTP error to answer.

    The parameters are checked by ``checked``, once the request is authorized: a client
    without the token learns nothing from how its names are refused.
    """
    allowed = []
    for verb, pattern, endpoint in _ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if verb != method:
            allowed.append(verb)
            continue
        groups = match.groupdict().items()
        return endpoint, {k: unquote(v) for k, v in groups if v is not None}
    if allowed:
        methods = ", ".join(allowed)
        raise HTTPError(405, f"{method} is not allowed here; use {methods}", {"allow": methods})
    raise HTTPError(404, f"no such endpoint: {method} {shown}")


def checked(params: dict[str, str]) -> dict[str, Any]:
    """The parameters of ``route`` checked: a valid model name, a version number, a key
    within the store's bound."""
    if "name" in params:
        check_name(params["name"])
    if "key" in params:
        check_key(params["key"])
    if "version" in params:
        return {**params, "version": check_version(params["version"])}
    return params


def check_key(key: str) -> None:
    """Refuse a stored prediction's key longer than any the store holds, naming it briefly."""
    if len(key) > MAX_KEY_CHARS:
        raise InvalidInputError(
            f"key {key[:16]!r}... has {len(key)} characters, over the limit of {MAX_KEY_CHARS}"
        )
