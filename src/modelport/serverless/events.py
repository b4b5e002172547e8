"""Lambda's HTTP events as plain requests, and answers as what Lambda expects back.

    request = read_event(event)          # HTTPError (400, 413) for one Lambda would never send
    reply = lambda_response(request.payload, 200, headers, body)

Three shapes arrive (AWS's documented payloads): API Gateway HTTP API with payload format 2.0
and Lambda function URLs (``version: "2.0"``, ``rawPath``, ``requestContext.http.method``),
and API Gateway REST API, or HTTP API with payload 1.0 (``httpMethod``, ``path``,
``multiValueHeaders``). A binary body arrives base64-encoded with ``isBase64Encoded`` true, and
an answer that is not text goes back so. Nothing here knows the models: the REST door parses
and answers the request itself.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

import orjson

from modelport.server.rest.http import HTTPError

# API Gateway's payload quota (10 MB); a bigger body is answered 413 as REST answers one.
MAX_BODY_BYTES = 10 * 1024 * 1024
# A synchronous invocation's response, at most (Lambda's 6 MB quota): a bigger one would fail
# in Lambda with no answer the caller can read, so it is answered 413 with what to do.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
_TEXT_TYPES = ("application/json", "text/", "application/problem+json")


@dataclass(frozen=True)
class Request:
    payload: str  # "2.0" or "1.0": how to shape the answer
    method: str
    path: str  # as sent, percent-encoded: the REST door routes on it
    query: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names, content-length the body's own
    body: bytes
    client: str | None = None
    host: str | None = None


def read_event(event: Any) -> Request:
    """The HTTP request an event carries; HTTPError 400 for a shape Lambda never sends, 413
    for a body over API Gateway's 10 MB."""
    if not isinstance(event, dict):
        raise HTTPError(400, _NOT_HTTP + f" (the event is a JSON {_kind(event)})")
    if event.get("version") == "2.0":
        return _read_v2(event)
    if "httpMethod" in event:
        return _read_v1(event)
    raise HTTPError(400, _NOT_HTTP + f" (its keys: {', '.join(sorted(map(str, event))[:8])})")


_NOT_HTTP = (
    "not an HTTP event: modelport's Lambda handler answers API Gateway (HTTP API payload 2.0 "
    "or 1.0, REST API) and function URL events"
)


def _read_v2(event: dict[str, Any]) -> Request:
    context = _object(event.get("requestContext"), "requestContext")
    http = _object(context.get("http"), "requestContext.http")
    method = _text(http.get("method"), "requestContext.http.method")
    path = _text(event.get("rawPath", http.get("path")), "rawPath")
    stage = context.get("stage")
    if isinstance(stage, str) and stage != "$default" and path.startswith(f"/{stage}/"):
        path = path[len(stage) + 1 :]  # an HTTP API's named stage leads the path
    query = event.get("rawQueryString") or ""
    if not isinstance(query, str):
        raise HTTPError(400, "rawQueryString must be a string")
    headers = _headers(event.get("headers"), "headers")
    if isinstance(event.get("cookies"), list):  # payload 2.0 moves them out of the headers
        headers.append(("cookie", "; ".join(str(c) for c in event["cookies"])))
    body = _body(event)
    source = http.get("sourceIp")
    return _request("2.0", method, path, query.encode(), headers, body, source, context)


def _read_v1(event: dict[str, Any]) -> Request:
    method = _text(event.get("httpMethod"), "httpMethod")
    path = quote(_text(event.get("path"), "path"), safe="/:@!$&'()*+,;=-._~")
    multi = event.get("multiValueHeaders")
    if multi:
        headers = [
            (str(name).lower(), _text(value, f"multiValueHeaders[{name!r}]"))
            for name, values in _object(multi, "multiValueHeaders").items()
            for value in (values if isinstance(values, list) else [values])
        ]
    else:
        headers = _headers(event.get("headers"), "headers")
    pairs = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters")
    query = b""
    if pairs:
        query = urlencode(_object(pairs, "queryStringParameters"), doseq=True).encode()
    context = _optional(event.get("requestContext"))
    identity = _optional(context.get("identity"))
    body = _body(event)
    return _request("1.0", method, path, query, headers, body, identity.get("sourceIp"), context)


