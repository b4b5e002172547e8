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


async def web_file(
    web: WebBundles | None, authorize: Callable[[], None], name: str, file: str | None
) -> Response:
    """``GET /web/NAME/FILE``: a file of the model's bundle."""
    if web is None:
        raise HTTPError(404, "this server serves no web bundles; start it with --web")
    if file is None:  # /web/NAME: the page's relative links need the slash
        return Response(308, b"", "text/plain", {"location": f"/web/{name}/"})
    if web.needs_token(file):
        authorize()
        known = True
    else:  # the public page and runtime: only a client with the token learns which models exist
        try:
            authorize()
            known = True
        except HTTPError:
            known = False
    body, content_type = await asyncio.to_thread(web.file, name, file, known)
    # The manifest says which version is current: always asked anew. The rest is fixed per
    # release (runtime, page) or per version (the model), and big.
    fresh = "no-store" if file == "manifest.json" else "max-age=3600"
    return Response(200, body, content_type, {"cache-control": fresh})


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
