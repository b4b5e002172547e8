"""The server described for people and tools: an OpenAPI 3.1 document and an offline docs page.

    spec = openapi_spec("0.1.0", {"digits": metadata})   # served at /openapi.json
    page = docs_html(spec)                                # served at /docs, no CDN needed

Both are pure: the server builds them once from its loaded models and serves the results.
"""

from __future__ import annotations

import copy
import html
import json
import math
import re
import shlex
from typing import Any
from urllib.parse import quote

from modelport.server.rest.routes import ENDPOINTS, Endpoint
from modelport.signature import DATATYPES

_ERRORS = {
    "400": "Bad input: malformed JSON, wrong tensor names, shapes, datatypes or sizes",
    "401": "Missing or wrong bearer token",
    "404": "Unknown model or version",
    "408": "The request body did not arrive within the request deadline",
    "413": "Request body larger than the server's limit",
    "429": "Too many requests: retry after Retry-After seconds",
    "500": "The model raised while predicting",
    "503": "Not ready, draining, or the model's queue is full; retry after Retry-After seconds",
    "504": "The request's deadline passed before the model answered",
}
_BINARY_NOTE = (
    "Binary tensor extension: send the JSON header, then each binary input's raw little-endian "
    "row-major bytes in input order (content type `application/octet-stream` also accepted), "
    "with the HTTP header `Inference-Header-Content-Length` giving the JSON part's size. Such "
    "inputs carry `parameters.binary_data_size` and no `data`. Ask for binary outputs with "
    "`outputs[].parameters.binary_data` or the request-level `parameters.binary_data_output`."
)
_BASIC: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "num": {"type": "number"},
    "any": {},
    "data": {"type": "array", "description": "Row-major elements, nested or flat."},
}


def _type(kind: str) -> dict[str, Any]:
    if kind.startswith("[]"):
        return {"type": "array", "items": _type(kind[2:])}
    return dict(_BASIC[kind]) if kind in _BASIC else {"$ref": f"#/components/schemas/{kind}"}


def _schema(fields: str, **extra: Any) -> dict[str, Any]:
    """``_schema("name! shape!:[]int parameters:TensorParameters")``: ``!`` marks required,
    the type defaults to str, ``[]`` makes an array, a capitalized type is a component."""
    properties, required = {}, []
    for token in fields.split():
        name, _, kind = token.partition(":")
        if name.endswith("!"):
            name = name[:-1]
            required.append(name)
        properties[name] = _type(kind or "str")
    return {"type": "object", "properties": properties, **extra} | (
        {"required": required} if required else {}
    )


