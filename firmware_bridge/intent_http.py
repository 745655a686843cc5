"""The phone's local intent endpoint (`POST /v1/intents`, `GET /v1/device`), held against slow and
greedy clients so that a real intent always gets in.

aiohttp parses HTTP; each connection is wrapped in a guard that counts it and times it:

- **header timeout**: a client has `header_timeout` seconds from connecting to send the request's
  headers whole; then it is answered 408 and closed (headers sent a byte at a time hold nothing).
- **body timeout**: then `body_timeout` seconds to send the body whole; then 408 and closed.
- **body cap**: a body over `max_body` bytes is refused 413 (`too_large`), by its `Content-Length`
  before a byte of it is read, or when the bytes read pass the cap.
- **connection cap**: at most `max_connections` are open at once. One more takes the place of the
  oldest connection that has not finished its headers yet (closed at once: a slow client loses its
  place to a new one); when every open connection has sent its headers (intents being read or
  run), the new one is answered 503 (`busy`) and closed.
- one request per connection: every answer closes it (`Connection: close`), so the header timeout
  covers every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from device_sdk.protocol.errors import ConfigError, ErrorCode
from device_sdk.protocol.messages import IntentResult

from .intents import MAX_INTENT

log = logging.getLogger(__name__)

HTTP_STATUS = {
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSIGNED: 401,
    ErrorCode.BAD_SIGNATURE: 401,
    ErrorCode.UNKNOWN_KEY: 401,
    ErrorCode.REPLAYED: 409,
    ErrorCode.UNKNOWN_ACTION: 422,
    ErrorCode.UNSUPPORTED_LOCALE: 422,
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.STALE: 400,
    ErrorCode.BAD_IMAGE: 400,
    ErrorCode.BUSY: 503,
    ErrorCode.NOT_CONNECTED: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.AGENT_TIMEOUT: 504,
    ErrorCode.INTERNAL: 500,
}
"""The local endpoint's status for an intent that was refused or failed; an intent that ran to an
outcome, or that the agent could not make a cart of (`not_understood`...), is 200."""


@dataclass(frozen=True)
class HttpLimits:
    """How long and how much the local endpoint waits for and takes from a client (module doc)."""

    header_timeout: float = 10.0
    """Seconds from connecting until the request's headers are all in."""
    body_timeout: float = 30.0
    """Seconds from the headers until the whole body is in."""
    max_body: int = MAX_INTENT
    """The largest body taken, in bytes (an intent with a 256 KiB photo fits)."""
    max_connections: int = 64
    """Connections open at once."""

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.body_timeout, self.max_body, self.max_connections) <= 0:
            raise ConfigError(f"HTTP limits must be positive: {self}")


