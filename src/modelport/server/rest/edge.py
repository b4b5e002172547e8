"""The REST door's edge endpoints (``serve --web``): model bundles and edge telemetry.

The bundles and the telemetry's checks live in server/web.py and server/telemetry.py; here
is only what HTTP adds: the token for the files that hold a model, the redirect to the
bundle's folder, the content types, the telemetry's rate (429) and size (413).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from modelport.config import ServerConfig
from modelport.server.rest.http import HTTPError, Response, json_response
from modelport.server.telemetry import MAX_BYTES, EdgeTelemetry
from modelport.server.tensors import parse_json
from modelport.server.web import WebBundles


async def web_page(
    web: WebBundles | None, authorize: Callable[[], None], name: str, file: str | None
) -> Response:
    """``GET /web/NAME/FILE``: the page, modelport.js or the runtime, open to all."""
    if file is None:  # /web/NAME: the page's relative links need the slash
        return Response(308, b"", "text/plain", {"location": f"/web/{name}/"})
    try:  # only a client with the token (or any on loopback) learns which models exist
        authorize()
        known = True
    except HTTPError:
        known = False
    body, content_type = await asyncio.to_thread(_bundles(web).page, name, file, known)
    return Response(200, body, content_type, {"cache-control": "max-age=3600"})


async def web_manifest(web: WebBundles | None, name: str) -> Response:
    """``GET /web/NAME/manifest.json``: asked anew each time, it says which version is current."""
    body = await asyncio.to_thread(_bundles(web).manifest, name)
    return Response(200, body, "application/json", {"cache-control": "no-store"})


async def web_model(web: WebBundles | None, name: str, version: int | None) -> Response:
    """``GET /web/NAME[/versions/N]/model.onnx``: fixed per version, and big."""
    body = await asyncio.to_thread(_bundles(web).model, name, version)
    return Response(200, body, "application/octet-stream", {"cache-control": "max-age=3600"})


def _bundles(web: WebBundles | None) -> WebBundles:
    if web is None:
        raise HTTPError(404, "this server serves no web bundles; start it with --web")
    return web


async def telemetry(
    edge: EdgeTelemetry | None, body: Callable[[], Awaitable[bytes]], config: ServerConfig
) -> Response:
    """``POST /v2/edge/telemetry``: counts and latencies from pages, into /metrics."""
    if edge is None:
        raise HTTPError(404, "this server takes no edge telemetry; start it with --web")
    if not edge.admit():
        raise HTTPError(429, "too much telemetry: send it in batches", {"retry-after": "1"})
    data = await body()
    if len(data) > MAX_BYTES:
        raise HTTPError(413, f"a telemetry post takes at most {MAX_BYTES} bytes")
    return json_response({"accepted": edge.accept(parse_json(data, config.limits))})
