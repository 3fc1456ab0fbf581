"""``Classifier``: a cifar-edge ONNX model in onnxruntime, described by its own metadata.

The model carries its class names and input contract (see ``runtime.model.contract``); the
classifier reads them, feeds the model exactly what ``runtime.image.preprocess`` produces (raw
0-255 float32 NHWC; scaling is inside the graph) and returns top-k labels.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from runtime.errors import CifarEdgeError, ImageError, ModelError
from runtime.image import preprocess
from runtime.model.batching import predict_in_batches
from runtime.model.confidence import softmax
from runtime.model.providers import short_name
from runtime.model.selfcheck import FAILED, SKIPPED, SelfCheckResult, check_parity_verdict, refusal, run_check
from runtime.model.session import create_session, model_metadata

DISPLAY_SIZE = (1024, 1024)  # px: decode size of images kept for annotation (JPEG draft)
UNCERTAIN = "uncertain"  # shown instead of the label when the top probability is too low


@dataclass(frozen=True)
class Prediction:
    """One image's result: the top-k (label, probability) pairs, best first."""

    top_k: tuple[tuple[str, float], ...]
    probabilities: np.ndarray  # (num_classes,) float32, sums to 1
    # Milliseconds of onnxruntime time per image: the time of the batch this image ran in,
    # divided by the batch's size (decoding and resizing not included).
    ort_ms: float = 0.0

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def confidence(self) -> float:
        return self.top_k[0][1]

    def shown_label(self, min_confidence: float = 0.0) -> str:
        """The top label, or UNCERTAIN when its probability is below ``min_confidence``."""
        return self.label if self.confidence >= min_confidence else UNCERTAIN

    def to_dict(self) -> dict:
        return {"label": self.label, "confidence": round(self.confidence, 6),
                "top_k": [{"label": name, "probability": round(p, 6)} for name, p in self.top_k]}


@dataclass(frozen=True)
class FileResult:
    """A prediction for one input source, or the error that stopped it."""

    source: str
    prediction: Prediction | None = None
    error: str | None = None
    image_rgb: Image.Image | None = None  # the decoded image, kept only when asked for

    @property
    def ok(self) -> bool:
        return self.error is None


