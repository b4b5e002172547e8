"""GraphQL at /graphql: the served models and their signatures, and a ``predict`` mutation.

    query { models { name versions { version platform inputs { name datatype shape } } } }
    mutation { predict(model: "tiny", inputs: [{name: "input", data: [[1, 2, 3, 4]]}]) {
        version outputs { name datatype shape data } } }

Predictions go through the same Engine as REST and gRPC (validation, cache, queue, batching).
Tensor data travels as the JSON scalar: nested lists, or a flat list with a ``shape``. Errors
come in GraphQL's ``errors`` list, each with ``extensions.code``; the HTTP status is 200 once a
document runs, 400 when it cannot (malformed, invalid against the schema, over a limit below),
504 when it did not finish within the request timeout.

What one request may cost is bounded before anything runs: the document's size and lexical
tokens, the validation errors looked for, and the ``predict`` fields one operation runs
(aliases would otherwise let a single request queue a thousand predictions).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from typing import Any

import numpy as np
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_schema,
    parse,
    validate,
)
from graphql import execute as execute_document

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
from modelport.server.engine import Engine
from modelport.server.requests import RequestRecord, status_of
from modelport.server.tensors import (
    check_depth,
    check_shape,
    check_strings,
    datatype_of,
    json_inputs,
    parse_json,
    shaped_values,
)
from modelport.signature import TensorSpec, json_array

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
  "With a fallback in the manifest: its circuit breaker's state (closed, open, half-open)."
  circuit: String
  "Why the fallback answered (error, deadline, open); null when the model did."
  fallback: String
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


# What one request may make the server do.
MAX_QUERY_BYTES = 64 * 1024  # the document itself: tensor data belongs in variables
MAX_TOKENS = 3_000  # lexical tokens of the document, counted while it is parsed
MAX_PREDICTS = 16  # predict fields one operation runs, aliases and fragments included
_MAX_VALIDATION_ERRORS = 20  # validation stops looking after these
_INLINE_QUERY_BYTES = 1024  # larger documents are parsed and validated in a thread
_INLINE_BODY_BYTES = 256 * 1024  # larger bodies are decoded in a thread, as REST does


class _Refused(Exception):
    """A document that must not run, with the errors that say why (answered with 400)."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__(errors[0].message)
        self.errors = errors


