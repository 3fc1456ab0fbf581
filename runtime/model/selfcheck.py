"""Does this machine give the answers the model file was exported with?

Parity is proven once, on the machine that exports (``cifar-export``: every test image, the
ONNX file against the Keras model). Whether another machine computes the same function is a
different question: onnxruntime picks its kernels by CPU, and on x86 CPUs without VNNI its
u8s8 INT8 kernels saturate (a file right on the export machine labelled half the test split
wrong there). So the export writes a few of its parity images (uint8 RGB, as
``runtime.image.preprocess`` gives them) and the file's own answers for them into the file
(``KEY_SELF_CHECK``), and ``Classifier`` runs them once when it loads: one batch of eight
images, a few milliseconds. Answers further than the file's tolerance from the exported ones,
or with another top-1 label, mean this machine does not run the model that was checked.

The chain of proof: Keras ≈ file on the export machine (parity, 10,000 images) and file on
the export machine ≈ file here (this check).
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from runtime.errors import ModelError
from runtime.model.contract import KEY_PARITY, KEY_SELF_CHECK, InputContract, ModelMetadata

FORMAT = 1
MAX_IMAGES = 8  # one batch: enough to catch a wrong kernel, cheap enough to run at every load
MAX_BYTES = 256 * 1024  # raw pixels per file, before compression: fewer images at large inputs
# Largest |Δp| allowed between this machine's answers and the exported ones, per variant.
# Measured (docs/int8-cpus.md): the same files on an AMD EPYC natively (AVX-512 VNNI) and under
# qemu's Haswell (AVX2, no VNNI) differ by at most 4.8e-7 (FP32), 6.0e-7 (FP16) and 0 (INT8 with
# 7-bit weights); the old INT8 recipe (saturating there) by 0.999. Other SIMD paths (arm64,
# FP16 arithmetic on a Pi 5) round differently, so the tolerance leaves orders of magnitude of
# room: a real fault (a saturating kernel, a wrong provider) moves probabilities by tenths.
TOLERANCE = {"fp32": 0.01, "fp16": 0.05, "int8": 0.05}
DEFAULT_TOLERANCE = 0.05
# Providers that may compute in lower precision than the file (TensorRT builds FP16 engines,
# CUDA may use TF32 convolutions): at least this tolerance there.
PROVIDER_TOLERANCE = {"tensorrt": 0.05, "cuda": 0.05}

PASSED, FAILED, ABSENT, SKIPPED = "passed", "failed", "absent", "skipped"


# -- the vectors, as stored in the file --------------------------------------------------------

@dataclass(frozen=True)
class SelfCheckVectors:
    """Reference inputs and answers, as the export writes them into ``KEY_SELF_CHECK``."""

    images_hwc: np.ndarray  # (N, H, W, 3) uint8 RGB raw pixels, what runtime.image.preprocess gives
    expected: np.ndarray  # (N, K) float32: this file's answers on the machine that exported it
    reference: np.ndarray  # (N, K) float32: the reference model's (Keras), same temperature and views
    tolerance: float  # largest |Δp| against ``expected`` that still passes
    made_on: Mapping[str, object] = field(default_factory=dict)  # CPU, onnxruntime: where ``expected`` came from

    def to_json(self) -> str:
        pixels = np.ascontiguousarray(self.images_hwc, dtype=np.uint8)
        return json.dumps({
            "format": FORMAT, "shape": list(pixels.shape),
            "images_zlib_b64": base64.b64encode(zlib.compress(pixels.tobytes(), 9)).decode("ascii"),
            "expected": np.round(self.expected.astype(np.float64), 7).tolist(),
            "reference": np.round(self.reference.astype(np.float64), 7).tolist(),
            "tolerance": self.tolerance, "made_on": dict(self.made_on)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "the model") -> "SelfCheckVectors":
        try:
            raw = json.loads(text)
            shape = tuple(int(s) for s in raw["shape"])
            pixels = np.frombuffer(zlib.decompress(base64.b64decode(raw["images_zlib_b64"])), np.uint8)
            images = pixels.reshape(shape)
            expected = np.asarray(raw["expected"], np.float32)
            reference = np.asarray(raw["reference"], np.float32)
            tolerance = float(raw["tolerance"])
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            raise ModelError(f"{source}: unreadable self-check vectors in its metadata ({type(exc).__name__}); "
                             "re-export it with `cifar-export`") from None
        if len(images) != len(expected) or expected.shape != reference.shape or len(shape) != 4:
            raise ModelError(f"{source}: inconsistent self-check vectors in its metadata; re-export it "
                             "with `cifar-export`")
        return cls(images, expected, reference, tolerance, raw.get("made_on") or {})


def choose_images(reference: np.ndarray, n: int = MAX_IMAGES, pixels_per_image: int = 32 * 32 * 3) -> np.ndarray:
    """Indices of up to ``n`` inputs to carry: the most confidently classified input of each
    class the reference predicts, round-robin over classes, so that a small numerical
    difference cannot flip a label and the check covers several outputs. Fewer images at
    large inputs (``MAX_BYTES``). reference: (N, K) probabilities."""
    n = max(1, min(n, MAX_BYTES // max(pixels_per_image, 1), len(reference)))
    top1 = reference.argmax(1)
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - (ordered[:, -2] if reference.shape[1] > 1 else 0.0)
    by_class = [list(np.flatnonzero(top1 == k)[np.argsort(-margin[top1 == k], kind="stable")])
                for k in range(reference.shape[1])]
    chosen: list[int] = []
    while len(chosen) < n and any(by_class):
        for queue in by_class:
            if queue and len(chosen) < n:
                chosen.append(int(queue.pop(0)))
    return np.array(sorted(chosen), dtype=np.int64)


def vectors_for(images_hwc: np.ndarray, expected: np.ndarray, reference: np.ndarray, variant: str,
                made_on: Mapping[str, object]) -> SelfCheckVectors:
    """What the export writes for ``variant``: the chosen images, the file's answers on them
    (``expected``) and the reference model's (``reference``)."""
    return SelfCheckVectors(np.asarray(images_hwc).astype(np.uint8), np.asarray(expected, np.float32),
                            np.asarray(reference, np.float32), TOLERANCE.get(variant, DEFAULT_TOLERANCE),
                            made_on)


