"""Limits below the routes: body size and read time (ASGI), slow and surplus connections (uvicorn's protocol),
plus the headers and the metrics every answer gets.

uvicorn by itself never closes a connection whose request head has not arrived (it starts its keep-alive timer only
after a response), so 400 slow-header connections stay open for good and 20,000 exhaust the file descriptors;
`limit_concurrency` does not help, as it answers 503 only once a request head is complete. GuardedHttpProtocol adds
a head timeout, a head size cap and a cap on open connections.
"""

from __future__ import annotations

import asyncio
import functools
import json

import grpc
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.http import error_response
from gateway.errors import GatewayError, PayloadTooLarge

CLOSE = (b"connection", b"close")
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; uvicorn's httptools parser has no cap of its own
ON_REFUSED = "gateway.on_connection_refused"  # lifespan state key: a callback(reason) that counts refusals


# A raw 2048 x 2048 RGB GeoTIFF (the largest scene the default tile limit allows at 10 m) is 12.6 MB: say what to do
TOO_LARGE_HINT = (": send it compressed (PNG, JPEG, or a DEFLATE GeoTIFF), raise GATEWAY_MAX_BODY_BYTES, or run "
                  "`python -m gateway scene IN.tif OUT.tif` for large rasters")


class BodyTimeout(GatewayError):
    http_status = 408
    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED
    code = "body_timeout"


def _raw(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with three guards against slow and surplus clients.

    - a request head (request line and headers) must arrive within `head_timeout_s` of the connection opening or of
      its first byte (a keep-alive connection's next request): else 408 and close;
    - a head over MAX_HEAD_BYTES: 431 and close;
    - past `max_connections` open connections, a new one gets 503 and is closed at once, so descriptors stay bounded.
    """

    def __init__(self, *args, head_timeout_s: float, max_connections: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.max_connections = max_connections
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def _refuse(self, reason: str, status: bytes) -> None:
        callback = self.app_state.get(ON_REFUSED)
        if callback is not None:
            callback(reason)
        if not self.transport.is_closing():
            self.transport.write(_raw(status))
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            return self._refuse("too_many_connections", b"503 Service Unavailable")
        self._arm()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes = 0

    def _head_timeout(self) -> None:
        self._head_timer = None
        self._refuse("head_timeout", b"408 Request Timeout")

    def data_received(self, data: bytes) -> None:
        """Counts the head's bytes only, up to its blank line: a client that sends head and body in one write (most
        do, for small bodies) is not mistaken for one with an oversized head."""
        if self._head_timer is not None:
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > MAX_HEAD_BYTES:
                self._disarm()
                return self._refuse("head_too_large", b"431 Request Header Fields Too Large")
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_options(settings) -> dict:
    """uvicorn.Config / uvicorn.run keyword arguments that apply the connection limits of `settings`."""
    return {"http": functools.partial(GuardedHttpProtocol, head_timeout_s=settings.head_timeout_s,
                                      max_connections=settings.max_connections),
            "timeout_keep_alive": settings.keep_alive_s}


def _has_body(headers: dict[bytes, bytes]) -> bool:
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"


class BodySizeLimit:
    """Pure ASGI middleware: 413 on a Content-Length over the limit, or as soon as the streamed bytes pass it.

    A response sent before the body was read to its end (a 413, or any early refusal such as 415) also closes the
    connection: otherwise the server would read and discard the rest to reuse the connection, so a client could
    stream an endless body at it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s  # the whole body must arrive within this time of the request head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            message = f"the body is {int(declared)} bytes; the limit is {self.max_bytes}{TOO_LARGE_HINT}"
            response = error_response(413, PayloadTooLarge.code, message)
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        seen, unread = 0, _has_body(headers)
        deadline = asyncio.get_running_loop().time() + self.timeout_s if self.timeout_s else None

        async def counting_receive() -> Message:
            nonlocal seen, unread
            if seen > self.max_bytes:  # refused already: read no further, whoever asks
                return {"type": "http.disconnect"}
            if unread and deadline is not None:  # a stalled body; waiting for a disconnect afterwards is no read
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    seen = self.max_bytes + 1  # read no further
                    state = scope.get("state") or {}
                    if state.get(ON_REFUSED):
                        state[ON_REFUSED]("body_timeout")
                    raise BodyTimeout(f"the body did not arrive within {self.timeout_s:g} s") from None
            else:
                message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"the body passed the limit of {self.max_bytes} bytes{TOO_LARGE_HINT}")
                unread = unread and message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            if unread and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        return await self.app(scope, counting_receive, closing_send)


# The demo page: its own scripts, styles and API only; images also from blob: (previews, heat maps) and data: (icon).
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"  # JSON, PNG, metrics: nothing to run, nothing to frame
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """Every answer: no MIME sniffing, no framing, no referrer; a Content-Security-Policy unless the route set its
    own (the API docs pages do): PAGE_CSP for HTML, API_CSP for the rest."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"content-security-policy" not in names:
                    html = any(n.lower() == b"content-type" and v.startswith(b"text/html") for n, v in headers)
                    headers.append((b"content-security-policy", (PAGE_CSP if html else API_CSP).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class ResponseMetrics:
    """Counts every HTTP answer in gateway_responses_total{route, status, code}: route is the matched route's
    template (`/v1/samples/{name}`, never the raw path) or `unmatched`; code is the error body's `code` (`ok` below
    400). So 400/404/413/415/422 raised before the core, Starlette's own 404/405 and the 413 sent before routing
    are all counted. An exception that escapes every handler counts as 500 `internal`."""

    def __init__(self, app: ASGIApp, metrics, routes: list):
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's route list, read when needed (routes may be added after the middleware)

    def _route(self, scope: Scope) -> str:
        """The route that served, or would have served (a 413 sent before routing), this request."""
        route = scope.get("route")
        if route is not None:
            return route.path
        return next((r.path for r in _flat(self.routes) if r.matches(scope)[0] != Match.NONE), "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, error, body = None, False, b""

        async def counting_send(message: Message) -> None:
            nonlocal status, error, body
            if message["type"] == "http.response.start":
                status = message["status"]
                error = status >= 400 and any(n.lower() == b"content-type" and b"json" in v
                                              for n, v in message.get("headers", []))
            elif message["type"] == "http.response.body" and error and len(body) < 4096:
                body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            status, body = status or 500, b'{"error": {"code": "internal"}}'
            raise
        finally:
            if status is not None:
                self.metrics.responses.labels(self._route(scope), str(status), _code(status, body)).inc()


def _flat(routes: list) -> list:
    """Routes with a path, also those of included routers (which this FastAPI keeps nested)."""
    found = []
    for route in routes:
        if getattr(route, "path", None) is not None:
            found.append(route)
        else:
            found += _flat(getattr(getattr(route, "original_router", None), "routes", []))
    return found


def _code(status: int, body: bytes) -> str:
    if status < 400:
        return "ok"
    try:
        return str(json.loads(body)["error"]["code"])[:32]
    except (ValueError, KeyError, TypeError):
        return "none"