class Classifier:
    """Load ``model_path`` (a cifar-edge ONNX file) on ``provider`` with ``threads`` intra-op
    threads (0 = onnxruntime's default), and check that it is safe to trust here.

    Two checks, each a ModelError saying what failed and the way out: the file's own record
    of its export must not be a failed parity check (``allow_failed=True`` runs it anyway),
    and its self-check images must give the exported answers on this machine
    (``runtime.model.selfcheck``; ``verify=False`` skips it). ``self_check`` holds what was found.

    >>> clf = Classifier("model-int8.onnx")
    >>> clf.predict("cat.jpg").label
    """

    def __init__(self, model_path: str | os.PathLike, provider: str = "auto", threads: int = 0,
                 top_k: int = 3, *, verify: bool = True, allow_failed: bool = False):
        self.model_path = Path(model_path)
        self.session = create_session(self.model_path, provider=provider, threads=threads)
        self.provider = short_name(self.session.get_providers()[0])
        self.threads = threads
        self.top_k = top_k
        self.metadata = model_metadata(self.session, self.model_path)
        self.class_names: tuple[str, ...] = self.metadata.class_names
        self.contract = self.metadata.contract
        self.output_kind = self.metadata.output_kind
        self.variant = self.metadata.label  # "int8", "fp32+flip", ...
        self._check_graph()
        if not allow_failed:
            check_parity_verdict(self)
        self.self_check: SelfCheckResult = run_check(self) if verify else SelfCheckResult(SKIPPED)
        if self.self_check.status == FAILED:
            raise refusal(self, self.self_check)

    def _check_graph(self) -> None:
        """The graph must have the one input and the output count the metadata describes."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{self.model_path}: expected one input and an output, got "
                             f"{len(inputs)} inputs and {len(outputs)} outputs")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        shape = list(inputs[0].shape)  # e.g. ['N', 32, 32, 3]; strings are dynamic dims
        c = self.contract
        expected = [c.height, c.width, c.channels] if c.layout == "NHWC" else [c.channels, c.height, c.width]
        if len(shape) != 4 or any(isinstance(s, int) and s != e for s, e in zip(shape[1:], expected)):
            raise ModelError(f"{self.model_path}: input shape {shape} does not match the metadata "
                             f"contract {c.layout} {expected}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        n_out = outputs[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.class_names):
            raise ModelError(f"{self.model_path}: the model has {n_out} outputs but the metadata "
                             f"names {len(self.class_names)} classes")

    def describe(self) -> str:
        """One line for humans: which model runs where."""
        return (f"model {self.model_path.name} ({self.variant}, {len(self.class_names)} classes, "
                f"{self.contract.width}x{self.contract.height} {self.contract.resize}) "
                f"on {self.provider}" + (f", {self.threads} threads" if self.threads else "")
                + f"; self-check {self.self_check.status}")

    # -- inference -------------------------------------------------------------------------

    def prepare(self, image=None, *, image_rgb=None, frame_bgr=None, resize: str | None = None) -> np.ndarray:
        """One input -> (H, W, 3) uint8 RGB at the model's size, via ``runtime.image.preprocess``.

        ``image`` is a path or a PIL image; arrays must be named: ``image_rgb=`` or
        ``frame_bgr=`` (the colour order is never guessed). ``resize`` overrides the policy.
        """
        contract = self.contract if resize is None else dataclasses.replace(self.contract, resize=resize)
        given = [x is not None for x in (image, image_rgb, frame_bgr)]
        if sum(given) != 1:
            raise ImageError("pass exactly one of: a path or PIL image, image_rgb=, frame_bgr=")
        if image is not None:
            if isinstance(image, np.ndarray):
                raise ImageError("an array must be passed as image_rgb= or frame_bgr= "
                                 "so its colour order is explicit")
            return preprocess.prepare(image, contract)
        if image_rgb is not None:
            return preprocess.prepare_array(np.asarray(image_rgb), contract)
        # The frame is resized in BGR; preprocess swaps the channels of the small result only.
        return preprocess.prepare_array(np.asarray(frame_bgr), contract, color_order="BGR")

    def run(self, prepared_hwc: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, float]:
        """Prepared images -> ((N, num_classes) probabilities, milliseconds in onnxruntime)."""
        batch = preprocess.to_batch(prepared_hwc, self.contract)  # (N, H, W, 3) float32 0-255
        start = time.perf_counter()
        if self.fixed_batch in (None, len(batch)):  # the common case, one call: no per-call overhead
            out = self.infer(batch)
        else:  # a model exported with a fixed batch dimension takes exactly that many images a call
            out = predict_in_batches(self.infer, batch, self.fixed_batch)
        ms = (time.perf_counter() - start) * 1000.0
        out = np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
        if self.output_kind == "logits":
            out = softmax(out, np.float32)  # (N, C) float32, as a model's own Softmax gives
        return out, ms

    def infer(self, batch_nhwc: np.ndarray) -> np.ndarray:
        """onnxruntime alone: the model's raw output for a ready (N, H, W, 3) float32 batch."""
        return self.session.run([self.output_name], {self.input_name: batch_nhwc})[0]

    def top_from(self, probs: np.ndarray, ms: float = 0.0, top_k: int | None = None) -> Prediction:
        """(num_classes,) probabilities -> a Prediction with the top-k labels."""
        k = min(top_k or self.top_k, len(self.class_names))
        order = np.argsort(-probs, kind="stable")[:k]
        return Prediction(tuple((self.class_names[i], float(probs[i])) for i in order), probs, ms)

    def predict(self, image=None, *, image_rgb=None, frame_bgr=None, top_k: int | None = None,
                resize: str | None = None) -> Prediction:
        """Classify one image: a path or PIL image, or ``image_rgb=``/``frame_bgr=`` arrays."""
        hwc = self.prepare(image, image_rgb=image_rgb, frame_bgr=frame_bgr, resize=resize)
        probs, ms = self.run([hwc])
        return self.top_from(probs[0], ms, top_k)

    def predict_batch(self, images: Iterable, *, color_order: str = "RGB",
                      top_k: int | None = None, batch_size: int = 32) -> list[Prediction]:
        """Classify many paths/PIL images, or arrays in ``color_order`` ("RGB" or "BGR").
        Raises on the first bad image; see ``predict_files`` for per-file errors.
        """
        if color_order not in ("RGB", "BGR"):
            raise ImageError(f"color_order must be 'RGB' or 'BGR', got {color_order!r}")
        key = "image_rgb" if color_order == "RGB" else "frame_bgr"
        prepared = [self.prepare(**{key: x}) if isinstance(x, np.ndarray) else self.prepare(x)
                    for x in images]
        per_image_ms: list[float] = []

        def run_batch(chunk: list[np.ndarray]) -> np.ndarray:
            probs, ms = self.run(chunk)
            per_image_ms.extend([ms / len(chunk)] * len(chunk))
            return probs

        probs = predict_in_batches(run_batch, prepared, batch_size)
        return [self.top_from(p, ms, top_k) for p, ms in zip(probs, per_image_ms)]

    def predict_files(self, sources: Iterable[str | os.PathLike], *, top_k: int | None = None,
                      batch_size: int = 32, keep_images: bool = False) -> Iterator[FileResult]:
        """Classify files in batches, yielding one FileResult per source in order; a bad file
        becomes a result with ``error`` set and never stops the others.

        With ``keep_images`` the decoded image (about DISPLAY_SIZE) rides along for annotation;
        the model input is prepared exactly as without it.
        """
        pending: list[tuple[str, np.ndarray, Image.Image | None]] = []

        def flush() -> Iterator[FileResult]:
            if pending:
                probs, ms = self.run([hwc for _, hwc, _ in pending])
                for (src, _, img), p in zip(pending, probs):
                    yield FileResult(src, self.top_from(p, ms / len(pending), top_k), image_rgb=img)
                pending.clear()

        for source in sources:
            name = os.fspath(source)
            try:
                hwc = self.prepare(name)  # the same decode as without keep_images
                # For display only: a second decode, reduced where JPEG allows.
                image = preprocess.load_image(name, draft_size=DISPLAY_SIZE) if keep_images else None
            except CifarEdgeError as exc:
                # Emit everything queued before this file first, so output keeps input order.
                yield from flush()
                yield FileResult(name, error=str(exc))
                continue
            pending.append((name, hwc, image))
            if len(pending) >= batch_size:
                yield from flush()
        yield from flush()
