"""Uploaded images -> predictions: the request body, its images, each decoded in memory and
classified by ``Classifier.predict`` (never written to disk).

A body is either ``multipart/form-data`` with one or more files in the field ``image`` (what a
``<form>`` and ``FormData`` send) or the raw bytes of one image (``curl --data-binary``).
Whatever goes wrong becomes a RequestError carrying its HTTP status.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus

from PIL import ExifTags, Image

from runtime.errors import CifarEdgeError, ImageError
from runtime.image import preprocess

FIELD = "image"  # the multipart field the form and the API use
# Besides image/*, the types of a body that is one image: curl --data-binary sends the third.
RAW_TYPES = ("application/octet-stream", "", "application/x-www-form-urlencoded")
THUMBNAIL = 256  # px: the longest side of the picture on the no-JavaScript results page


class RequestError(CifarEdgeError):
    """A request the server refuses, with the HTTP status that says why."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    name: str  # the file name the client gave, or "upload" for a raw body
    data: bytes


def read_uploads(content_type: str, body: bytes, max_files: int) -> list[Upload]:
    """The images a request body carries, in order."""
    if not body:
        raise RequestError(HTTPStatus.BAD_REQUEST, "empty request: send an image (multipart field "
                           f"'{FIELD}', or the image's bytes as the body)")
    header = _parse_header("Content-Type", content_type or "")
    mime = header.get_content_type() if content_type else ""
    if mime == "multipart/form-data":
        uploads = _multipart_files(header.get_param("boundary"), body)
    elif mime.startswith("image/") or mime in RAW_TYPES:
        uploads = [Upload("upload", body)]
    else:
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {mime} is not an "
                           f"image: send multipart/form-data with the field '{FIELD}', or image/*")
    if len(uploads) > max_files:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"{len(uploads)} files in one request; at most {max_files}")
    return uploads


def _parse_header(name: str, value: str) -> Message:
    header = Message()
    header[name] = value
    return header


def _multipart_files(boundary: str | None, body: bytes) -> list[Upload]:
    """The files of field FIELD in a multipart/form-data body (RFC 7578)."""
    if not boundary:
        raise RequestError(HTTPStatus.BAD_REQUEST, "multipart/form-data without a boundary")
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(chunks) < 3:  # a preamble, at least one part, and the closing delimiter
        raise RequestError(HTTPStatus.BAD_REQUEST, "malformed multipart body: its boundary "
                           "does not delimit any part")
    uploads = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise RequestError(HTTPStatus.BAD_REQUEST, "malformed multipart body: a part has no "
                               "blank line after its headers")
        disposition = next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-disposition:")), b"")
        part = _parse_header("Content-Disposition", disposition.decode("utf-8", "replace").strip())
        if part.get_param("name", header="content-disposition") != FIELD:
            continue  # other form fields are ignored
        filename = part.get_filename()
        if not filename and not data:
            continue  # a form sent with no file picked
        uploads.append(Upload(filename or "upload", data))
    if not uploads:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"no file in the multipart field '{FIELD}'")
    return uploads


# preprocess.load_image's reasons for refusing a file, as HTTP statuses.
_STATUS = {"empty": HTTPStatus.BAD_REQUEST, "too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
           "not_image": HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "corrupt": HTTPStatus.BAD_REQUEST}


def open_image(upload: Upload, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``upload`` in memory with ``preprocess.load_image``, the decoder every file goes
    through (the same pixel limit, JPEG draft mode, EXIF orientation, RGB); its refusals become
    RequestErrors with their HTTP status."""
    try:
        return preprocess.load_image(upload.data, draft_size, name=upload.name)
    except ImageError as exc:
        status = _STATUS.get(exc.reason, HTTPStatus.BAD_REQUEST)
        message = str(exc)
        if exc.reason == "not_image":
            message = f"{upload.name}: not an image (JPEG, PNG, WebP, GIF, BMP, TIFF ...)"
        raise RequestError(status, message) from None


def upright_size(upload: Upload) -> tuple[int, int]:
    """(width, height) of a decodable upload as it is shown: its header's size, swapped for the
    EXIF orientations that turn it a quarter (5-8)."""
    with Image.open(io.BytesIO(upload.data)) as image:
        width, height = image.size
        rotated = image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
    return (height, width) if rotated else (width, height)


def classify_upload(classifier, upload: Upload, *, thumbnail: bool = False) -> dict:
    """One upload -> {"name", "width", "height", "label", "confidence", "top_k", "ort_ms"}
    (+ "thumbnail", a data: URL, when asked for). Decoded as ``cifar-run FILE`` decodes it."""
    contract = classifier.contract
    # Drafted as preprocess.prepare drafts a file: to twice the model's input size.
    image = open_image(upload, (contract.width * 2, contract.height * 2))  # upright RGB, drafted
    width, height = upright_size(upload)  # the file's own size: drafting decoded it reduced
    prediction = classifier.predict(image)
    result = {"name": upload.name, "width": width, "height": height, **prediction.to_dict(),
              "ort_ms": round(prediction.ort_ms, 3)}
    if thumbnail:
        result["thumbnail"] = thumbnail_url(upload)
    return result


def thumbnail_url(upload: Upload) -> str:
    """A small upright JPEG of ``upload`` as a data: URL, for a page that cannot show the
    file the browser still holds (no JavaScript)."""
    image = open_image(upload, (THUMBNAIL, THUMBNAIL))  # upright RGB
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def classify_uploads(classifier, uploads: list[Upload], *, thumbnails: bool = False) -> list[dict]:
    """Each upload's result, or {"name", "error", "status"} for one that failed: a bad file
    never stops the others."""
    results = []
    for upload in uploads:
        try:
            results.append(classify_upload(classifier, upload, thumbnail=thumbnails))
        except RequestError as exc:
            results.append({"name": upload.name, "error": str(exc), "status": int(exc.status)})
        except CifarEdgeError as exc:  # load_image's own checks: a file Pillow cannot convert
            results.append({"name": upload.name, "error": str(exc),
                            "status": int(HTTPStatus.BAD_REQUEST)})
    return results
