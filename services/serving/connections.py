"""Connection bounds uvicorn's httptools protocol does not have, so no client can take a worker down.

- A cap on open connections per worker (`SERVING_MAX_CONNECTIONS`): at the cap, the connection
  idle longest (no request in progress: idle keep-alive, or headers still trickling in) is
  closed to make room; if every connection has a request in progress, the new one is closed.
  Health probes always find a slot; file descriptors never run out.
- Request line and headers are limited to `SERVING_MAX_HEADER_BYTES` (431) and must arrive
  within `SERVING_HEADER_TIMEOUT_SECONDS` (408); idle keep-alive connections close after
  `SERVING_KEEPALIVE_SECONDS`.
- Admission when the headers complete (`admission.py`): a body over the size limit, or one the
  worker's body budget has no room for, is refused there and dropped as it arrives (the app
  answers 413 or 503 without reading it, before any `100 Continue`).
- Lingering close: when a response closes a connection whose request body was not read in full,
  the connection half-closes and drops what the client still sends for up to
  `SERVING_LINGER_SECONDS` (and at most `SERVING_MAX_BODY_BYTES`), so the client reads the answer
  rather than a reset. The body itself is never waited for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from services.serving import metrics
from services.serving.admission import ADMISSION, verdict, worker


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with a connection cap, header limits, admission and lingering close."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        current = worker()
        self.limits, self.budget = current.limits, current.budget
        self.awaiting_headers, self.header_bytes = True, 0
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_complete, self.dropping, self.lingering, self.lingered = False, False, False, 0
        self.admission: dict = {}
        """The admission of the request being parsed (also in its scope's extensions)."""
        self.held: dict[int, int] = {}
        """Budget bytes admitted per request cycle (by id) on this connection, given back when it ends."""
        self.idle_since = time.monotonic()

    # -- connection cap -----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._count("refused")
            transport.abort()
            return
        self._arm_header_timer()

    def _make_room(self) -> bool:
        idle = [c for c in self.connections if c is not self and isinstance(c, GuardedProtocol) and c.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        oldest.transport.close()
        self.connections.discard(oldest)  # its connection_lost comes later; the slot is free now
        self._count("evicted")
        return True

    @property
    def idle(self) -> bool:
        """No request in progress: an idle keep-alive connection, or one whose headers are not complete."""
        return (
            not self.transport.is_closing()
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
        )

    # -- headers: size and time ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.lingered += len(data)
            if self.lingered > self.limits.max_body_bytes:
                self.transport.close()
            return
        if self.awaiting_headers and self.header_timer is None:
            self._arm_header_timer()
        super().data_received(data)
        if self.awaiting_headers and not self.transport.is_closing():
            self.header_bytes += len(data)
            if self.header_bytes > self.limits.max_header_bytes:
                self._refuse(
                    431, "header_limit", f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
                )

    def on_headers_complete(self) -> None:
        self.awaiting_headers, self.header_bytes, self.body_complete = False, 0, False
        self._cancel_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return  # an upgrade request: not ours
        cycle.transport = _CloseAfterResponse(self)  # type: ignore[assignment]
        declared = next((int(v) for k, v in self.headers if k == b"content-length" and v.isdigit()), 0)
        refusal = verdict(declared, self.limits, self.budget)
        self.dropping = refusal is not None
        if refusal is None:
            self.held[id(cycle)] = declared
        self.admission = {"admitted": declared if refusal is None else 0, "refusal": refusal, "complete": False}
        self.scope.setdefault("extensions", {})[ADMISSION] = self.admission
        cycle.on_response = lambda: self._response_done(cycle)

    def on_body(self, body: bytes) -> None:
        if not self.dropping:  # a refused request's body is never kept
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.body_complete = True
        self.admission["complete"] = True  # the app reads it without waiting (or a deadline)
        super().on_message_complete()

    def _response_done(self, cycle: Any) -> None:
        self.budget.give(self.held.pop(id(cycle), 0))
        self.dropping = False
        if self.lingering:
            return
        self.awaiting_headers, self.idle_since = True, time.monotonic()
        self.on_response_complete()

    def _arm_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if not self.awaiting_headers or self.transport.is_closing():
            return
        if self.header_bytes:
            self._refuse(
                408, "header_timeout", f"the request headers did not arrive within {self.limits.header_timeout:g} s"
            )
        else:
            self._count("idle_timeout")
            self.transport.close()  # a connection that never sent a byte: nothing to answer

    def _count(self, reason: str) -> None:
        metrics.CONNECTIONS_CLOSED.labels(self.limits.endpoint, reason).inc()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        body = message.encode()
        self._count(reason)
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
                    body,
                ]
            )
        )
        self.transport.close()

    # -- lingering close ----------------------------------------------------------------
    def close_after_response(self) -> None:
        """The response said `Connection: close`. If the client is still sending a body we did
        not read, half-close and drop its bytes for a while instead of resetting the connection."""
        transport = self.transport
        if (
            self.body_complete
            or transport.is_closing()
            or not self.limits.linger_seconds
            or not transport.can_write_eof()
        ):
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(self.limits.linger_seconds, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        for size in self.held.values():
            self.budget.give(size)
        self.held.clear()
        super().connection_lost(exc)


class _CloseAfterResponse:
    """The transport as a request's response cycle sees it: the status line and headers are held
    until the body is written, so a response leaves in one write (one system call, one packet),
    and `close` goes through lingering close."""

    def __init__(self, protocol: GuardedProtocol) -> None:
        self._protocol, self._transport = protocol, protocol.transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        cycle = self._protocol.cycle
        if (
            self._head is None
            and cycle is not None
            and cycle.response_started
            and not cycle.response_complete
            and data.startswith(b"HTTP/1.1 ")
        ):
            self._head = data  # the response head: wait for the body (a `100 Continue` is written at once)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        self._protocol.close_after_response()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
