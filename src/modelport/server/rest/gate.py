"""Who may use the REST door: the token when there is one; without, on loopback, only this
machine's programs and the server's own pages.

Without a token, a web page the user visits could otherwise POST to the service (a "simple"
cross-site request needs no CORS preflight) and, by DNS rebinding, read its answers: requests
must name a loopback Host, and an Origin, when a browser sends one, must be the server's own.
Standard clients (tritonclient, curl, httpx) send no Origin and are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from modelport.config import ServerConfig, is_loopback
from modelport.server.requests import bearer_ok
from modelport.server.rest.http import HTTPError, Scope, header, headers

_LOCAL_HOSTS_KEPT = 64  # Host values already found loopback: the check runs once per value


class Gate:
    """``check(scope)`` raises the HTTPError (401, 403) that refuses a request."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # --no-auth beyond loopback chose exposure; on loopback it exposes nothing more.
        self.local_only = config.token is None and is_loopback(config.host)
        self._local_hosts: set[bytes] = set()  # Host values (as sent) found loopback

    def check(self, scope: Scope) -> None:
        """The token when there is one; without, on loopback, this machine's requests only."""
        token = self.config.token
        if token is not None:
            if not bearer_ok(header(scope, b"authorization"), token):
                raise HTTPError(
                    401,
                    "missing or wrong access token: send 'Authorization: Bearer <token>'",
                    {"www-authenticate": "Bearer"},
                )
        elif self.local_only:
            self._check_local(scope)

    def _check_local(self, scope: Scope) -> None:
        # Health endpoints too: they tell nothing, but a page has no business probing them.
        table = headers(scope)
        raw_host, raw_origin = table.get(b"host"), table.get(b"origin")
        if raw_origin is None and raw_host in self._local_hosts:  # most requests, once seen
            return
        origin = None if raw_origin is None else raw_origin.decode("latin-1")
        if raw_host is not None and raw_host not in self._local_hosts:
            host = raw_host.decode("latin-1")
            if not _loopback_host(host):
                raise HTTPError(
                    403,
                    f"the Host header {host!r:.80} is not a name of this machine: without a "
                    "token the server answers only requests to localhost or a loopback "
                    "address (so that no web page reaches it by DNS rebinding); behind a "
                    "proxy, have it send 'Host: localhost', or start the server with --token",
                )
            if len(self._local_hosts) < _LOCAL_HOSTS_KEPT:
                self._local_hosts.add(raw_host)
        if origin is not None:
            server = scope.get("server")
            port = server[1] if server and isinstance(server[1], int) else self.config.port
            if not _own_origin(origin, port):
                raise HTTPError(
                    403,
                    f"the Origin header {origin!r:.80} is not this server's own: without a "
                    "token the server refuses requests made by web pages of other sites; "
                    "start it with --token to serve them",
                )


def _loopback_host(value: str) -> bool:
    """Whether a Host header (``name``, ``name:port``, ``[::1]:port``) names loopback."""
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    return (not port or (port.isascii() and port.isdigit())) and is_loopback(name)


def _own_origin(origin: str, port: int) -> bool:
    """Whether an Origin header is the server's own: http(s), a loopback host, its port."""
    try:
        parts = urlsplit(origin)
        given = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.hostname is None:
        return False
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return False
    default = 443 if parts.scheme == "https" else 80
    return is_loopback(parts.hostname) and (given or default) == port
