"""Uvicorn's h11 protocol with a header deadline and a connection cap that cannot starve /health.

Uvicorn times out idle keep-alive connections, but not a client that never finishes its request line
and headers (one byte of the next request disarms the keep-alive timer), and its
``limit_concurrency`` answers 503 to *every* new request, ``/health`` included, once enough such
connections are open. Here instead:

- every connection that is waiting for a request's headers (a new one, or a kept-alive one between
  requests) is closed after ``header_timeout`` seconds without a complete request head;
- past ``max_connections`` open connections, a new connection evicts the oldest one still waiting
  for its headers (a half-open connection costs the attacker nothing, so it is the one to drop); only
  when every connection is busy with a real request is the new one closed.

Body deadlines (408) are enforced by the app (``upload.receive_upload``); ``h11`` already caps an
incomplete request head at ``h11_max_incomplete_event_size`` bytes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lungxray.serve.guard import RedactQuery


class GuardedH11Protocol(H11Protocol):
    """H11Protocol + header deadline + evicting connection cap (see the module docstring)."""

    header_timeout: float = 10.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = self.loop.time()
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()
        live = sum(1 for c in self.connections if not c.transport.is_closing())
        if live > self.max_connections:
            self._evict()

    def waiting_for_headers(self) -> bool:
        """True while no complete request head has arrived on this connection (or between requests)."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def _evict(self) -> None:
        idle = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedH11Protocol)
            and not c.transport.is_closing()  # closed, its connection_lost not yet run
            and c.waiting_for_headers()
        ]
        if idle:
            victim = min(idle, key=lambda c: c._opened)
            victim.transport.close()
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


def protocol_class(header_timeout: float = 10.0, max_connections: int = 1000) -> type[GuardedH11Protocol]:
    """A ``GuardedH11Protocol`` subclass with these limits (uvicorn instantiates the class itself)."""
    attrs = {"header_timeout": float(header_timeout), "max_connections": int(max_connections)}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)


def serve_app(
    app: Any,
    host: str,
    port: int,
    *,
    header_timeout: float = 10.0,
    max_connections: int = 1000,
    log_level: str = "info",
) -> None:
    """Run ``app`` with uvicorn and the guarded protocol until interrupted (access log without queries)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=int(port),
        http=protocol_class(header_timeout, max_connections),
        log_level=log_level,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
        server_header=False,
    )
    access = logging.getLogger("uvicorn.access")  # after Config: it configures the loggers
    if not any(isinstance(f, RedactQuery) for f in access.filters):
        access.addFilter(RedactQuery())
    uvicorn.Server(config).run()