_TENSOR = "name! shape!:[]int datatype!:Datatype parameters:TensorParameters data:data"
_SCHEMAS: dict[str, Any] = {
    "Error": _schema("error!"),
    "ServerLive": _schema("live!:bool"),
    "ServerReady": _schema("ready!:bool"),
    "ServerMetadata": _schema("name! version! extensions!:[]str"),
    "Datatype": {"type": "string", "enum": list(DATATYPES.values())},
    "TensorMetadata": _schema("name! datatype!:Datatype shape!:[]int", description="-1: dynamic"),
    "ModelMetadata": _schema(
        "name! versions!:[]str platform! inputs!:[]TensorMetadata outputs!:[]TensorMetadata"
    ),
    "ModelReady": _schema("name! ready!:bool"),
    "Duration": _schema("count!:int ns!:int", description="How many, and their total in ns."),
    "InferStatistics": _schema(
        "success:Duration fail:Duration queue:Duration compute_input:Duration "
        "compute_infer:Duration compute_output:Duration cache_hit:Duration cache_miss:Duration"
    ),
    "BatchStatistics": _schema("batch_size!:int compute_infer:Duration"),
    "ModelStatistics": _schema(
        "name! version! last_inference!:int inference_count!:int execution_count!:int "
        "inference_stats!:InferStatistics batch_stats!:[]BatchStatistics",
        description="last_inference: ms since the epoch; inference_count counts rows, "
        "execution_count model runs.",
    ),
    "ModelStatisticsResponse": _schema("model_stats!:[]ModelStatistics"),
    "ModelConfigTensor": _schema(
        "name! data_type! dims!:[]int",
        description="dims without the batch dimension when max_batch_size > 0",
    ),
    "ModelConfig": _schema(
        "name! platform! backend! max_batch_size!:int input!:[]ModelConfigTensor "
        "output!:[]ModelConfigTensor instance_group!:[]any dynamic_batching:any",
        description="Triton's model configuration, the fields modelport fills; it describes "
        "and changes nothing.",
    ),
    "InferParameters": _schema("binary_data_output:bool", additionalProperties=True),
    "TensorParameters": _schema("binary_data_size:int binary_data:bool", additionalProperties=True),
    "RequestInput": _schema(_TENSOR, description="Either data or parameters.binary_data_size."),
    "RequestOutput": _schema("name! parameters:TensorParameters"),
    "InferRequest": _schema(
        "id parameters:InferParameters inputs!:[]RequestInput outputs:[]RequestOutput",
        description="No outputs: every output is returned.",
    ),
    "ResponseOutput": _schema(_TENSOR),
    "InferResponse": _schema(
        "model_name! model_version id parameters:InferParameters outputs!:[]ResponseOutput"
    ),
    "PredictRequest": _schema("instances!:[]any"),
    "PredictResponse": _schema("predictions!:[]any"),
    "StoredPrediction": _schema(
        "model_name key! found!:bool source stale:bool model_version scored_at age_s:num "
        "outputs:any",
        description="source: store (a batch run) or live (computed now from given inputs).",
    ),
    "LookupRequest": _schema(
        "keys!:[]str inputs:any",
        description="inputs: key -> {input name: one row}; used for stale or missing keys.",
    ),
    "LookupResponse": _schema("model_name! predictions!:[]StoredPrediction"),
    "TelemetryRecord": _schema(
        "version!:int backend! event! latency_ms:num",
        description="backend: wasm, webgpu or service; event: local, failure or fallback.",
    ),
    "TelemetryRequest": _schema("model! records!:[]TelemetryRecord"),
    "TelemetryResponse": _schema("accepted!:int"),
    "GraphQLRequest": _schema("query! variables:any operationName"),
    "GraphQLResponse": _schema(
        "data:any errors:[]any", description="GraphQL's own shape; errors carry extensions.code"
    ),
}
_SCHEMAS["GraphQLRequest"]["properties"]["operationName"]["type"] = ["string", "null"]
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# repository.check_name's rule: 1-64 of these, no "..", not ending in "."
_NAME_PATTERN = r"^(?!.*\.\.)(?!.*\.$)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ERROR_SCHEMAS = {"/v2/health/ready": "ServerReady", "/graphql": "GraphQLResponse"}
_TAGS = list(dict.fromkeys(e.tag for e in ENDPOINTS))  # in the route table's order
_TAG_NEEDS = {"predictions": "lookups", "graphql": "graphql", "edge": "web", "control": "control"}
_FILES = {"page": "index.html", "module": "modelport.js"}  # a web bundle's, as examples


def _zeros(datatype: str, shape: list[int]) -> tuple[list[int], list[Any]]:
    dims = [1 if d < 0 else d for d in shape]
    zero: Any = {"BOOL": False, "BYTES": ""}.get(datatype, 0.0 if datatype[:2] == "FP" else 0)
    return dims, [zero] * math.prod(dims)


def _infer_example(meta: dict[str, Any]) -> dict[str, Any]:
    inputs = []
    for t in meta["inputs"]:
        dims, data = _zeros(t["datatype"], t["shape"])
        inputs.append({"name": t["name"], "shape": dims, "datatype": t["datatype"], "data": data})
    return {"inputs": inputs}


def _instance(t: dict[str, Any]) -> Any:  # one row: the shape without its batch dimension
    dims, data = _zeros(t["datatype"], t["shape"][1:])
    for size in reversed(dims[1:]):  # nest the flat zeros row-major
        data = [data[i : i + size] for i in range(0, len(data), size or 1)]
    return data if dims not in ([], [1]) else data[0]  # [-1, 1]: a column, one value a row


def _predict_example(meta: dict[str, Any]) -> dict[str, Any]:
    if len(meta["inputs"]) == 1:
        return {"instances": [_instance(meta["inputs"][0])]}
    return {"instances": [{t["name"]: _instance(t) for t in meta["inputs"]}]}


def _examples(values: dict[str, Any]) -> dict[str, Any]:
    return {"examples": {name: {"value": v} for name, v in values.items()}} if values else {}


def _json(schema: str, examples: dict[str, Any]) -> dict[str, Any]:
    return {"schema": _type(schema), **_examples(examples)}