async def execute(engine: Engine, body: bytes, use_cache: bool) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the GraphQL response for a POSTed ``{"query", "variables"?}``.

    The whole request runs within the request timeout, each predict of it included: past it
    the work is cancelled and the answer is 504.
    """
    timeout = engine.config.limits.request_timeout_s
    try:
        return await asyncio.wait_for(_execute(engine, body, use_cache), timeout)
    except asyncio.TimeoutError:
        message = (
            f"the request did not finish within the request timeout of {timeout} s; "
            "send fewer predictions in one request"
        )
        return 504, {"errors": [{"message": message, "extensions": {"code": "DEADLINE_EXCEEDED"}}]}


async def _execute(engine: Engine, body: bytes, use_cache: bool) -> tuple[int, dict[str, Any]]:
    limits = engine.config.limits
    try:
        if len(body) > _INLINE_BODY_BYTES:
            request = await asyncio.to_thread(parse_json, body, limits)
        else:
            request = parse_json(body, limits)
        if not isinstance(request, dict) or not isinstance(request.get("query"), str):
            raise InvalidInputError('the body must be {"query": "...", "variables": {...}}')
        query: str = request["query"]
        variables = request.get("variables")
        operation = request.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            raise InvalidInputError("'variables' must be a JSON object")
        if operation is not None and not isinstance(operation, str):
            raise InvalidInputError("'operationName' must be a string")
        # Characters first: a huge query is refused without being encoded.
        if len(query) > MAX_QUERY_BYTES or len(encoded := query.encode()) > MAX_QUERY_BYTES:
            raise InvalidInputError(
                f"the query is over the limit of {MAX_QUERY_BYTES} bytes; send tensor data "
                "in variables rather than in the query"
            )
        # Brackets in the document nest too (list literals, selections): bound them as JSON.
        check_depth(encoded, limits.max_json_depth)
    except InvalidInputError as exc:
        return 400, {"errors": [{"message": str(exc), "extensions": {"code": "INVALID_INPUT"}}]}
    schema = _schema()
    try:
        if len(encoded) > _INLINE_QUERY_BYTES:  # pure Python: the loop goes on serving meanwhile
            document = await asyncio.to_thread(_document, schema, query)
        else:
            document = _document(schema, query)
    except _Refused as refused:  # every error with a code, as the executor's carry
        errors: list[dict[str, Any]] = [dict(error.formatted) for error in refused.errors]
        for error in errors:
            error["extensions"] = {"code": "INVALID_INPUT", **error.get("extensions", {})}
        return 400, {"errors": errors}
    result = execute_document(
        schema,
        document,
        variable_values=variables,
        operation_name=operation,
        context_value=_Context(engine, use_cache, limits),
    )
    if inspect.isawaitable(result):
        result = await result
    # No data at all means the document never ran (operation, variables).
    status = 400 if result.data is None and result.errors and not _ran(result) else 200
    return status, dict(result.formatted)


def _document(schema: GraphQLSchema, query: str) -> DocumentNode:
    """The parsed and validated document of ``query``, or _Refused when it must not run."""
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError as error:  # a syntax error, or more tokens than the limit
        raise _Refused([error]) from None
    # Counted before validation, whose cost grows with the square of the fields: a document of
    # many aliased predicts is refused before any of it. One that cannot be counted (a
    # fragment that is not defined) is left to validation to explain.
    try:
        predicts = _most_predicts(document)
    except RecursionError:
        raise _Refused([GraphQLError("the document nests fragments too deeply")]) from None
    except (KeyError, AttributeError):
        predicts = 0
    errors = validate(schema, document, max_errors=_MAX_VALIDATION_ERRORS)
    if errors:
        raise _Refused(list(errors))
    if predicts > MAX_PREDICTS:
        raise _Refused([
            GraphQLError(
                f"an operation may run predict at most {MAX_PREDICTS} times (each alias "
                f"counts, in fragments too); this one runs it {predicts} times: send the rest "
                "in further requests",
                extensions={"code": "INVALID_INPUT"},
            )
        ])  # fmt: skip
    return document


def _most_predicts(document: DocumentNode) -> int:
    """How many times the mutation of ``document`` that runs the most predicts runs one.

    As the executor does: fields are merged by response name (alias or name), so a fragment
    spread twice runs its fields once. @skip and @include are not evaluated: an upper bound.
    """
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    keys_of: dict[str, frozenset[str]] = {}  # fragment -> the response names of its predicts

    def keys(selections: SelectionSetNode) -> set[str]:
        found: set[str] = set()
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                if selection.name.value == "predict":
                    found.add((selection.alias or selection.name).value)
            elif isinstance(selection, InlineFragmentNode):
                found |= keys(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name not in keys_of and name in fragments:
                    keys_of[name] = frozenset()  # validation has refused cycles; still, stop
                    keys_of[name] = frozenset(keys(fragments[name].selection_set))
                found |= keys_of.get(name, frozenset())
        return found

    return max(
        (
            len(keys(d.selection_set))
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode) and d.operation == OperationType.MUTATION
        ),
        default=0,
    )


def _ran(result: ExecutionResult) -> bool:
    return any(error.path for error in result.errors or ())


class _Context:
    def __init__(self, engine: Engine, use_cache: bool, limits: ServerLimits) -> None:
        self.engine = engine
        self.use_cache = use_cache
        self.limits = limits


@functools.cache  # built once per process, on first use
def _schema() -> GraphQLSchema:
    schema = build_schema(SDL)
    assert schema.query_type is not None
    assert schema.mutation_type is not None
    schema.query_type.fields["models"].resolve = _models
    schema.query_type.fields["model"].resolve = _model
    schema.mutation_type.fields["predict"].resolve = _predict
    return schema


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
        return _describe(engine, name) if name in engine.models().names() else None
    except Exception as exc:
        raise _graphql_error(exc, engine.new_request_id()) from None


# -- predict ---------------------------------------------------------------------------------


async def _predict(
    _: None, info: GraphQLResolveInfo[_Context], model: str, inputs: list[dict[str, Any]],
    version: int | None = None, outputs: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    context: _Context = info.context
    engine = context.engine
    record = RequestRecord(engine.new_request_id(), time.monotonic())
    status = 200
    try:
        served = engine.admit(
            check_name(model), None if version is None else check_version(version), record
        )
        arrays = _arrays(inputs, context.limits)
        engine.check_request(served, {}, outputs)
        result = await engine.predict(served, arrays, record, None, context.use_cache)
        names = outputs or list(result)
        guard = record.guard or {}
        return {
            "model": model,
            "version": served.version,
            "circuit": guard.get("x-modelport-circuit"),
            "fallback": guard.get("x-modelport-fallback"),
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
    except asyncio.CancelledError:
        status = 504  # the request's timeout passed while this predict ran or waited
        raise
    except Exception as exc:
        status = status_of(exc)
        if status == 500:
            log.error("request %s failed: %s", record.request_id, exc, exc_info=exc)
        raise _graphql_error(exc, record.request_id) from None
    finally:  # counted per predict, the version it held released; logged as a whole
        record.finish(status)


def _arrays(inputs: list[dict[str, Any]], limits: ServerLimits) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in inputs:
        name = item["name"]
        if name in values:
            raise InvalidInputError(f"input {name!r} appears more than once", name)
        data, shape = item["data"], item.get("shape")
        if shape is not None:
            dims = check_shape(name, shape, limits)
            try:
                data = json_array(shaped_values(name, data, dims, limits), dims)
            except ValueError as exc:
                raise InvalidInputError(f"input {name!r}: data is {exc}", name) from None
        values[name] = data
    arrays = json_inputs(values, limits)
    check_strings(arrays.items(), limits)
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
