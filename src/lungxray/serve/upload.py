"""Read an uploaded image into memory with a hard size limit, never touching the disk.

Starlette's form parser spools large parts to temporary files; an X-ray upload must not leave a copy
on the server, so the body is read here, chunk by chunk, and refused (413) as soon as it passes the
limit: first from the ``Content-Length`` header, before any byte is read, then while streaming (for
chunked bodies or a lying header). Multipart bodies are parsed as they arrive, off the event loop
(``asyncio.to_thread``), keeping only the file part: parsing stops at the end of the ``file`` part and
refuses a body of more than ``MAX_PARTS`` parts at once (a 20 MB body can hold millions of empty
parts). A body that takes longer than ``timeout`` seconds in all, or ``idle_timeout`` between two
chunks, gets 408. Two body formats are accepted: ``multipart/form-data`` (a field
named ``file``, as a browser form sends it) and a raw body (``application/octet-stream``,
``image/*``, ``application/dicom``) with an optional ``?filename=`` for error messages and DICOM
detection. The client's filename is only echoed back (sanitised), never used as a path.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MULTIPART_SLACK = 16 * 1024  # bytes allowed on top of the file for the multipart envelope
RAW_TYPES = ("application/octet-stream", "application/dicom", "image/")
FILE_FIELD = "file"
MAX_PARTS = 8  # a form with the image and a few small fields; more parts are refused
MAX_PART_HEADER = 8 * 1024  # bytes of one part's headers
FEED_BATCH = 1 << 20  # bytes of multipart body handed to the parser thread at once


class UploadError(Exception):
    """An upload the server refuses: ``status`` (HTTP code) and ``detail`` (what to do)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Upload:
    """One uploaded file held in memory: its sanitised name and its bytes."""

    name: str
    data: bytes


def megabytes(n_bytes: int) -> str:
    """A byte count as ``"20 MB"`` (MiB, as the limit is set), for messages."""
    return f"{n_bytes / 2**20:.3g} MB"


def too_large(limit: int) -> UploadError:
    return UploadError(413, f"the upload is larger than the {megabytes(limit)} limit; send a smaller image.")


def check_content_length(header: str | None, limit: int) -> None:
    """413 before reading anything when the declared body size exceeds ``limit`` bytes."""
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError:
        raise UploadError(400, f"invalid Content-Length header {header[:40]!r}.") from None
    if declared > limit:
        raise too_large(limit)


def safe_filename(raw: str | None, default: str = "upload") -> str:
    """The last path component of a client-sent name, reduced to harmless characters (max 100)."""
    if not raw:
        return default
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._ ()+-]+", "_", name).strip(" .")
    return name[-100:] or default


def body_limit(content_type: str, max_bytes: int) -> int:
    """Bytes of body to accept for a file of at most ``max_bytes`` (multipart adds its envelope)."""
    return max_bytes + MULTIPART_SLACK if content_type.lower().startswith("multipart/") else max_bytes


def upload_kind(content_type: str) -> str:
    """``"multipart"`` or ``"raw"`` for a request's Content-Type; UploadError(415) for anything else."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        return "multipart"
    if not ctype or any(ctype == t or (t.endswith("/") and ctype.startswith(t)) for t in RAW_TYPES):
        return "raw"
    raise UploadError(
        415,
        f"unsupported Content-Type {ctype!r}: send multipart/form-data with a field named "
        f"{FILE_FIELD!r}, or the raw file as application/octet-stream.",
    )


class _Stop(Exception):
    """Raised inside the parser's callbacks to stop it (the file part is complete)."""


