"""Uploads as a stream: multipart/form-data parsed by python-multipart, the file part on disk.

The body is never held whole: each chunk is parsed as it arrives (on the loop: the parser
only looks for the boundary), the file's bytes go to a private temporary file in the store's
folder (written off the loop), and the upload stops with a 413 as soon as it passes the cap.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from inference_bundle.router.errors import APIError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# The form's other fields (purpose) are short words.
FIELD_LIMIT = 1024
MAX_PARTS = 16
# Multipart framing around the file: headers and boundaries of a few parts.
FRAMING_ALLOWANCE = 64 * 1024
# File bytes are written in pieces this large, one thread hop each.
WRITE_PIECE = 1024 * 1024


@dataclass
class Upload:
    """A received form: its text fields, and the file part in a private temporary file."""

    fields: dict[str, bytes]
    filename: bytes | None  # as sent; None when the form has no file part
    path: Path
    size: int


def private_folder(folder: Path) -> None:
    """Create ``folder`` (0700) and make it private if it was not."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def discard(path: Path) -> None:
    """Remove a temporary upload; gone already is fine."""
    path.unlink(missing_ok=True)


async def receive(request: Request, folder: Path, limit: int) -> Upload:
    """The form of a file upload, its file part at most ``limit`` bytes; 400 or 413 otherwise."""
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise APIError(400, "Upload the file as multipart/form-data (purpose and file).")
    boundary = options.get(b"boundary")
    if not boundary:
        raise APIError(400, "The multipart/form-data upload has no boundary in its Content-Type.")
    too_large = APIError(
        413,
        f"The file is larger than this service's limit of {limit:,} bytes; split it into "
        "smaller files.",
        param="file",
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FRAMING_ALLOWANCE:
        raise too_large
    fd, name = await run_in_threadpool(_open_private, folder)
    form = _Form(limit, too_large)
    try:
        parser = MultipartParser(boundary, form.callbacks())
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except FormParserError as err:
                raise APIError(
                    400, f"The upload is not valid multipart/form-data: {err}."
                ) from None
            if len(form.pending) >= WRITE_PIECE:
                await run_in_threadpool(_write_all, fd, form.take())
        if not form.ended:
            raise APIError(400, "The upload ended before its closing multipart boundary.")
        if form.pending:
            await run_in_threadpool(_write_all, fd, form.take())
    except BaseException:
        # Right here, not in a thread: a cancelled request (the client went away) may not
        # await again, and the descriptor and the partial file must not outlive it.
        os.close(fd)
        discard(Path(name))
        raise
    await run_in_threadpool(os.close, fd)
    return Upload(form.fields, form.filename, Path(name), form.size)


def _open_private(folder: Path) -> tuple[int, str]:
    private_folder(folder)
    # mkstemp creates the file 0600 with O_EXCL: nobody else can read it or plant it.
    return tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass
class _Form:
    """The parser's callbacks: headers and fields kept small, file bytes queued for disk."""

    limit: int
    too_large: APIError
    fields: dict[str, bytes] = field(default_factory=dict)
    filename: bytes | None = None
    size: int = 0
    pending: bytearray = field(default_factory=bytearray)
    ended: bool = False
    parts: int = 0
    _header_name: bytes = b""
    _header_value: bytes = b""
    _disposition: bytes = b""
    _name: str | None = None  # the part being read; "file" for the file part
    _value: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        return data

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise APIError(
                400, f"The upload has more than {MAX_PARTS} parts; send purpose and file."
            )
        self._disposition, self._name, self._value = b"", None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition.decode("latin-1"))
        raw_name = options.get(b"name")
        if raw_name is None:
            raise APIError(400, "A part of the upload has no name in its Content-Disposition.")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise APIError(400, "A part of the upload has a name that is not UTF-8.") from None
        if name in self.fields or (name == "file" and self.filename is not None):
            raise APIError(400, f"The upload has more than one {name!r} part.", param=name)
        self._name = name
        if name == "file":
            self.filename = options.get(b"filename", b"")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.size += end - start
            if self.size > self.limit:
                raise self.too_large
            self.pending += data[start:end]
        elif self._name is not None:
            self._value += data[start:end]
            if len(self._value) > FIELD_LIMIT:
                raise APIError(
                    400,
                    f"The upload's {self._name!r} field is longer than {FIELD_LIMIT} bytes.",
                    param=self._name,
                )

    def _part_end(self) -> None:
        if self._name is not None and self._name != "file":
            self.fields[self._name] = bytes(self._value)

    def _end(self) -> None:
        self.ended = True
