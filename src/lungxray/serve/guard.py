"""Request guards of the server: security headers, Host / Origin checks, the API key, log redaction.

- ``SecurityHeaders``: nosniff, no referrer, a strict CSP on every answer (the server loads nothing
  from other origins; /docs and /redoc are disabled), no caching of API answers.
- ``HostOriginGuard``: a request whose ``Host`` is not one of the server's names gets 400 (DNS
  rebinding: a hostile page whose name resolves to 127.0.0.1 cannot read or post as same-origin), and
  a state-changing request (POST, ...) from another origin gets 403 (``Origin`` not matching ``Host``,
  ``Origin: null`` or ``Sec-Fetch-Site: cross-site``): multipart is a CORS-safelisted type, so any web
  page the clinician opens could otherwise post to a key-less server.
- ``resolve_api_key``: the key from ``--api-key``, ``--api-key-file`` or ``LUNGXRAY_API_KEY``, at
  least ``MIN_KEY_LENGTH`` characters; ``key_checker``: the constant-time check on /api/*.
- ``RedactQuery``: a logging filter that drops the query string (``?filename=`` names a patient's
  file) from uvicorn's access log lines.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.datastructures import MutableHeaders

from lungxray.errors import ConfigError

MIN_KEY_LENGTH = 16
KEY_ENV = "LUNGXRAY_API_KEY"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# The page needs nothing from other origins; images arrive as data: URLs.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_api_key(key: str | None) -> str | None:
    """``key`` stripped, or None; ConfigError when it is empty or shorter than ``MIN_KEY_LENGTH``."""
    if key is None:
        return None
    key = key.strip()
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"the API key must be at least {MIN_KEY_LENGTH} characters (got {len(key)}); "
            'make one with: python -c "import secrets; print(secrets.token_urlsafe(24))"'
        )
    return key


def resolve_api_key(key: str | None = None, key_file: str | os.PathLike | None = None) -> str | None:
    """The API key from argv, else a file (first line), else ``$LUNGXRAY_API_KEY``; None if none.

    Raises:
        ConfigError: both a key and a file given, an unreadable file, or a key that is too short.
    """
    if key is not None and key_file is not None:
        raise ConfigError("give either --api-key or --api-key-file, not both.")
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {key_file}: {exc.strerror or exc}.") from None
        key = text.splitlines()[0] if text.strip() else ""
    elif key is None:
        key = os.environ.get(KEY_ENV) or None
    return validate_api_key(key)


def key_checker(api_key: str | None) -> Any:
    """A FastAPI dependency that refuses calls without the key (constant-time comparison)."""
    expected = api_key.encode("utf-8") if api_key else None

    async def check_key(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if given is None or not secrets.compare_digest(given.encode("utf-8"), expected):
            raise HTTPException(
                status_code=401,
                detail="API key missing or wrong: send it as the X-API-Key header (or Authorization: Bearer).",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check_key


def _host_only(value: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:80`` -> ``::1``; lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


async def _refuse(send: Any, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HostOriginGuard:
    """ASGI middleware: 400 for an unknown ``Host``, 403 for a cross-origin state-changing request.

    Args:
        app: the wrapped ASGI app.
        allowed_hosts: the names (or addresses) the server answers to, without port; ``"*"`` allows
            every Host (the Origin check still applies).
    """

    def __init__(self, app: Any, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS):
        self.app = app
        self.allowed = {_host_only(h) if h != "*" else "*" for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host", b"").decode("latin-1")
        if "*" not in self.allowed and _host_only(host) not in self.allowed:
            await _refuse(send, 400, "unknown Host header: this server answers to its own names only.")
            return
        if scope.get("method", "GET").upper() not in SAFE_METHODS:
            origin = headers.get(b"origin")
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
            cross = site == "cross-site"
            if origin is not None:
                o = origin.decode("latin-1")
                cross = cross or o == "null" or urlsplit(o).netloc.lower() != host.lower()
            if cross:
                await _refuse(send, 403, "cross-origin request refused: use this server's own page or API.")
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: nosniff, no referrer, a strict CSP, no caching of API answers."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Content-Security-Policy", CSP)
                if path.startswith("/api/") or path == "/metrics":
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RedactQuery(logging.Filter):
    """Drops the query string from uvicorn access-log records (``args[2]`` is the full path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True
