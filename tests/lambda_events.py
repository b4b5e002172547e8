"""Events as Lambda delivers them, in the shapes of AWS's documentation: API Gateway HTTP API
payload format 2.0, REST API (payload 1.0) and Lambda function URLs. A body that is not text
travels base64-encoded with ``isBase64Encoded``, as Lambda sends it.
"""

from __future__ import annotations

import base64
from typing import Any


def _body(body: bytes | str | None, binary: bool) -> tuple[str | None, bool]:
    if body is None:
        return None, False
    if binary:
        raw = body if isinstance(body, bytes) else body.encode()
        return base64.b64encode(raw).decode(), True
    return body if isinstance(body, str) else body.decode(), False


def http_api(
    method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
    binary: bool = False, query: str = "",
) -> dict[str, Any]:  # fmt: skip
    """API Gateway HTTP API, payload format 2.0 (the $default stage and route)."""
    text, encoded = _body(body, binary)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {
            "accept": "*/*",
            "content-type": "application/json",
            "host": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "user-agent": "curl/7.64.1",
            "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
            "x-forwarded-for": "205.255.255.176",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **(headers or {}),
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r3pmxmplak",
            "domainName": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "205.255.255.176",
                "userAgent": "curl/7.64.1",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2020:05:16:23 +0000",
            "timeEpoch": 1583817383220,
        },
        "isBase64Encoded": encoded,
    }
    if text is not None:
        event["body"] = text
    return event


def function_url(
    method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
    binary: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """A Lambda function URL's request: payload 2.0, its own domain, no stage of its own."""
    event = http_api(method, path, body, headers, binary)
    domain = "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6.lambda-url.us-west-2.on.aws"
    event["headers"]["host"] = domain
    event["requestContext"].update(
        apiId="a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", domainName=domain,
        domainPrefix="a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", authorizer={"iam": {
            "accessKey": "AKIA...", "accountId": "111122223333", "callerId": "AIDA...",
            "userArn": "arn:aws:iam::111122223333:user/example-user", "userId": "AIDA...",
        }},
    )  # fmt: skip
    return event


def rest_api(
    method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
    binary: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """API Gateway REST API, Lambda proxy integration (payload 1.0), stage "prod"."""
    text, encoded = _body(body, binary)
    host = "abc123.execute-api.us-east-1.amazonaws.com"
    sent = {"Content-Type": "application/json", "Host": host, "User-Agent": "curl/7.64.1",
            **(headers or {})}  # fmt: skip
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": sent,
        "multiValueHeaders": {name: [value] for name, value in sent.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "httpMethod": method,
            "identity": {"sourceIp": "192.0.2.1", "userAgent": "curl/7.64.1"},
            "path": f"/prod{path}",
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "resourcePath": "/{proxy+}",
            "stage": "prod",
        },
        "body": text,
        "isBase64Encoded": encoded,
    }
