"""An operation's multipart/form-data body (audio transcription, say): read whole within the
router's bound, its text fields checked like a JSON body's, and written again with the
served model's name before it goes to the server as it came otherwise.

The parts are parsed by python-multipart; the file parts' bytes are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from inference_bundle.router.errors import APIError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_PARTS = 64
FIELD_LIMIT = 64 * 1024  # a text field (a prompt, say); files may be up to the body's bound


@dataclass
class Part:
    """One part of a form: its name, its headers as sent, its bytes."""

    name: str
    headers: list[tuple[bytes, bytes]]
    data: bytes
    is_file: bool


@dataclass
class Form:
    """A parsed form and the boundary it was sent with."""

    boundary: bytes
    parts: list[Part]

    def fields(self) -> dict[str, str]:
        """The text fields, by name (the last of a repeated name)."""
        return {p.name: p.data.decode("utf-8", "replace") for p in self.parts if not p.is_file}

    def with_field(self, name: str, value: str) -> Form:
        """The form with text field ``name`` set to ``value``."""
        parts = [p for p in self.parts if p.name != name or p.is_file]
        disposition = f'form-data; name="{name}"'.encode()
        return Form(
            self.boundary,
            [Part(name, [(b"Content-Disposition", disposition)], value.encode(), False), *parts],
        )

    def content_type(self) -> str:
        return "multipart/form-data; boundary=" + self.boundary.decode("latin-1")

    def encode(self) -> bytes:
        """The form as bytes, with its boundary."""
        out = bytearray()
        for part in self.parts:
            out += b"--" + self.boundary + b"\r\n"
            for name, value in part.headers:
                out += name + b": " + value + b"\r\n"
            out += b"\r\n" + part.data + b"\r\n"
        out += b"--" + self.boundary + b"--\r\n"
        return bytes(out)


def parse_form(content_type: str, raw: bytes) -> Form:
    """The form in ``raw``; a 400 naming what is wrong with it."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise APIError(400, "Send this operation's body as multipart/form-data.")
    boundary = options.get(b"boundary")
    if not boundary:
        raise APIError(400, "The multipart/form-data body has no boundary in its Content-Type.")
    reader = _Reader()
    try:
        MultipartParser(boundary, reader.callbacks()).write(raw)
    except FormParserError as err:
        raise APIError(400, f"The body is not valid multipart/form-data: {err}.") from None
    if not reader.ended:
        raise APIError(400, "The body ended before its closing multipart boundary.")
    return Form(boundary, reader.parts)


@dataclass
class _Reader:
    parts: list[Part] = field(default_factory=list)
    ended: bool = False
    _headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    _field: bytes = b""
    _value: bytes = b""
    _data: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise APIError(400, f"The form has more than {MAX_PARTS} parts.")
        self._headers, self._data = [], bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._field, self._value))
        self._field, self._value = b"", b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def _end(self) -> None:
        disposition = next(
            (v for k, v in self._headers if k.lower() == b"content-disposition"), b""
        )
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        is_file = b"filename" in options
        if not is_file and len(self._data) > FIELD_LIMIT:
            raise APIError(400, f"The form field {name!r} is longer than {FIELD_LIMIT} bytes.")
        self.parts.append(Part(name, self._headers, bytes(self._data), is_file))

    def _finished(self) -> None:
        self.ended = True
