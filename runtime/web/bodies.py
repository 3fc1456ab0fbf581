"""A request body -> the images it carries, read as it streams in, never past its limit.

A body is either ``multipart/form-data`` with one or more files in the field ``image`` (what a
``<form>`` and ``FormData`` send), parsed part by part by aiohttp's streaming
``MultipartReader`` (linear in the body's size), or the raw bytes of one image (``curl
--data-binary``). The declared Content-Length is checked against the limit before a byte is
read, and aiohttp's framing stops the body there, so nothing past the limit is ever held.
Whatever is wrong becomes a RequestError carrying its HTTP status.
"""

from __future__ import annotations

import asyncio
import warnings
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import BodyPartReader, MultipartReader, helpers
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader

from runtime.web.uploads import RequestError, Upload

if TYPE_CHECKING:
    from aiohttp import web

FIELD = "image"  # the multipart field the form and the API use
# Besides image/*, the types of a body that is one image: curl --data-binary sends the third.
RAW_TYPES = ("application/octet-stream", "", "application/x-www-form-urlencoded")
# aiohttp warns of a part whose Content-Disposition it cannot parse, with the whole header in
# the message: a client could fill the server's stderr. Such a part has no name, so it is
# skipped like any field but 'image'.
warnings.filterwarnings("ignore", category=BadContentDispositionHeader)


def declared_length(request: "web.BaseRequest", limit: int) -> int:
    """The body's length from its headers, refused before any of it is read: chunked or
    without a length (411), empty (400) or over ``limit`` (413). aiohttp has already answered
    400 to a Content-Length that is not digits or is given twice."""
    if "chunked" in (request.headers.get("Transfer-Encoding") or "").lower():
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked uploads are not accepted: send a Content-Length")
    length = request.content_length
    if length is None:
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
    if length == 0:
        raise RequestError(HTTPStatus.BAD_REQUEST, "empty request: send an image (multipart field "
                           f"'{FIELD}', or the image's bytes as the body)")
    if length > limit:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length:,} bytes is over the "
                           f"upload limit of {limit:,} bytes ({limit / 2**20:.0f} MB)")
    return length


async def read_uploads(request: "web.BaseRequest", max_files: int) -> list[Upload]:
    """The images of ``request``'s body, in order (its length already checked)."""
    content_type = request.headers.get("Content-Type", "")
    mime = helpers.parse_mimetype(content_type)
    kind = f"{mime.type}/{mime.subtype}" if content_type else ""
    if kind == "multipart/form-data":
        if not mime.parameters.get("boundary"):
            raise RequestError(HTTPStatus.BAD_REQUEST, "multipart/form-data without a boundary")
        return await _multipart_files(request, max_files)
    if kind.startswith("image/") or kind in RAW_TYPES:
        try:
            body = await request.content.readexactly(request.content_length)
        except asyncio.IncompleteReadError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body ended after {len(exc.partial):,} of "
                               f"{request.content_length:,} bytes") from None
        return [Upload("upload", body)]
    raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {kind} is not an image: "
                       f"send multipart/form-data with the field '{FIELD}', or image/*")


async def _multipart_files(request: "web.BaseRequest", max_files: int) -> list[Upload]:
    """The files of field FIELD in a multipart/form-data body (RFC 7578), other fields skipped."""
    uploads = []
    try:
        reader = MultipartReader(request.headers, request.content)
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != FIELD:
                await part.release()  # another field, or a nested multipart: read past it
                continue
            data = bytes(await part.read())
            if not part.filename and not data:
                continue  # a form sent with no file picked
            uploads.append(Upload(part.filename or "upload", data))
            if len(uploads) > max_files:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"more than {max_files} files in one request; at most {max_files}")
    except HttpProcessingError as exc:  # a part's header line over aiohttp's 8190 bytes, and the like
        raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {exc.message.splitlines()[0][:100]}"
                           ) from None
    except (ValueError, AssertionError, RuntimeError) as exc:  # what aiohttp's reader raises on a bad body
        raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {str(exc)[:200]}") from None
    if not uploads:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"no file in the multipart field '{FIELD}'")
    return uploads
