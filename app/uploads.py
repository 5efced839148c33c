"""multipart/form-data read as it streams in: file parts go straight into the blob store's temporary
files (hashed on the fly), so a size limit stops an upload as it passes the limit, not after."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.errors import ApiError, Code
from app.storage import BlobStore, BlobTooLarge, BlobWriter

MAX_FIELD_BYTES = 4096
_DRAIN_BYTES = 64 * 2**20  # read (and drop) this much past a refused upload, so the client sees the 413


@dataclass
class StreamedFile:
    filename: str
    blob: BlobWriter


@dataclass
class StreamedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, StreamedFile] = field(default_factory=dict)

    def abort(self) -> None:
        """Remove every temporary file not committed to the store."""
        for item in self.files.values():
            item.blob.abort()


class _Collector:
    """python-multipart callbacks that fill a StreamedForm."""

    def __init__(self, store: BlobStore, file_limits: dict[str, int], field_names: set[str]) -> None:
        self.store, self.file_limits, self.field_names = store, file_limits, field_names
        self.form = StreamedForm()
        self._headers: dict[bytes, bytes] = {}
        self._header = [b"", b""]
        self._name = ""
        self._text = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._headers, self._name, self._text = {}, "", bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header[0].lower()] = self._header[1]
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        known = sorted([*self.file_limits, *self.field_names])
        if self._name not in known:
            raise ApiError(Code.invalid_request, f"Unexpected form field {self._name!r}; expected {known}.",
                           param=self._name or None)
        if self._name in self.form.files or self._name in self.form.fields:
            raise ApiError(Code.invalid_request, f"Form field {self._name!r} sent twice.", param=self._name)
        if self._name in self.file_limits:
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            writer = self.store.writer(self.file_limits[self._name])
            self.form.files[self._name] = StreamedFile(filename, writer)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name in self.form.files:
            try:
                self.form.files[self._name].blob.write(data[start:end])
            except BlobTooLarge:
                limit = self.file_limits[self._name]
                raise ApiError(Code.file_too_large, f"Field {self._name!r} is larger than the limit of "
                               f"{limit} bytes.", param=self._name) from None
            return
        self._text += data[start:end]
        if len(self._text) > MAX_FIELD_BYTES:
            raise ApiError(Code.invalid_request, f"Field {self._name!r} is longer than {MAX_FIELD_BYTES} "
                           "bytes.", param=self._name)

    def _part_end(self) -> None:
        if self._name in self.form.files:
            self.form.files[self._name].blob.close()
        elif self._name:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace").strip()


async def read_form(request: Request, store: BlobStore, *, file_limits: dict[str, int],
                    field_names: set[str]) -> StreamedForm:
    """Stream a multipart body into temporary blobs; the caller commits or aborts them."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(Code.invalid_request, "Send the adapter as multipart/form-data.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > sum(file_limits.values()) + 2**16:
        raise ApiError(Code.file_too_large, f"Request body of {declared} bytes is larger than the upload "
                       f"limit of {max(file_limits.values())} bytes.")
    collector = _Collector(store, file_limits, field_names)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())  # type: ignore[arg-type]
    stream = request.stream()
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except ApiError as error:
        collector.form.abort()
        if error.code == Code.file_too_large:
            await _drain(stream)
        raise
    except FormParserError as error:
        collector.form.abort()
        raise ApiError(Code.invalid_request, f"Malformed multipart body: {error}") from None
    except BaseException:
        collector.form.abort()
        raise
    return collector.form


async def _drain(stream: object) -> None:
    """Read what the client is still sending (up to a bound) without keeping it."""
    seen = 0
    async for chunk in stream:  # type: ignore[attr-defined]
        seen += len(chunk)
        if seen > _DRAIN_BYTES:
            return