def _request(
    payload: str, method: str, path: str, query: bytes, headers: list[tuple[str, str]],
    body: bytes, source: Any, context: dict[str, Any],
) -> Request:  # fmt: skip
    if not path.startswith("/"):
        raise HTTPError(400, f"the event's path must start with '/': {path[:80]!r}")
    headers = [(n, v) for n, v in headers if n not in ("content-length", "transfer-encoding")]
    headers.append(("content-length", str(len(body))))
    domain = context.get("domainName")
    if domain and not any(n == "host" for n, _ in headers):
        headers.append(("host", str(domain)))
    encoded = [(n.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for n, v in headers]
    client = source if isinstance(source, str) else None
    host = domain if isinstance(domain, str) else None
    return Request(payload, method.upper(), path, query, encoded, body, client, host)


def _body(event: dict[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise HTTPError(400, f"the event's body must be a string, not a JSON {_kind(body)}")
    if event.get("isBase64Encoded") is True:
        if len(body) * 3 // 4 > MAX_BODY_BYTES + 2:  # refused before it is decoded
            raise _too_big(len(body) * 3 // 4)
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPError(400, "isBase64Encoded is true but the body is not base64") from None
    else:
        raw = body.encode()
    if len(raw) > MAX_BODY_BYTES:
        raise _too_big(len(raw))
    return raw


def _too_big(size: int) -> HTTPError:
    return HTTPError(
        413,
        f"request body of {size} bytes is over API Gateway's payload limit of {MAX_BODY_BYTES} "
        "bytes (10 MB): send fewer rows per request, or binary tensors (smaller than JSON)",
    )


def _headers(value: Any, what: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    return [(str(n).lower(), _text(v, f"{what}[{n!r}]")) for n, v in _object(value, what).items()]


def _optional(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HTTPError(400, f"the event's {what} must be an object, not a JSON {_kind(value)}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise HTTPError(400, f"the event's {what} must be a string, not a JSON {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def lambda_response(
    payload: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> dict[str, Any]:
    """What the handler returns: ``statusCode``, ``headers``, ``body`` (base64 unless text).

    Repeated headers are joined with commas, as both payload versions accept them.
    """
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        joined[key] = f"{joined[key]},{text}" if key in joined else text
    joined.pop("content-length", None)  # API Gateway sets it for the body it sends
    kind = joined.get("content-type", "")
    as_text = kind.startswith(_TEXT_TYPES)
    if as_text:
        try:
            shown, encoded = body.decode(), False
        except UnicodeDecodeError:
            as_text = False
    if not as_text:
        shown, encoded = base64.b64encode(body).decode(), True
    if len(shown) > MAX_RESPONSE_BYTES:
        return error_reply(
            payload,
            HTTPError(
                413,
                f"the answer is {len(shown)} bytes as Lambda returns it, over Lambda's limit "
                f"of {MAX_RESPONSE_BYTES} bytes (6 MB) for a synchronous response: send fewer "
                "rows per request, or ask for fewer outputs",
            ),
        )
    return {"statusCode": status, "headers": joined, "body": shown, "isBase64Encoded": encoded}


def error_reply(payload: str, error: HTTPError) -> dict[str, Any]:
    """The REST door's ``{"error": ...}`` answer to a request that never reached it."""
    body = orjson.dumps({"error": str(error)})
    headers = [(b"content-type", b"application/json")]
    headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
    return lambda_response(payload, error.status, headers, body)


def event_path(request: Request) -> tuple[str, bytes]:
    """The ASGI ``path`` (decoded) and ``raw_path`` (as sent) of a request."""
    return unquote(request.path), request.path.encode("latin-1", "replace")
