"""GraphQL at /graphql: the served models and their signatures, and a ``predict`` mutation.

    query { models { name versions { version platform inputs { name datatype shape } } } }
    mutation { predict(model: "tiny", inputs: [{name: "input", data: [[1, 2, 3, 4]]}]) {
        version outputs { name datatype shape data } } }

Predictions go through the same Engine as REST and gRPC (validation, cache, queue, batching).
Tensor data travels as the JSON scalar: nested lists, or a flat list with a ``shape``. Errors
come in GraphQL's ``errors`` list, each with ``extensions.code``; the HTTP status is 200 once a
document runs, 400 when it cannot (malformed, invalid against the schema).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSchema,
    build_schema,
    graphql,
)

from modelport.config import ServerLimits
from modelport.errors import (
    DeadlineExceededError,
    InvalidInputError,
    InvalidNameError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    PredictionError,
)
from modelport.repository import check_name, check_version
from modelport.runtimes import PLATFORMS
from modelport.server import metrics
from modelport.server.engine import Engine
from modelport.server.http import error_response
from modelport.server.protocol import check_depth, check_shape, datatype_of, parse_json
from modelport.signature import TensorSpec

log = logging.getLogger("modelport.server")

SDL = """
"Any JSON value; tensor data is a nested list (or a flat one with a shape)."
scalar JSON

type Query {
  "Every served model."
  models: [Model!]!
  "One model by name, or null when none is served under it."
  model(name: String!): Model
}

type Model {
  name: String!
  "The served versions, oldest first."
  versions: [ModelVersion!]!
}

type ModelVersion {
  version: Int!
  platform: String!
  inputs: [Tensor!]!
  outputs: [Tensor!]!
}

"A tensor of a signature; -1 marks a dimension of any size."
type Tensor {
  name: String!
  datatype: String!
  shape: [Int!]!
}

input TensorInput {
  name: String!
  data: JSON!
  "Needed only when data is a flat list."
  shape: [Int!]
}

type TensorOutput {
  name: String!
  datatype: String!
  shape: [Int!]!
  data: JSON!
}

type Prediction {
  model: String!
  version: Int!
  outputs: [TensorOutput!]!
}

type Mutation {
  "Run a model on named inputs; the newest version unless one is given."
  predict(model: String!, inputs: [TensorInput!]!, version: Int, outputs: [String!]): Prediction!
}
"""

# Domain errors -> GraphQL error codes (extensions.code): the only place that knows both.
CODES: tuple[tuple[type[Exception], str], ...] = (
    (InvalidInputError, "INVALID_INPUT"),
    (InvalidNameError, "INVALID_INPUT"),
    (ModelNotFoundError, "NOT_FOUND"),
    (NotReadyError, "UNAVAILABLE"),
    (OverloadedError, "OVERLOADED"),
    (DeadlineExceededError, "DEADLINE_EXCEEDED"),
    (PredictionError, "INTERNAL"),
)


async def execute(engine: Engine, body: bytes, use_cache: bool) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the GraphQL response for a POSTed ``{"query", "variables"?}``."""
    limits = engine.config.limits
    try:
        request = parse_json(body, limits)
        if not isinstance(request, dict) or not isinstance(request.get("query"), str):
            raise InvalidInputError('the body must be {"query": "...", "variables": {...}}')
        variables = request.get("variables")
        operation = request.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            raise InvalidInputError("'variables' must be a JSON object")
        if operation is not None and not isinstance(operation, str):
            raise InvalidInputError("'operationName' must be a string")
        # Brackets in the document nest too (list literals, selections): bound them as JSON.
        check_depth(request["query"].encode(), limits.max_json_depth)
    except InvalidInputError as exc:
        return 400, {"errors": [{"message": str(exc)}]}
    result: ExecutionResult = await graphql(
        _schema(),
        request["query"],
        variable_values=variables,
        operation_name=operation,
        context_value=_Context(engine, use_cache, limits),
    )
    # No data at all means the document never ran (syntax, validation, variables).
    status = 400 if result.data is None and result.errors and not _ran(result) else 200
    return status, dict(result.formatted)


def _ran(result: ExecutionResult) -> bool:
    return any(error.path for error in result.errors or ())


class _Context:
    def __init__(self, engine: Engine, use_cache: bool, limits: ServerLimits) -> None:
        self.engine = engine
        self.use_cache = use_cache
        self.limits = limits


_SCHEMA: list[GraphQLSchema] = []