class IntentEndpoint:
    """Serves `answer(body) -> IntentResult` at `POST /v1/intents` and `info()` at `GET /v1/device`,
    within `limits`. `open` and `reading` count connections; `evicted`, `refused` and `timed_out`
    what the guard closed."""

    def __init__(
        self,
        answer: Callable[[bytes], Awaitable[IntentResult]],
        info: Callable[[], bytes],
        limits: HttpLimits | None = None,
    ) -> None:
        self.answer = answer
        self.info = info
        self.limits = limits or HttpLimits()
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self._open: dict[_Guard, None] = {}  # in the order they connected
        self._server: asyncio.Server | None = None
        self._http: web.Server | None = None

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    @property
    def reading(self) -> int:
        """Open connections whose headers are in (a body being read, or an intent being run)."""
        return sum(guard.headers_in for guard in self._open)

    async def start(self, host: str, port: int) -> int:
        """Listen on `host:port` (0 picks one); returns the port."""
        self._http = web.Server(self._handle, access_log=None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Guard(self), host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for guard in list(self._open):
            guard.close()
        if self._http is not None:
            await self._http.shutdown(1.0)
        if self._server is not None:
            await self._server.wait_closed()

    # the guard's calls -------------------------------------------------------------------

    def admit(self, guard: _Guard) -> asyncio.Protocol | None:
        """Take `guard` in, making room by closing the oldest one still sending its headers: the
        aiohttp protocol that reads its request, or None when every place is taken by a request."""
        if len(self._open) >= self.limits.max_connections:
            slow = next((g for g in self._open if not g.headers_in), None)
            if slow is None:
                self.refused += 1
                return None
            self.evicted += 1
            slow.close()
        assert self._http is not None
        self._open[guard] = None
        return self._http()

    def release(self, guard: _Guard) -> None:
        self._open.pop(guard, None)

    # HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/v1/intents" and request.method == "POST":
            response = await self._post_intent(request)
        elif request.path == "/v1/device" and request.method == "GET":
            response = web.Response(body=self.info(), content_type="application/json")
        elif request.path in ("/v1/intents", "/v1/device"):
            response = web.Response(status=405, text="method not allowed")
        else:
            response = web.Response(status=404, text="not found")
        response.force_close()  # one request per connection: the header timeout covers each
        return response

    async def _post_intent(self, request: web.BaseRequest) -> web.Response:
        cap = self.limits.max_body
        if request.content_length is not None and request.content_length > cap:
            return _result(413, IntentResult(code=ErrorCode.TOO_LARGE, text=_too_large(request.content_length, cap)))
        body = bytearray()  # at most one byte over the cap: enough to refuse it as too large
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while len(body) <= cap and (chunk := await request.content.read(cap + 1 - len(body))):
                    body += chunk
        except TimeoutError:
            self.timed_out += 1
            text = f"the body did not arrive within {self.limits.body_timeout:g} s"
            return _result(408, IntentResult(code=ErrorCode.TIMEOUT, text=text))
        if len(body) > cap:
            return _result(413, IntentResult(code=ErrorCode.TOO_LARGE, text=_too_large(len(body), cap)))
        result = await self.answer(bytes(body))
        status = 200 if result.code is None or result.outcome is not None else HTTP_STATUS.get(result.code, 200)
        return _result(status, result)


def _result(status: int, result: IntentResult) -> web.Response:
    return web.Response(status=status, body=result.encode(), content_type="application/json")


def _too_large(size: int, cap: int) -> str:
    return f"an intent of {size} bytes or more (at most {cap})"


def _raw_answer(status: str, result: IntentResult) -> bytes:
    """A whole HTTP response, for a connection the guard closes before aiohttp has a request."""
    body = result.encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


_BUSY = _raw_answer("503 Service Unavailable", IntentResult(code=ErrorCode.BUSY, text="too many connections"))


class _Guard(asyncio.Protocol):
    """One connection: counted against the cap, timed until its headers are in, then aiohttp's."""

    def __init__(self, endpoint: IntentEndpoint) -> None:
        self.endpoint = endpoint
        self.headers_in = False
        self._inner: asyncio.Protocol | None = None  # aiohttp's, once admitted
        self._transport: asyncio.Transport | None = None
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        endpoint = self.endpoint
        self._inner = endpoint.admit(self)
        if self._inner is None:
            transport.write(_BUSY)
            transport.close()
            return
        self._inner.connection_made(transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(endpoint.limits.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self.headers_in:
            seen = self._tail + data
            if b"\r\n\r\n" in seen or b"\n\n" in seen:
                self.headers_in = True
                if self._timer is not None:
                    self._timer.cancel()
            self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.endpoint.release(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def close(self) -> None:
        """Close the connection now (evicted, or the endpoint stops)."""
        self.endpoint.release(self)
        if self._transport is not None:
            self._transport.close()

    def _headers_late(self) -> None:
        self.endpoint.timed_out += 1
        text = f"the request's headers did not arrive within {self.endpoint.limits.header_timeout:g} s"
        if self._transport is not None:
            self._transport.write(_raw_answer("408 Request Timeout", IntentResult(code=ErrorCode.TIMEOUT, text=text)))
        self.close()