class MultipartReader:
    """An incremental multipart/form-data parser that keeps only the uploaded file.

    ``feed`` each chunk; it returns True once the ``file`` part is complete (read no further).
    Only the ``file`` field (else the first part with a filename) is kept, at most ``max_bytes``.

    Raises (from ``feed`` / ``result``):
        UploadError: 400 no boundary, malformed body, more than ``MAX_PARTS`` parts or oversized part
            headers; 413 a file over ``max_bytes``; 422 no file in the form.
    """

    def __init__(self, content_type: str, max_bytes: int):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._options = parse_options_header
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError(400, "multipart/form-data without a boundary parameter.")
        self.max_bytes = max_bytes
        self.parts = 0
        self.done = False
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = bytearray(), bytearray()
        self._current: dict | None = None  # the part being read, if it is a file candidate
        self._chosen: dict | None = None  # {"name", "filename", "data"}
        callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        self._parser = MultipartParser(boundary, callbacks)

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(400, f"too many parts in the form (more than {MAX_PARTS}); send only the file.")
        self._headers, self._current = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._check_header()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if (
            len(self._field) + len(self._value) + sum(len(v) for v in self._headers.values())
            > MAX_PART_HEADER
        ):
            raise UploadError(400, "a form part's headers are too long.")

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, disp = self._options(self._headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp[b"filename"].decode("utf-8", "replace") if b"filename" in disp else None
        is_file = name == FILE_FIELD
        fallback = filename is not None and (self._chosen is None or self._chosen["name"] != FILE_FIELD)
        if is_file or (fallback and self._chosen is None):
            self._current = {"name": name, "filename": filename, "data": bytearray()}
            self._chosen = self._current

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current["data"] += data[start:end]
            if len(self._current["data"]) > self.max_bytes:
                raise too_large(self.max_bytes)

    def _part_end(self) -> None:
        if self._current is not None and self._current["name"] == FILE_FIELD:
            self.done = True
            raise _Stop
        self._current = None

    def feed(self, chunk: bytes) -> bool:
        """Parse one chunk; True when the file part is complete."""
        from python_multipart.exceptions import MultipartParseError

        if self.done:
            return True
        try:
            self._parser.write(chunk)
        except _Stop:
            return True
        except MultipartParseError as exc:
            raise UploadError(400, f"malformed multipart body ({exc}).") from None
        return False

    def result(self) -> Upload:
        """The file, once the body ended (or the file part did)."""
        from python_multipart.exceptions import MultipartParseError

        if not self.done:
            try:
                self._parser.finalize()
            except MultipartParseError as exc:
                raise UploadError(400, f"malformed multipart body ({exc}).") from None
        if self._chosen is None:
            raise UploadError(422, f"no file in the form: send the image in a field named {FILE_FIELD!r}.")
        return Upload(safe_filename(self._chosen["filename"]), bytes(self._chosen["data"]))


def parse_upload(body: bytes, content_type: str, filename: str | None, max_bytes: int) -> Upload:
    """The uploaded file in a whole request body (the synchronous form of ``receive_upload``)."""
    if upload_kind(content_type) == "multipart":
        reader = MultipartReader(content_type, max_bytes)
        reader.feed(body)
        return reader.result()
    if len(body) > max_bytes:
        raise too_large(max_bytes)
    return Upload(safe_filename(filename), bytes(body))


async def receive_upload(
    receive: Callable[[], Awaitable[dict]],
    content_type: str,
    filename: str | None,
    max_bytes: int,
    *,
    timeout: float = 120.0,
    idle_timeout: float = 15.0,
) -> Upload:
    """Read an upload from an ASGI ``receive`` channel within the size and time limits.

    Args:
        receive: the request's ASGI receive callable.
        content_type: the request's Content-Type ("" if absent).
        filename: ``?filename=`` for raw bodies (multipart parts carry their own).
        max_bytes: the largest file accepted.
        timeout: seconds for the whole body; idle_timeout: seconds between two chunks.

    Raises:
        UploadError: 408 too slow, 413 too large, 415 / 400 / 422 as ``upload_kind`` and
            ``MultipartReader``; 400 when the client disconnects.
    """
    kind = upload_kind(content_type)
    limit = body_limit(content_type, max_bytes)
    reader = MultipartReader(content_type, max_bytes) if kind == "multipart" else None
    buf = bytearray()
    total = 0
    deadline = time.monotonic() + timeout
    while True:
        wait = min(idle_timeout, deadline - time.monotonic())
        try:
            if wait <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), wait)
        except TimeoutError:
            raise UploadError(408, "the upload was too slow; send the file again on a faster link.") from None
        if message["type"] == "http.disconnect":
            raise UploadError(400, "the client disconnected during the upload.")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        buf += chunk
        more = message.get("more_body", False)
        # Multipart: parse in a worker thread, the first chunk at once (a part flood is refused
        # before the rest arrives), then in batches of FEED_BATCH bytes (fewer thread hops).
        if reader is not None and buf and (total == len(buf) or len(buf) >= FEED_BATCH or not more):
            batch, buf = bytes(buf), bytearray()
            if await asyncio.to_thread(reader.feed, batch):
                break
        if not more:
            break
    if reader is not None:
        return await asyncio.to_thread(reader.result)
    data = bytes(buf)
    del buf
    return Upload(safe_filename(filename), data)
