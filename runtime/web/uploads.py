"""Uploaded images -> predictions: each image decoded in memory, under a memory budget, and
classified by ``Classifier.predict`` (never written to disk).

``runtime.web.bodies`` reads the images out of a request; whatever goes wrong becomes a
RequestError carrying its HTTP status. Nothing here knows of the HTTP server.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from http import HTTPStatus

from PIL import ExifTags, Image

from runtime.errors import CifarEdgeError, ImageError
from runtime.image import preprocess

THUMBNAIL = 256  # px: the longest side of the picture on the no-JavaScript results page


class RequestError(CifarEdgeError):
    """A request the server refuses, with the HTTP status that says why and the headers to
    send with it."""

    def __init__(self, status: HTTPStatus, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.headers = status, headers


@dataclass(frozen=True)
class Upload:
    name: str  # the file name the client gave, or "upload" for a raw body
    data: bytes


# preprocess.load_image's reasons for refusing a file, as HTTP statuses.
_STATUS = {"empty": HTTPStatus.BAD_REQUEST, "too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
           "not_image": HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "corrupt": HTTPStatus.BAD_REQUEST}


def open_image(upload: Upload, draft_size: tuple[int, int] | None = None,
               max_bytes: int | None = None) -> Image.Image:
    """Decode ``upload`` in memory with ``preprocess.load_image``, the decoder every file goes
    through (the same pixel limit, JPEG draft mode, EXIF orientation, RGB), refused from its
    header when decoding it would take more than ``max_bytes``; its refusals become
    RequestErrors with their HTTP status."""
    try:
        return preprocess.load_image(upload.data, draft_size, name=upload.name, max_bytes=max_bytes)
    except ImageError as exc:
        status = _STATUS.get(exc.reason, HTTPStatus.BAD_REQUEST)
        message = str(exc)
        if exc.reason == "not_image":
            message = f"{upload.name}: not an image (JPEG, PNG, WebP, GIF, BMP, TIFF ...)"
        raise RequestError(status, message) from None


def upright_size(upload: Upload, decoded: Image.Image) -> tuple[int, int]:
    """(width, height) of an upload as it is shown, ``decoded`` being what open_image made of it:
    only a JPEG is decoded reduced (drafted), so only a JPEG's size is read from its header,
    swapped for the EXIF orientations that turn it a quarter (5-8). (Asking a PNG for its EXIF
    would decode it all over again.)"""
    with Image.open(io.BytesIO(upload.data)) as image:
        if image.format != "JPEG":
            return decoded.size
        width, height = image.size
        rotated = image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
    return (height, width) if rotated else (width, height)


def classify_upload(classifier, upload: Upload, *, thumbnail: bool = False, max_bytes: int | None = None) -> dict:
    """One upload -> {"name", "width", "height", "label", "confidence", "top_k", "ort_ms"}
    (+ "thumbnail", a data: URL, when asked for). Decoded as ``cifar-run FILE`` decodes it,
    within ``max_bytes`` of memory."""
    contract = classifier.contract
    # Drafted as preprocess.prepare drafts a file: to twice the model's input size.
    image = open_image(upload, (contract.width * 2, contract.height * 2), max_bytes)  # upright RGB, drafted
    width, height = upright_size(upload, image)  # the file's own size: drafting decoded it reduced
    prediction = classifier.predict(image)
    result = {"name": upload.name, "width": width, "height": height, **prediction.to_dict(),
              "ort_ms": round(prediction.ort_ms, 3)}
    if thumbnail:
        result["thumbnail"] = thumbnail_url(upload, max_bytes)
    return result


def thumbnail_url(upload: Upload, max_bytes: int | None = None) -> str:
    """A small upright JPEG of ``upload`` as a data: URL, for a page that cannot show the
    file the browser still holds (no JavaScript)."""
    image = open_image(upload, (THUMBNAIL, THUMBNAIL), max_bytes)  # upright RGB
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def classify_uploads(classifier, uploads: list[Upload], *, thumbnails: bool = False,
                     max_bytes: int | None = None) -> list[dict]:
    """Each upload's result, or {"name", "error", "status"} for one that failed: a bad file
    never stops the others. Each is decoded within ``max_bytes`` of memory."""
    results = []
    for upload in uploads:
        try:
            results.append(classify_upload(classifier, upload, thumbnail=thumbnails, max_bytes=max_bytes))
        except RequestError as exc:
            results.append({"name": upload.name, "error": str(exc), "status": int(exc.status)})
        except CifarEdgeError as exc:  # load_image's own checks: a file Pillow cannot convert
            results.append({"name": upload.name, "error": str(exc),
                            "status": int(HTTPStatus.BAD_REQUEST)})
    return results
