"""Uploads stream to a temporary file, never whole into memory, and never past the limit.

FastAPI's ``UploadFile`` reads the whole body before the handler runs, so an oversize upload
would first fill the disk; here python-multipart's streaming parser is fed the body as it
arrives, the ``video`` part goes straight to a file in the service's own temporary folder, and
the request is refused (413) the moment it passes ``--max-upload-mb`` (or at once, when its
``Content-Length`` says so). The caller deletes the file whatever happens (:func:`upload_file`
is a context manager).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "video"


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


@dataclass(frozen=True)
class Upload:
    path: Path  # the temporary file
    name: str  # the file name the client gave, which records carry as their path


def too_large(limit: int) -> RequestError:
    return RequestError(413, f"upload larger than the server's limit of {limit / 2**20:g} MB")


def safe_suffix(name: str) -> str:
    """The client's file extension, if it is a plain one: decoding reads raw ``.yuv`` files by
    their extension, as heke-run does, and nothing else of the client's name reaches a path."""
    suffix = Path(name).suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix) else ""


class _VideoPart:
    """python-multipart callbacks that write the ``video`` part to a file as it arrives."""

    def __init__(self, folder: Path, limit: int, prefix: str) -> None:
        self.folder, self.limit, self.prefix = folder, limit, prefix
        self.header_field, self.header_value = b"", b""
        self.disposition: dict[bytes, bytes] = {}
        self.file: IO[bytes] | None = None
        self.path: Path | None = None
        self.name = ""
        self.written = 0
        self.seen = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda d, s, e: self._add("header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("header_value", d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def part_begin(self) -> None:
        self.disposition = {}

    def header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition":
            self.disposition = parse_options_header(self.header_value)[1]
        self.header_field, self.header_value = b"", b""

    def headers_finished(self) -> None:
        if self.disposition.get(b"name") != FIELD.encode() or self.seen:
            return
        self.seen = True
        self.name = self.disposition.get(b"filename", b"upload").decode("utf-8", "replace")
        handle, path = tempfile.mkstemp(
            suffix=safe_suffix(self.name), prefix=self.prefix, dir=self.folder
        )
        self.file, self.path = os.fdopen(handle, "wb"), Path(path)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.file is None:
            return
        self.written += end - start
        if self.written > self.limit:
            raise too_large(self.limit)
        self.file.write(data[start:end])

    def part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def close(self) -> None:
        self.part_end()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@asynccontextmanager
async def upload_file(
    request: Request, folder: Path, limit: int, prefix: str = "upload-"
) -> AsyncIterator[Upload]:
    """The multipart ``video`` field of ``request`` as a temporary file, deleted on exit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise too_large(limit)  # the form's own overhead is far below 64 KiB
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise RequestError(422, "expected a multipart upload with a 'video' field")
    part = _VideoPart(folder, limit, prefix)
    try:
        parser = MultipartParser(boundary, cast("MultipartCallbacks", part.callbacks()))
        async for chunk in request.stream():
            _feed(parser, chunk)
        parser.finalize()
        if part.path is None:
            raise RequestError(422, f"the multipart upload has no '{FIELD}' field")
        yield Upload(part.path, part.name)
    finally:
        part.close()


def _feed(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.write(chunk)
    except MultipartParseError as exc:
        raise RequestError(422, f"malformed multipart upload: {exc}") from None