def _operation(endpoint: Endpoint, path: str, metadata: dict[str, Any]) -> dict[str, Any]:
    method, request, response = endpoint.method, endpoint.request, endpoint.response
    errors, tag, summary = endpoint.errors, endpoint.tag, endpoint.summary
    params: list[dict[str, Any]] = []
    if "{model_name}" in path:
        names = {name: name for name in metadata}
        name = {"type": "string", "pattern": _NAME_PATTERN}
        params.append(
            {"name": "model_name", "in": "path", "required": True, "schema": name,
             **_examples(names)}
        )  # fmt: skip
        if errors != "all" and "400" not in errors:  # a name that is no name: 400
            errors = f"400,{errors}"
    if "{file}" in path:  # index.html, modelport.js, manifest.json, ort/..., versions/N/model.onnx
        params.append({"name": "file", "in": "path", "required": True, **_json("str", _FILES)})
    if "{key}" in path:
        key = {"type": "string", "maxLength": 512}
        params.append({"name": "key", "in": "path", "required": True, "schema": key})
    if "{model_version}" in path:
        version = {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"}
        params.append({"name": "model_version", "in": "path", "required": True, "schema": version})
        summary = f"{summary} (one version)"
    ok = {"application/json": _json(response, metadata if response == "ModelMetadata" else {})}
    if "/" in response:
        kind = {"type": "object" if "json" in response else "string"} if "*" not in response else {}
        ok = {response: {"schema": kind}}  # */*: a web bundle's files, each its own type
    op: dict[str, Any] = {
        "operationId": method + "_" + (re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"),
        "summary": summary,
        "tags": [tag],
        "parameters": params,
        "responses": {"200": {"description": "Success", "content": ok}},
    }
    if request == "InferRequest":
        header = {
            "description": "Bytes of the JSON part before binary tensor data.",
            **_type("int"),
        }
        params.append({"name": "Inference-Header-Content-Length", "in": "header", "schema": header})
        op["description"] = _BINARY_NOTE
        op["responses"]["200"]["headers"] = {"Inference-Header-Content-Length": {"schema": header}}
        ok["application/octet-stream"] = _BINARY
    if request == "LookupRequest":
        op["requestBody"] = {"required": True, "content": {"application/json": _json(request, {
            n: {"keys": ["customer-1", "customer-2"], "inputs": {"customer-2": _row(m)}}
            for n, m in metadata.items()
        })}}  # fmt: skip
    elif request == "TelemetryRequest":
        record = {"version": 1, "backend": "wasm", "event": "local", "latency_ms": 0.8}
        body = _json(request, {"telemetry": {"model": "digits", "records": [record]}})
        op["requestBody"] = {"required": True, "content": {"application/json": body}}
    elif request == "GraphQLRequest":
        query = "{ models { name versions { version inputs { name datatype shape } } } }"
        op["requestBody"] = {"required": True, "content": {"application/json": _json(
            request, {"models": {"query": query}}
        )}}  # fmt: skip
    elif request != "-":
        make = _infer_example if request == "InferRequest" else _predict_example
        body = {"application/json": _json(request, {n: make(m) for n, m in metadata.items()})}
        if request == "InferRequest":
            body["application/octet-stream"] = _BINARY
        op["requestBody"] = {"required": True, "content": body}
    every = [c for c in _ERRORS if c != "429"]  # "all": what inference may answer
    for code in every if errors == "all" else errors.split(",") if errors != "-" else []:
        shape = _ERROR_SCHEMAS.get(path, "Error")
        op["responses"][code] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": _type(shape)}},
        }
        if code in ("503", "429"):
            op["responses"][code]["headers"] = {"Retry-After": {"schema": _type("int")}}
    if endpoint.open:
        op["security"] = []
    return op


def _row(meta: dict[str, Any]) -> dict[str, Any]:
    return {t["name"]: _instance(t) for t in meta["inputs"]}


def openapi_spec(
    server_version: str, models: dict[str, dict[str, Any]], lookups: bool = False,
    graphql: bool = False, token: bool = True, web: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The OpenAPI 3.1 document of the modelport server, with examples for every model;
    ``token``: the server asks for one (else no operation declares a security requirement).

    openapi_spec("0.1.0", {"digits": {"versions": [1], "platform": "onnx_onnxv1",
                                       "inputs": [...], "outputs": [...]}})
    """
    metadata = {
        name: {
            "name": name,
            "versions": [str(v) for v in m["versions"]],
            "platform": m["platform"],
            "inputs": m["inputs"],
            "outputs": m["outputs"],
        }
        for name, m in copy.deepcopy(models).items()
    }
    paths: dict[str, dict[str, Any]] = {}
    served = {"": True, "lookups": lookups, "graphql": graphql, "web": web}  # --store, --web
    for endpoint in ENDPOINTS:
        if not served.get(endpoint.needs):  # control's: see rest/control.py document()
            continue
        template = endpoint.path
        for version in ("", "/versions/{model_version}") if "*" in template else ("",):
            path = template.replace("*", version)
            paths.setdefault(path, {})[endpoint.method] = _operation(endpoint, path, metadata)
    bearer = {
        "type": "http",
        "scheme": "bearer",
        "description": "Enforced only when the server "
        "runs with a token; /v2/health/* stays open for probes.",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelport model server",
            "version": server_version,
            "description": "Open Inference Protocol (KServe V2) REST with the binary tensor "
            "extension, the V1 `:predict` form, health probes and Prometheus metrics. "
            'Every error is JSON: `{"error": message}`.',
        },
        "tags": [{"name": t} for t in _TAGS if served.get(_TAG_NEEDS.get(t, ""))],
        "security": [{"bearer": []}] if token else [],
        "paths": paths,
        "components": {"schemas": copy.deepcopy(_SCHEMAS), "securitySchemes": {"bearer": bearer}},
    }


_CSS = """
*{box-sizing:border-box}body{margin:0;background:#f6f7f9;color:#1f2933;font:15px/1.5 system-ui,
-apple-system,"Segoe UI",Roboto,sans-serif}main{max-width:1000px;margin:0 auto;padding:32px 24px}
h1{margin:0;font-size:28px}h2{margin:36px 0 12px;font-size:20px;border-bottom:1px solid #d9dee4;
padding-bottom:6px}h3{margin:0 0 6px;font-size:16px}.ver{display:inline-block;margin-left:10px;
padding:2px 8px;border-radius:10px;background:#e4e7eb;font-size:13px;vertical-align:middle}
.lead{color:#52606d;margin:8px 0 0}code,pre{font-family:ui-monospace,"SF Mono",Menlo,Consolas,
monospace;font-size:13px}pre{background:#1f2933;color:#e4e7eb;padding:14px 16px;border-radius:8px;
overflow-x:auto;white-space:pre-wrap;word-break:break-all}.card{background:#fff;border:1px solid
#d9dee4;border-radius:8px;padding:14px 16px;margin:10px 0}.op-head{display:flex;gap:10px;
align-items:center;flex-wrap:wrap}.badge{font:600 12px/1 system-ui,sans-serif;color:#fff;
padding:5px 8px;border-radius:4px;min-width:48px;text-align:center}.get{background:#2f8132}
.post{background:#1f6feb}.path{font-size:14px;font-weight:600}.summary{color:#52606d}.lock{
margin-left:auto;font-size:12px;color:#7b8794}dl{display:grid;grid-template-columns:110px 1fr;
gap:4px 12px;margin:10px 0 0;font-size:14px}dt{color:#7b8794}dd{margin:0}.chip{display:
inline-block;padding:1px 7px;margin:0 4px 2px 0;border-radius:10px;background:#fde8e8;
color:#9b1c1c;font-size:12px}.ok{background:#e3f9e5;color:#1f6e2b}table{border-collapse:
collapse;width:100%;font-size:14px;margin-top:8px}th,td{text-align:left;padding:6px 10px;
border-bottom:1px solid #e4e7eb}th{color:#52606d;font-weight:600;background:#f9fafb}
.muted{color:#7b8794;font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _md(text: str) -> str:  # escaped text with `code` spans; nothing else of Markdown
    parts = _e(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _schema_name(node: dict[str, Any]) -> str:
    ref = node.get("schema", {}).get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else ""


def _try_it(spec: dict[str, Any], base: str, token: bool) -> str:
    auth = ' -H "Authorization: Bearer $TOKEN"' if token else ""
    lines = [f"curl -s {base}/v2/health/ready", f"curl -s{auth} {base}/v2"]
    infer = spec["paths"].get("/v2/models/{model_name}/infer", {}).get("post", {})
    examples = infer.get("requestBody", {}).get("content", {}).get("application/json", {})
    for name, example in list(examples.get("examples", {}).items())[:1]:
        url = shlex.quote(f"{base}/v2/models/{quote(name, safe='')}")
        body = json.dumps(example["value"], separators=(",", ":"))
        if len(body) > 1500:  # big tensors: the full zero body lives in /openapi.json
            lines += [f"# request.json: the {name!r} example in /openapi.json", ""]
            body_arg = "@request.json"
        else:
            body_arg = shlex.quote(body)
        lines += [
            f"curl -s{auth} {url}",
            f"curl -s{auth} -H 'Content-Type: application/json' \\\n  -d {body_arg} {url}/infer",
        ]
    return "<pre><code>" + _e("\n".join(lines)) + "</code></pre>"


def _endpoint(path: str, method: str, op: dict[str, Any], secured: bool) -> str:
    rows = []
    if op.get("parameters"):
        params = ", ".join(
            f"<code>{_e(p['name'])}</code> ({_e(p['in'])})" for p in op["parameters"]
        )
        rows.append(("Parameters", params))
    if "requestBody" in op:
        content = op["requestBody"]["content"]
        kinds = ", ".join(_e(_schema_name(v) or k) for k, v in content.items())
        rows.append(("Request", kinds))
    ok = op["responses"].get("200", {}).get("content", {})
    rows.append(("Response", ", ".join(_e(_schema_name(v) or k) for k, v in ok.items())))
    errors = "".join(
        f'<span class="chip" title="{_e(r["description"])}">{_e(code)}</span>'
        for code, r in op["responses"].items()
        if code >= "400"
    )
    rows.append(("Errors", errors or '<span class="chip ok">none</span>'))
    if op.get("description"):
        rows.append(("Notes", _md(op["description"])))
    lock = '<span class="lock">bearer token</span>' if secured else ""
    return (
        f'<div class="card"><div class="op-head"><span class="badge {_e(method)}">'
        f'{_e(method.upper())}</span><code class="path">{_e(path)}</code><span '
        f'class="summary">{_e(op.get("summary", ""))}</span>{lock}</div><dl>'
        + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
        + "</dl></div>"
    )


def _model(meta: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{role}</td><td><code>{_e(t['name'])}</code></td><td>{_e(t['datatype'])}</td>"
        f"<td><code>[{_e(', '.join(str(d) for d in t['shape']))}]</code></td></tr>"
        for role in ("input", "output")
        for t in meta[role + "s"]
    )
    return (
        f'<div class="card"><h3>{_e(meta["name"])}</h3><div class="muted">versions '
        f"{_e(', '.join(meta['versions']))} &middot; platform {_e(meta['platform'])}</div>"
        "<table><tr><th>role</th><th>name</th><th>datatype</th><th>shape (-1 = dynamic)</th>"
        f"</tr>{rows}</table></div>"
    )


def docs_html(spec: dict[str, Any], base: str = "http://localhost:8000", token: bool = True) -> str:
    """A self-contained HTML page (no external CSS, JS or fonts) rendering ``spec``; its curl
    examples call ``base`` and send a bearer token when ``token`` says the server wants one.

    page = docs_html(openapi_spec("0.1.0", models))
    """
    info = spec["info"]
    default_secured = bool(spec.get("security"))
    ops = [
        _endpoint(path, method, op, bool(op.get("security", default_secured)))
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]
    meta_op = spec["paths"].get("/v2/models/{model_name}", {}).get("get", {})
    meta_content = meta_op.get("responses", {}).get("200", {}).get("content", {})
    models = [
        e["value"] for e in meta_content.get("application/json", {}).get("examples", {}).values()
    ]
    model_cards = "".join(_model(m) for m in models) or '<p class="muted">No models loaded.</p>'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{_e(info["title"])}</title>'
        f'<style>{_CSS}</style></head><body><main><h1>{_e(info["title"])}<span class="ver">'
        f'{_e(info["version"])}</span></h1><p class="lead">{_md(info.get("description", ""))}'
        f'</p><h2>Try it</h2>{_try_it(spec, base, token)}<p class="muted">'
        f"{'$TOKEN is the token the server was started with. ' if token else ''}"
        "The machine-readable document is at "
        '<a href="/openapi.json">/openapi.json</a>.</p><h2>Models</h2>'
        f"{model_cards}<h2>Endpoints</h2>{''.join(ops)}</main></body></html>\n"
    )
