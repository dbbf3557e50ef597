"""Read an uploaded image into memory with a hard size limit, never touching the disk.

Starlette's form parser spools large parts to temporary files; an X-ray upload must not leave a copy
on the server, so the body is read here, chunk by chunk, and refused (413) as soon as it passes the
limit: first from the ``Content-Length`` header, before any byte is read, then while streaming (for
chunked bodies or a lying header). Two body formats are accepted: ``multipart/form-data`` (a field
named ``file``, as a browser form sends it) and a raw body (``application/octet-stream``,
``image/*``, ``application/dicom``) with an optional ``?filename=`` for error messages and DICOM
detection. The client's filename is only echoed back (sanitised), never used as a path.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

MULTIPART_SLACK = 16 * 1024  # bytes allowed on top of the file for the multipart envelope
RAW_TYPES = ("application/octet-stream", "application/dicom", "image/")
FILE_FIELD = "file"


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


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Concatenate a streamed body, raising 413 as soon as it passes ``limit`` bytes."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    return bytes(buf)


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


def parse_upload(body: bytes, content_type: str, filename: str | None, max_bytes: int) -> Upload:
    """The uploaded file in a request body, by content type.

    Args:
        body: the whole request body (already size-limited by ``read_limited``).
        content_type: the request's Content-Type header ("" if absent).
        filename: the ``?filename=`` query value for raw bodies (ignored for multipart).
        max_bytes: the largest file accepted.

    Raises:
        UploadError: 415 unsupported content type, 400 malformed multipart, 422 no file field,
            413 file over ``max_bytes``.
    """
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        upload = _parse_multipart(body, content_type)
    elif not ctype or any(ctype == t or (t.endswith("/") and ctype.startswith(t)) for t in RAW_TYPES):
        upload = Upload(safe_filename(filename), body)
    else:
        raise UploadError(
            415,
            f"unsupported Content-Type {ctype!r}: send multipart/form-data with a field named "
            f"{FILE_FIELD!r}, or the raw file as application/octet-stream.",
        )
    if len(upload.data) > max_bytes:
        raise too_large(max_bytes)
    return upload


def _parse_multipart(body: bytes, content_type: str) -> Upload:
    """The ``file`` field (else the first part with a filename) of a multipart body, in memory."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary parameter.")
    parts: list[dict] = []
    state: dict = {"field": bytearray(), "value": bytearray(), "headers": {}}

    def on_part_begin() -> None:
        state["headers"] = {}
        parts.append({"name": None, "filename": None, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][bytes(state["field"]).lower()] = bytes(state["value"])
        state["field"], state["value"] = bytearray(), bytearray()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        part = parts[-1]
        part["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp:
            part["filename"] = disp[b"filename"].decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body ({exc}).") from None
    chosen = next((p for p in parts if p["name"] == FILE_FIELD), None)
    chosen = chosen or next((p for p in parts if p["filename"] is not None), None)
    if chosen is None:
        raise UploadError(422, f"no file in the form: send the image in a field named {FILE_FIELD!r}.")
    return Upload(safe_filename(chosen["filename"]), bytes(chosen["data"]))