def _schema() -> GraphQLSchema:
    if not _SCHEMA:  # built once per process, on first use
        schema = build_schema(SDL)
        assert schema.query_type is not None
        assert schema.mutation_type is not None
        schema.query_type.fields["models"].resolve = _models
        schema.query_type.fields["model"].resolve = _model
        schema.mutation_type.fields["predict"].resolve = _predict
        _SCHEMA.append(schema)
    return _SCHEMA[0]


# -- queries ---------------------------------------------------------------------------------


def _tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]


def _describe(engine: Engine, name: str) -> dict[str, Any]:
    registry = engine.models()
    versions = []
    for version in registry.versions(name):
        served = registry.get(name, version)
        versions.append(
            {
                "version": version,
                "platform": PLATFORMS[str(served.model.metadata.get("runtime", "onnx"))],
                "inputs": _tensors(served.model.signature.inputs),
                "outputs": _tensors(served.model.signature.outputs),
            }
        )
    return {"name": name, "versions": versions}


def _models(_: None, info: GraphQLResolveInfo[_Context]) -> list[dict[str, Any]]:
    engine: Engine = info.context.engine
    try:
        return [_describe(engine, name) for name in engine.models().names()]
    except Exception as exc:
        raise _graphql_error(exc, engine.new_request_id()) from None


def _model(_: None, info: GraphQLResolveInfo[_Context], name: str) -> dict[str, Any] | None:
    engine: Engine = info.context.engine
    try:
        if name not in engine.models().names():
            return None
        return _describe(engine, name)
    except Exception as exc:
        raise _graphql_error(exc, engine.new_request_id()) from None


# -- predict ---------------------------------------------------------------------------------


async def _predict(
    _: None, info: GraphQLResolveInfo[_Context], model: str, inputs: list[dict[str, Any]],
    version: int | None = None, outputs: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    context: _Context = info.context
    engine = context.engine
    started = time.perf_counter()
    request_id = engine.new_request_id()
    measured: dict[str, Any] = {}
    status = 200
    try:
        served = engine.admit(
            check_name(model), None if version is None else check_version(version), measured
        )
        arrays = _arrays(inputs, context.limits)
        engine.check_request(served, {}, outputs)
        result = await engine.predict(served, arrays, measured, None, context.use_cache)
        names = outputs or list(result)
        return {
            "model": model,
            "version": served.version,
            "outputs": [
                {
                    "name": name,
                    "datatype": datatype_of(result[name]),
                    "shape": list(result[name].shape),
                    "data": _json_data(result[name]),
                }
                for name in names
            ],
        }
    except Exception as exc:
        status = error_response(exc, request_id).status
        if status == 500:
            log.error("request %s failed: %s", request_id, exc, exc_info=exc)
        raise _graphql_error(exc, request_id) from None
    finally:
        if "model" in measured:
            metrics.for_model(measured["model"], measured["version"]).finished(
                status, time.perf_counter() - started
            )


def _arrays(inputs: list[dict[str, Any]], limits: ServerLimits) -> dict[str, Any]:
    arrays: dict[str, Any] = {}
    for item in inputs:
        name = item["name"]
        if name in arrays:
            raise InvalidInputError(f"input {name!r} appears more than once", name)
        data, shape = item["data"], item.get("shape")
        if shape is not None:
            dims = check_shape(name, shape, limits)
            try:
                array = np.asarray(data)
            except ValueError:
                raise InvalidInputError(
                    f"input {name!r}: data is ragged: nested lists of unequal length", name
                ) from None
            if array.size != math.prod(dims):
                raise InvalidInputError(
                    f"input {name!r}: data has {array.size} values but shape {list(dims)} "
                    f"needs {math.prod(dims)}",
                    name,
                )
            data = array.reshape(dims)
        arrays[name] = data
    return arrays


def _json_data(array: np.ndarray) -> Any:
    if array.dtype.kind in "OUS":
        flat = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()
        ]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)  # orjson writes it as nested lists, at C speed


def _graphql_error(exc: Exception, request_id: str) -> GraphQLError:
    for kind, code in CODES:
        if isinstance(exc, kind):
            if code == "INTERNAL":  # the model's own words may hold paths or secrets
                break
            return GraphQLError(str(exc), extensions={"code": code})
    message = (
        "the model failed on this request; the server log has the details "
        if isinstance(exc, PredictionError)
        else "internal server error; the server log has the details "
    )
    return GraphQLError(message + f"(request id {request_id})", extensions={"code": "INTERNAL"})