def this_machine() -> dict:
    """Where answers are computed: CPU model and flags, onnxruntime version."""
    import onnxruntime

    from runtime.cpu import cpu_features

    cpu = cpu_features()
    return {"cpu": cpu.model, "arch": cpu.arch, "flags": list(cpu.flags), "onnxruntime": onnxruntime.__version__}


# -- the check ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SelfCheckResult:
    """What the check found on this machine."""

    status: str  # PASSED, FAILED, ABSENT (the file carries no vectors) or SKIPPED (not asked)
    images: int = 0
    max_abs_diff: float | None = None  # against the exported answers
    labels_differ: int = 0  # images whose top-1 label is not the exported one
    tolerance: float | None = None
    ms: float = 0.0  # the check's onnxruntime run, milliseconds
    reference_max_abs_diff: float | None = None  # against the reference model (information)
    made_on: Mapping[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def summary(self) -> str:
        """One phrase: "passed: max |Δp| 2.1e-07 on 8 images (tolerance 0.01), 1.4 ms"."""
        if self.status == ABSENT:
            return "absent (the file was exported before files carried one)"
        if self.status == SKIPPED:
            return "skipped (--no-verify)"
        labels = f"; {self.labels_differ} of {self.images} top-1 labels differ" if self.labels_differ else ""
        return (f"{self.status}: max |Δp| {self.max_abs_diff:.2g} on {self.images} images "
                f"(tolerance {self.tolerance:g}){labels}, {self.ms:.1f} ms")

    def to_dict(self) -> dict:
        return {"status": self.status, "images": self.images, "max_abs_diff": self.max_abs_diff,
                "labels_differ": self.labels_differ, "tolerance": self.tolerance, "ms": round(self.ms, 3),
                "reference_max_abs_diff": self.reference_max_abs_diff}


def read_vectors(meta: Mapping[str, str], source: str) -> SelfCheckVectors | None:
    text = meta.get(KEY_SELF_CHECK)
    return None if text in (None, "", "null") else SelfCheckVectors.from_json(text, source)


class Checked(Protocol):
    """What the checks read of the model they check: a ``runtime.Classifier``, named by what
    it has rather than imported, since the classifier is the module that calls them."""

    model_path: Path
    metadata: ModelMetadata
    contract: InputContract
    class_names: tuple[str, ...]
    provider: str  # short name: "cpu", "cuda", ...
    variant: str  # "int8", "fp32+flip", ...

    def run(self, prepared_hwc: list[np.ndarray]) -> tuple[np.ndarray, float]: ...


def run_check(clf: Checked) -> SelfCheckResult:
    """Run the file's self-check vectors through ``clf`` (its session, its provider)."""
    vectors = read_vectors(clf.metadata.raw, str(clf.model_path))
    if vectors is None:
        return SelfCheckResult(ABSENT)
    images = vectors.images_hwc
    expected_shape = (clf.contract.height, clf.contract.width, clf.contract.channels)
    if images.shape[1:] != expected_shape or vectors.expected.shape[1] != len(clf.class_names):
        raise ModelError(f"{clf.model_path}: its self-check vectors ({images.shape[1:]}, "
                         f"{vectors.expected.shape[1]} classes) do not fit its own input contract; "
                         "re-export it with `cifar-export`")
    start = time.perf_counter()
    probs, _ = clf.run(list(images))
    ms = (time.perf_counter() - start) * 1000.0
    tolerance = max(vectors.tolerance, PROVIDER_TOLERANCE.get(clf.provider, 0.0))
    diff = float(np.abs(probs.astype(np.float64) - vectors.expected).max())
    differ = int(np.sum(probs.argmax(1) != vectors.expected.argmax(1)))
    reference_diff = float(np.abs(probs.astype(np.float64) - vectors.reference).max())
    status = PASSED if diff <= tolerance and differ == 0 else FAILED
    return SelfCheckResult(status, len(images), diff, differ, tolerance, ms, reference_diff, vectors.made_on)


class SelfCheckError(ModelError):
    """This machine's answers are not the exported ones; ``result`` says by how much."""

    def __init__(self, message: str, result: SelfCheckResult):
        super().__init__(message)
        self.result = result


class FailedParityError(ModelError):
    """The file's own metadata says its export failed a parity threshold."""


def _cpu_phrase() -> str:
    from runtime.cpu import cpu_features

    cpu = cpu_features()
    int8 = ", ".join(cpu.int8_flags) or ("no VNNI" if cpu.arch == "x86_64" else "no dot-product")
    simd = ", ".join(f for f in cpu.flags if f not in cpu.int8_flags) or "no SIMD flags reported"
    return f"{cpu.model} ({cpu.arch}: {simd}; {int8})"


def fp32_sibling(path: Path) -> Path | None:
    """The FP32 file of the same export beside ``path`` (model-int8-flip.onnx → model-flip.onnx)."""
    stem = path.stem.replace("-int8", "").replace("-fp16", "")
    sibling = path.with_name(stem + path.suffix)
    return sibling if sibling != path and sibling.is_file() else None


def refusal(clf: Checked, result: SelfCheckResult) -> SelfCheckError:
    """The one-line refusal for a failed check: what differs, on which CPU, and the fix."""
    import onnxruntime

    made = result.made_on.get("cpu")
    exported = f" (exported on {made})" if made else ""
    if clf.metadata.variant in ("int8", "fp16"):
        sibling = fp32_sibling(clf.model_path)
        fix = f"use the FP32 file ({sibling.name if sibling else 'model.onnx of the same export'})"
    elif clf.provider != "cpu":
        fix = "run it with --provider cpu"
    else:
        fix = "report it with `cifar-doctor --json`"
    return SelfCheckError(
        f"{clf.model_path.name} ({clf.variant}): this machine's answers are not the exported ones{exported}: "
        f"self-check {result.summary()}, on {_cpu_phrase()} with onnxruntime {onnxruntime.__version__} "
        f"{clf.provider}; {fix}, or pass --no-verify to run it anyway", result)


def parity_failures(meta: Mapping[str, str]) -> list[str] | None:
    """The failed parity thresholds the file's metadata records, or None when it passed (or
    records no verdict)."""
    try:
        parity = json.loads(meta.get(KEY_PARITY, "null"))
    except ValueError:
        return None
    if not isinstance(parity, dict) or parity.get("passed") is not False:
        return None
    return [str(f) for f in parity.get("failures") or []] or ["a parity threshold"]


def check_parity_verdict(clf: Checked) -> None:
    """Raise FailedParityError when the file says its export failed parity."""
    failures = parity_failures(clf.metadata.raw)
    if failures:
        raise FailedParityError(
            f"{clf.model_path.name} ({clf.variant}): its export failed the parity check ({'; '.join(failures)}), "
            "so its answers are not the Keras model's; re-export it (see its parity report), or pass "
            "--allow-failed to run it anyway")
