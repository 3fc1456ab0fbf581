"""In a notebook: an upload widget that classifies the images dropped on it, and a grid of
predictions (the tutorial's "visualization" step).

    from runtime.notebook import upload_widget, show_predictions
    upload_widget()                                  # the bundled model; or a path, or a Classifier
    show_predictions(x_test[:20], "model-int8.onnx", labels=y_test[:20])

Uploads are decoded in memory by ``runtime.image.preprocess.load_image``, as ``cifar-serve``
decodes them and ``cifar-run FILE`` decodes a file: the same pixel limit, JPEG draft, EXIF
orientation and RGB conversion (RGBA onto white, greyscale to RGB), so the label is the one
those commands give. A bad upload is one line in the output; the next upload still works.

ipywidgets (the ``[notebook]`` extra) is imported inside ``upload_widget`` only: importing this
module, and ``show_predictions``, need nothing beyond the base install, and ``import runtime``
loads neither this module nor IPython.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from PIL import Image

from runtime.errors import CifarEdgeError, ImageError, summary
from runtime.image.draw import caption
from runtime.image.preprocess import load_image

if TYPE_CHECKING:
    from runtime.model.classifier import Classifier, Prediction

NOTEBOOK_EXTRA = "pip install 'cifar-edge[notebook]'"
# Bytes per uploaded file: cifar-serve's limit per request (a phone photo is 3-12 MB). The
# decoder's own pixel limit (preprocess.MAX_PIXELS) still refuses a small file that would
# decompress into gigabytes.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
THUMBNAIL_PX = 128  # px: the longest side an image is shown at (CIFAR's 32x32 blown up, pixels kept)
# Results kept in the widget's output: the whole list is sent to the browser at every upload,
# so it is bounded (the oldest go first).
MAX_RESULTS = 50
BAR_PX = 160  # px: the length of a top-k bar at 100%
RIGHT_COLOR, WRONG_COLOR, BAR_COLOR = "#2e7d32", "#c62828", "#4c72b0"


@dataclass(frozen=True)
class Shown:
    """One image as a notebook shows it: its prediction and thumbnail, or the error that
    stopped it, and the true label when one was given."""

    name: str
    prediction: "Prediction | None" = None
    thumbnail_rgb: Image.Image | None = None  # at most THUMBNAIL_PX a side
    error: str | None = None  # one line, starting with the name
    true_label: str | None = None

    @property
    def correct(self) -> bool | None:
        """Whether the top label is the true one; None without a true label or a prediction."""
        if self.true_label is None or self.prediction is None:
            return None
        return self.prediction.label == self.true_label

    def text(self, min_confidence: float = 0.0) -> str:
        """One line: "cat.jpg: cat 87% (cat 87%, dog 6%, deer 3%)", or the error."""
        if self.prediction is None:
            return self.error
        top = ", ".join(f"{label} {p:.0%}" for label, p in self.prediction.top_k)
        truth = "" if self.true_label is None else f" [true: {self.true_label}]"
        return f"{self.name}: {caption(self.prediction, min_confidence)} ({top}){truth}"


# --- classifying one image ----------------------------------------------------------------

def classify(classifier: "Classifier", source, name: str | None = None, top_k: int | None = None,
             true_label: str | None = None) -> Shown:
    """One image -> a Shown: ``source`` is a path, a PIL image, the bytes of an image file (an
    upload) or an (H, W, 3) uint8 RGB array. Whatever is wrong with it (not an image, too
    large, truncated) becomes ``error``, one line; nothing is raised for a bad image."""
    name = name or _name_of(source)
    # preprocess names a file by its path, bytes by the name given: either starts the line.
    named = (os.fspath(source), name) if _has_name(source) else (name,)
    try:
        model_input, shown = _decode(classifier, source, name)
        prediction = classifier.predict(**model_input, top_k=top_k)
    except CifarEdgeError as exc:
        return Shown(name, error=_error_line(named, str(exc)), true_label=true_label)
    except Exception as exc:  # the widget's callback is the last place to catch it: keep it working
        return Shown(name, error=_error_line(named, f"{type(exc).__name__}: {summary(exc)}"), true_label=true_label)
    return Shown(name, prediction, _thumbnail(shown), true_label=true_label)


def _decode(classifier: "Classifier", source, name: str) -> tuple[dict, Image.Image]:
    """(the model's input as ``Classifier.predict`` keywords, the image to show). Files and
    bytes are decoded by ``preprocess.load_image`` drafted as ``preprocess.prepare`` drafts a
    file (to twice the model's size), so the label is ``cifar-run FILE``'s."""
    if isinstance(source, np.ndarray):
        image_rgb = np.asarray(source)
        if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ImageError(f"{name}: an array must be (H, W, 3) uint8 RGB, got {image_rgb.shape} "
                             f"{image_rgb.dtype}")
        return {"image_rgb": image_rgb}, Image.fromarray(image_rgb)
    if isinstance(source, (bytes, bytearray, memoryview)) and len(source) > MAX_UPLOAD_BYTES:
        raise ImageError(f"{name}: {len(source) / 2**20:.1f} MB is over the {MAX_UPLOAD_BYTES / 2**20:.1f} MB "
                         "limit for one image", reason="too_large")
    contract = classifier.contract
    image = load_image(source, draft_size=(contract.width * 2, contract.height * 2), name=name)
    # For display only: a second decode, larger where JPEG's draft made the first small.
    shown = load_image(source, draft_size=(THUMBNAIL_PX, THUMBNAIL_PX), name=name)
    return {"image": image}, shown


def _name_of(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return "image"


def _error_line(named: tuple[str, ...], message: str) -> str:
    """``message`` on one line that starts with one of the names (preprocess's messages do
    already; others get the last name in front)."""
    line = " ".join(message.split())
    return line if line.startswith(tuple(f"{n}:" for n in named)) else f"{named[-1]}: {line}"


def _thumbnail(image_rgb: Image.Image) -> Image.Image:
    """A copy at most THUMBNAIL_PX a side (a small image stays as it is: HTML blows it up)."""
    thumb = image_rgb.convert("RGB")
    thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.BICUBIC)
    return thumb


# --- HTML -----------------------------------------------------------------------------------

def _img_html(thumb_rgb: Image.Image, alt: str, border: str = "none") -> str:
    """An <img> of ``thumb_rgb`` as a PNG data URL, shown THUMBNAIL_PX on its longest side
    (a small image blown up with its pixels kept square)."""
    buffer = io.BytesIO()
    thumb_rgb.save(buffer, format="PNG")
    scale = THUMBNAIL_PX / max(thumb_rgb.size)
    width, height = round(thumb_rgb.width * scale), round(thumb_rgb.height * scale)
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<img src="{url}" width="{width}" height="{height}" alt="{html.escape(alt)}" '
            f'style="image-rendering:pixelated;border:{border}">')


def _bars_html(prediction: "Prediction") -> str:
    rows = []
    for label, p in prediction.top_k:
        rows.append(f'<div style="display:flex;align-items:center;gap:6px;font-size:12px">'
                    f'<span style="width:90px;text-align:right">{html.escape(label)}</span>'
                    f'<span style="display:inline-block;height:10px;width:{max(1, round(p * BAR_PX))}px;'
                    f'background:{BAR_COLOR}"></span><span>{p:.1%}</span></div>')
    return "".join(rows)


def result_html(shown: Shown, min_confidence: float = 0.0) -> str:
    """What the upload widget shows for one upload: the image, its label, the top-k as bars."""
    name = html.escape(shown.name)
    if shown.prediction is None:
        return f'<div style="color:{WRONG_COLOR}">{html.escape(shown.text())}</div>'
    label = html.escape(caption(shown.prediction, min_confidence))
    return (f'<div style="display:flex;align-items:center;gap:12px;margin:6px 0">'
            f'{_img_html(shown.thumbnail_rgb, shown.name)}<div>'
            f'<div style="font-size:15px"><b>{label}</b> <span style="color:#777">{name}</span></div>'
            f'{_bars_html(shown.prediction)}</div></div>')


def _tile_html(shown: Shown, min_confidence: float) -> str:
    """One cell of the grid: the image, its name, its label (and the true one when wrong),
    in green when right and red when wrong."""
    color = {True: RIGHT_COLOR, False: WRONG_COLOR, None: "inherit"}[shown.correct]
    if shown.prediction is None:
        return f'<div style="color:{WRONG_COLOR};font-size:12px">{html.escape(shown.text())}</div>'
    border = "none" if shown.correct is None else f"3px solid {color}"
    label = html.escape(caption(shown.prediction, min_confidence))
    truth = "" if shown.correct in (None, True) else f"<br>true: {html.escape(shown.true_label)}"
    return (f'<div style="text-align:center;font-size:12px">{_img_html(shown.thumbnail_rgb, shown.name, border)}'
            f'<div style="color:#777">{html.escape(shown.name)}</div>'
            f'<div style="color:{color}"><b>{label}</b>{truth}</div></div>')


# --- the grid -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictionGrid:
    """What ``show_predictions`` returns: Jupyter shows it as a grid (``_repr_html_``); a
    console prints one line per image."""

    shown: tuple[Shown, ...]
    cols: int = 5
    min_confidence: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """The share of images whose top label is the true one; None without true labels."""
        judged = [s.correct for s in self.shown if s.correct is not None]
        return sum(judged) / len(judged) if judged else None

    def _repr_html_(self) -> str:
        tiles = "".join(_tile_html(s, self.min_confidence) for s in self.shown)
        head = "" if self.accuracy is None else (
            f'<div style="margin-bottom:6px">{sum(bool(s.correct) for s in self.shown)} of '
            f'{sum(s.correct is not None for s in self.shown)} right (green), wrong in red</div>')
        return (f'{head}<div style="display:grid;grid-template-columns:repeat({self.cols}, '
                f'{THUMBNAIL_PX + 16}px);gap:8px">{tiles}</div>')

    def __repr__(self) -> str:
        return "\n".join(s.text(self.min_confidence) for s in self.shown)


def show_predictions(images, model=None, cols: int = 5, *, labels: Sequence | None = None,
                     top_k: int = 3, min_confidence: float = 0.0) -> PredictionGrid:
    """A grid of ``images`` with their predicted labels: put it last in a cell (or pass it to
    ``display``). ``images`` are paths, PIL images, bytes or (H, W, 3) uint8 RGB arrays, or one
    (N, H, W, 3) array (a dataset's ``x_test[:20]``); ``model`` is a path, a ``Classifier`` or
    None (the bundled model). With ``labels`` (class names, or indices into the model's), each
    image is green when its top label is the true one and red, with the true label, when not."""
    if cols < 1:
        raise ImageError(f"cols must be at least 1, got {cols}")
    classifier, _ = _classifier(model, top_k)
    sources = [images] if isinstance(images, (str, os.PathLike, bytes, Image.Image)) else list(images)
    truths = [None] * len(sources) if labels is None else [_label_name(classifier, y) for y in labels]
    if len(truths) != len(sources):
        raise ImageError(f"{len(sources)} images but {len(truths)} labels: give one label per image")
    shown = tuple(classify(classifier, source, name=None if _has_name(source) else f"#{i}", top_k=top_k,
                           true_label=truth) for i, (source, truth) in enumerate(zip(sources, truths)))
    return PredictionGrid(shown, cols, min_confidence)


def _has_name(source) -> bool:
    return isinstance(source, (str, os.PathLike))


def _label_name(classifier: "Classifier", label) -> str:
    """A true label as a class name: a name as it is, an index (int or NumPy integer) into the
    model's classes."""
    if isinstance(label, str):
        return label
    index = int(label)
    if not 0 <= index < len(classifier.class_names):
        raise ImageError(f"label {index} is not a class of the model (0-{len(classifier.class_names) - 1})")
    return classifier.class_names[index]


def _classifier(model, top_k: int) -> tuple["Classifier", list[str]]:
    """``model`` as a Classifier (a path is loaded, None is the bundled model), and the notes
    loading it gave (a bundled file that failed its self-check here, and which one is used)."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model, []  # a Classifier already (or anything with its predict and contract)
    from runtime.model.bundled import load_classifier

    notes: list[str] = []
    return load_classifier(model, top_k=top_k, note=notes.append), notes


# --- the upload widget ------------------------------------------------------------------------

def uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in a ``FileUpload.value``: ipywidgets 8's tuple of dicts
    (``name``, ``content`` as a memoryview, ...), or ipywidgets 7's dict of name to
    ``{"metadata": ..., "content": bytes}``."""
    if isinstance(value, dict):  # ipywidgets 7
        return [(name, bytes(entry["content"])) for name, entry in value.items()]
    return [(entry["name"], bytes(entry["content"])) for entry in value]


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        raise CifarEdgeError(f"the upload widget needs ipywidgets: {NOTEBOOK_EXTRA} "
                             "(or pip install ipywidgets)") from None
    return ipywidgets


def _append(output, items: Iterable[dict]) -> None:
    """Add output items (nbformat's dicts: stream or display_data) to an ``Output`` widget,
    keeping the last MAX_RESULTS. Assigning ``outputs`` works from any callback, in or out of
    a cell's execution (``with output:`` only captures what runs in the kernel's current
    request), and needs no IPython shell."""
    output.outputs = (*output.outputs, *items)[-MAX_RESULTS:]


def _line(text: str, stream: str = "stdout") -> dict:
    return {"output_type": "stream", "name": stream, "text": text + "\n"}


def result_output(shown: Shown, min_confidence: float = 0.0) -> dict:
    """One upload's output item: a one-line error on stderr, or its HTML with a text twin."""
    if shown.prediction is None:
        return _line(shown.text(), "stderr")
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": shown.text(min_confidence), "text/html": result_html(shown, min_confidence)}}


def upload_widget(model=None, top_k: int = 3, min_confidence: float = 0.0):
    """An ipywidgets VBox of a ``FileUpload`` (images, several at once) and an ``Output`` that
    shows, for each upload, the image, its label with confidence (``uncertain`` below
    ``min_confidence``) and the ``top_k`` as bars. ``model`` is a path, a ``Classifier`` or None
    (the bundled model). A bad upload (not an image, too large, truncated) is one line in the
    output, and the widget keeps working."""
    widgets = _ipywidgets()
    classifier, notes = _classifier(model, top_k)
    upload = widgets.FileUpload(accept="image/*", multiple=True, description="Upload images")
    output = widgets.Output()
    _append(output, [_line(line) for line in (classifier.describe(), *notes)])

    def on_upload(_change) -> None:
        files = uploaded_files(upload.value)
        if not files:
            return  # our own reset below, or an empty pick
        _append(output, [result_output(classify(classifier, data, name, top_k), min_confidence)
                         for name, data in files])
        if not isinstance(upload.value, dict):
            # Empty it (ipywidgets 8), so picking the same file again is a change and is shown.
            upload.value = ()

    # ipywidgets 7 counts uploads in _counter and rebuilds value from it (its own observer runs
    # first), so the same file picked twice is seen twice; 8 has no _counter: value it is.
    upload.observe(on_upload, names="_counter" if upload.has_trait("_counter") else "value")
    return widgets.VBox([upload, output])
