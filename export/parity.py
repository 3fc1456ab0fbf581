"""Parity: run a reference and a candidate model on the same inputs and compare.

Inputs are the test split of the model's dataset (prepared by ``runtime.image.preprocess`` at the
model's input size) or, without data, a fixed synthetic set of that size. Each comparison is
one ``ParityEntry``; an export's entries make a ``ParityReport``, written as JSON and printed
as a table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from runtime.atomic import atomic_write
from runtime.errors import DataError, ModelError, ThresholdError, listed
from runtime.model.batching import predict_in_batches
from runtime.model.confidence import softmax
from runtime.model.contract import (
    CIFAR10_CLASSES,
    KEY_OUTPUT,
    KEY_PROVENANCE,
    KEY_VARIANT,
    KEY_VIEWS,
    InputContract,
    calibration_of,
    variant_label,
)
from runtime.model.session import create_session

from .run_record import RunRecord

BATCH_SIZE = 500  # images per inference call: bounded memory, a smooth progress bar
N_RANDOM, N_PATTERNED = 256, 64  # the synthetic set used when no data is given

Predict = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) float32 → (N, classes) float32


# --- thresholds ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    """A gate per figure; None means the figure is reported but not gated."""

    min_agreement: float | None = None  # fraction of inputs with the same top-1 class
    max_abs_diff: float | None = None  # largest |p_ref - p_cand| over all inputs and classes
    max_accuracy_drop: float | None = None  # percentage points the candidate may fall: fails if Δ acc < -this

    def override(self, **given) -> "Thresholds":
        return replace(self, **{k: v for k, v in given.items() if v is not None})


DEFAULT_THRESHOLDS = {
    # FP32 must be the same model: float rounding only.
    "fp32": Thresholds(min_agreement=0.999, max_abs_diff=1e-4),
    # FP16 weights and activations: ~3 significant digits per layer. On the shipped model the
    # worst of 10,000 test images moved by 1.02e-2 (mean 1.5e-4, agreement 99.89%), so the gate
    # on the largest single difference is 2e-2; agreement is the figure that matters.
    "fp16": Thresholds(min_agreement=0.995, max_abs_diff=2e-2),
    # INT8 changes the function on purpose; what users care about is accuracy.
    "int8": Thresholds(max_accuracy_drop=1.0),
}


# --- data ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParityData:
    batch_nhwc: np.ndarray  # (N, S, S, 3) float32 RGB raw 0-255
    labels: np.ndarray | None  # (N,) int64, None for synthetic inputs
    description: str
    class_names: tuple[str, ...] | None = None  # what the labels index, None for synthetic inputs


def load_test_split(data: str | os.PathLike, limit: int | None = None, input_size: int = 32,
                    model_path: str | os.PathLike | None = None) -> ParityData:
    """The test split of ``data`` (any layout ``train.data`` reads) at ``input_size``, as the run
    of ``model_path`` split it; an export reads it once in its ``RunRecord`` (``from_test_split``)."""
    contract = InputContract(height=input_size, width=input_size)
    return from_test_split(RunRecord.beside(model_path).with_data(data, contract, ("test",)), limit)


def from_test_split(run: RunRecord, limit: int | None = None) -> ParityData:
    """``limit`` images (None: all) of the test split ``run`` read, at its model's size, evenly
    spaced through it: a folder's split is in class order, and its first N can be one class."""
    dataset = run.dataset
    if len(dataset.x_test) == 0:
        raise DataError(f"{run.data}: the test split is empty")
    x, y = dataset.x_test, dataset.y_test
    if limit is not None and limit < len(x):
        picked = np.arange(limit) * len(x) // limit
        x, y = x[picked], y[picked]
    # train.data prepares every file through runtime.image.preprocess.prepare at the model's size:
    # x.astype(float32) is exactly what runtime.image.preprocess.to_batch gives the model.
    name = "CIFAR-10" if dataset.class_names == CIFAR10_CLASSES else \
        f"{Path(dataset.source).name} ({len(dataset.class_names)} classes)"
    return ParityData(x.astype(np.float32), y, f"{name} test split, {len(x)} images", tuple(dataset.class_names))


def check_classes(data: ParityData, class_names: tuple[str, ...]) -> None:
    """A DataError when labelled data names its classes otherwise than the model's outputs
    (other names, or the same in another order): every accuracy would compare crossed labels."""
    if data.labels is None or data.class_names is None or tuple(data.class_names) == tuple(class_names):
        return
    order = " (the same names in another order)" if set(data.class_names) == set(class_names) else ""
    raise DataError(f"the --data classes are {listed(data.class_names)} but the model's outputs are "
                    f"{listed(class_names)}{order}, so accuracy would count the wrong labels: pass --classes "
                    "with the model's output names in output order, and --data the dataset it was trained on "
                    "(its class folders in that order)")


def synthetic_inputs(n_random: int = N_RANDOM, n_patterned: int = N_PATTERNED, seed: int = 0,
                     size: int = 32) -> ParityData:
    """Uniform noise plus flat colours, gradients and checkerboards, ``size`` pixels square:
    fixed, no labels."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (n_random, size, size, 3))
    ramp = np.linspace(0, 255, size)
    patterns = []
    for i in range(n_patterned):
        colour = rng.uniform(0, 255, 3)
        kind = i % 4
        if kind == 0:  # flat colour
            img = np.broadcast_to(colour, (size, size, 3))
        elif kind == 1:  # horizontal gradient tinted by the colour
            img = ramp[None, :, None] * (colour / 255.0)[None, None, :] * np.ones((size, 1, 1))
        elif kind == 2:  # checkerboard of the colour and its complement
            board = (np.add.outer(np.arange(size), np.arange(size)) // (1 + i % 8)) % 2
            img = np.where(board[..., None] == 1, colour, 255 - colour)
        else:  # vertical gradient plus mild noise
            img = ramp[:, None, None] * np.ones((1, size, 3)) * 0.5 + colour * 0.5 + rng.normal(0, 8, (size, size, 3))
        patterns.append(np.clip(img, 0, 255))
    batch = np.concatenate([noise, np.stack(patterns)]).astype(np.float32) if n_patterned else noise.astype(np.float32)
    return ParityData(batch, None, f"synthetic: {n_random} random + {n_patterned} patterned inputs")


# --- models -------------------------------------------------------------------------------

def keras_predictor(model) -> Predict:
    return lambda batch: np.asarray(model.predict_on_batch(batch), dtype=np.float32)


def onnx_predictor(model: str | os.PathLike | bytes | object) -> Predict:
    """An onnxruntime CPU session on a path, serialized bytes or a ModelProto."""
    return _session_predictor(create_session(model))


def _session_predictor(session) -> Predict:
    input_name = session.get_inputs()[0].name
    return lambda batch: np.asarray(session.run(None, {input_name: batch})[0], dtype=np.float32)


def as_probabilities(predict: Predict, output_kind: str) -> Predict:
    """``predict`` itself for a model ending in a softmax; the softmax of its outputs for one
    ending in logits, so parity compares probabilities (what max |dp| means, and what the
    runtime shows) whatever the scale of the logits."""
    if output_kind == "probabilities":
        return predict
    return lambda batch: softmax(predict(batch)).astype(np.float32)


class Loaded(NamedTuple):
    predict: Predict
    variant: str  # "keras", or an ONNX file's from its metadata
    input_size: int  # pixels, square
    views: str = "single"  # "flip": the file averages each image with its mirror
    temperature: dict | None = None  # the temperature baked in and what it was fitted on, if any
    # The pixel scaling the export baked in front of the model (export.preprocessing), if any:
    # a Keras reference is fed the same way, so it computes what the file does.
    baked_in: object | None = None  # Preprocessing


def load_predictor(path: str | os.PathLike, run: RunRecord | None = None) -> Loaded:
    """A ``.keras`` or ``.onnx`` file's predictor, variant, input size, views and temperature
    (the last three from the ONNX metadata; a ``.keras`` file, whose ``run`` may be given, has
    one view and no temperature)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.suffix in (".keras", ".h5", ".hdf5"):
        from .convert import load_keras

        source = load_keras(path, run=run)
        return Loaded(as_probabilities(keras_predictor(source.model), source.output_kind), "keras",
                      source.contract.height)
    if path.suffix == ".onnx":
        session = create_session(path)
        meta = session.get_modelmeta().custom_metadata_map
        height = session.get_inputs()[0].shape[1]
        return Loaded(as_probabilities(_session_predictor(session), meta.get(KEY_OUTPUT, "probabilities")),
                      meta.get(KEY_VARIANT, "fp32"),
                      height if isinstance(height, int) else 32, meta.get(KEY_VIEWS, "single"), calibration_of(meta),
                      _baked_in(meta))
    raise ModelError(f"{path}: unknown model type (expected a .keras, .h5 or .onnx file)")


def _baked_in(meta) -> object | None:
    """The Preprocessing an export baked into this file, from its provenance; None if none."""
    from .preprocessing import Preprocessing

    try:
        declared = json.loads(meta.get(KEY_PROVENANCE, "{}")).get("preprocessing") or {}
    except (ValueError, AttributeError):
        return None
    if not declared.get("baked_in"):
        return None
    return Preprocessing(declared["pixels"], mean=declared.get("mean"), std=declared.get("std"))


def predict_all(predict: Predict, batch_nhwc: np.ndarray, label: str, quiet: bool | None = None) -> np.ndarray:
    """(N, 10) outputs, in BATCH_SIZE chunks, with a progress bar on stderr when it is a
    terminal (``quiet=None``) or when ``quiet`` is False."""
    from train.progress import progress_bar

    with progress_bar(len(batch_nhwc), label, "img", quiet) as bar:
        return predict_in_batches(predict, batch_nhwc, BATCH_SIZE, on_batch=bar.update)


# --- comparison ---------------------------------------------------------------------------

@dataclass
class ParityEntry:
    variant: str
    file: str
    data: str
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    reference_accuracy: float | None  # percent, None without labels
    candidate_accuracy: float | None
    accuracy_delta_points: float | None  # candidate minus reference: a fall is negative
    thresholds: dict
    passed: bool
    failures: list[str] = field(default_factory=list)
    file_size_bytes: int | None = None
    seconds: float | None = None
    views: str = "single"  # "flip": the file averages each image with its mirror (so does the reference)
    # The temperature baked into the file, what it was fitted on, and ECE/NLL before/after on the
    # held-out images and on the parity images (the reference gets the same temperature).
    calibration: dict | None = None

    @property
    def label(self) -> str:
        return variant_label(self.variant, self.views)

    def for_metadata(self) -> dict:
        """What goes into the ONNX file itself (the file's own name and size are not known yet)."""
        entry = asdict(self)
        for key in ("file", "file_size_bytes"):
            entry.pop(key)
        return entry


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
            thresholds: Thresholds, *, variant: str, file: str, data: str) -> ParityEntry:
    """Figures and verdict for two (N, 10) output arrays of the same inputs."""
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_top1, cand_top1 = reference.argmax(1), candidate.argmax(1)
    agreement = float(np.mean(ref_top1 == cand_top1))
    ref_acc = cand_acc = delta = None
    if labels is not None:
        ref_acc = float(np.mean(ref_top1 == labels) * 100)
        cand_acc = float(np.mean(cand_top1 == labels) * 100)
        delta = cand_acc - ref_acc
    entry = ParityEntry(variant=variant, file=file, data=data, n=len(reference),
                        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                        top1_agreement=agreement, reference_accuracy=ref_acc,
                        candidate_accuracy=cand_acc, accuracy_delta_points=delta,
                        thresholds=asdict(thresholds), passed=True)
    entry.failures = _violations(entry, thresholds)
    entry.passed = not entry.failures
    return entry


def _violations(entry: ParityEntry, t: Thresholds) -> list[str]:
    failures = []
    if t.min_agreement is not None and entry.top1_agreement < t.min_agreement:
        failures.append(f"top-1 agreement {entry.top1_agreement:.2%} < {t.min_agreement:.2%}")
    if t.max_abs_diff is not None and entry.max_abs_diff > t.max_abs_diff:
        failures.append(f"max abs diff {entry.max_abs_diff:.3g} > {t.max_abs_diff:.3g}")
    if t.max_accuracy_drop is not None:
        if entry.accuracy_delta_points is None:
            pass  # no labels: cannot gate accuracy, the table says "n/a"
        elif entry.accuracy_delta_points < -t.max_accuracy_drop:
            failures.append(f"Δ acc {format_delta(entry.accuracy_delta_points)} < -{t.max_accuracy_drop:g} pt")
    return failures


# --- report -------------------------------------------------------------------------------

@dataclass
class ParityReport:
    reference: str
    reference_sha256: str | None
    data: str
    created: str
    entries: list[ParityEntry] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    notes: list[str] = field(default_factory=list)
    # How the reference takes its pixels (export.preprocessing.ModelInput.to_dict; its "summary"
    # is the table's line); None where no export decided it (cifar-parity).
    preprocessing: dict | None = None

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries)

    @property
    def failures(self) -> list[str]:
        return [f"{e.label}: {f}" for e in self.entries for f in e.failures]

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        try:
            with atomic_write(path) as fh:
                json.dump(self.to_dict(), fh, indent=2)
                fh.write("\n")
        except OSError as exc:
            raise ModelError(f"{path}: cannot write the parity report ({exc.strerror or exc})") from None
        return path

    def table(self) -> str:
        return format_table(self)


class ParityFailed(ThresholdError):
    """A parity report with a failed gate. The report (and the file it was written to, if any)
    travel with the error, so a caller shows or reads them without parsing the message."""

    def __init__(self, report: ParityReport, report_path: Path | None = None, *, files_written: bool = False):
        self.report, self.report_path = report, report_path
        message = f"parity check failed: {'; '.join(report.failures)}"
        if files_written:
            message += ". The .onnx files were written but did not pass"
        if report_path is not None:
            message += f"; see {report_path}"
        super().__init__(message)


def raise_if_failed(report: ParityReport, report_path: Path | None = None, *, files_written: bool = False) -> None:
    """The one place a failed verdict becomes an error: ParityFailed, exit code 4 at the CLIs.

    ``export_model`` and ``check_parity`` return their report whatever the verdict; a caller
    that must stop on a failure (a CLI, a release script) calls this.
    """
    if not report.passed:
        raise ParityFailed(report, report_path, files_written=files_written)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def format_delta(points: float | None) -> str:
    """A signed accuracy difference, candidate minus reference: ``-0.50 pt`` is a fall."""
    return "n/a" if points is None else f"{points:+.2f} pt"


def temperature_line(temperature: dict) -> str:
    """``temperature 1.31 (fitted on ...): ECE 0.167 -> 0.012, NLL ...`` for a report or a log."""
    parts = [f"temperature {temperature['temperature']:.4g} (fitted on {temperature['fitted_on']})"]
    for where in ("held_out", "test"):
        if temperature.get(where):
            before, after = temperature[where]["before"], temperature[where]["after"]
            parts.append(f"{where.replace('_', '-')} ECE {before['ece']:.3f} -> {after['ece']:.3f}, "
                         f"NLL {before['nll']:.3f} -> {after['nll']:.3f}")
    return "; ".join(parts)


def format_table(report: ParityReport) -> str:
    header = ("variant", "file", "size", "max|dp|", "mean|dp|", "top-1 agree", "ref acc", "acc", "Δ acc", "result")
    rows = [header]
    for e in report.entries:
        size = "" if e.file_size_bytes is None else f"{e.file_size_bytes / 1024:.0f} KiB"
        rows.append((e.label, Path(e.file).name, size, f"{e.max_abs_diff:.2e}", f"{e.mean_abs_diff:.2e}",
                     f"{e.top1_agreement:.2%}", _pct(e.reference_accuracy), _pct(e.candidate_accuracy),
                     format_delta(e.accuracy_delta_points), "PASS" if e.passed else "FAIL"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = [f"reference: {report.reference}", f"data: {report.data}"]
    if report.preprocessing is not None:
        lines.append(report.preprocessing["summary"])
    for i, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for e in report.entries:
        gates = ", ".join(f"{k}={v:g}" for k, v in e.thresholds.items() if v is not None) or "none"
        lines.append(f"{e.label} thresholds: {gates}" + (f"; FAILED: {'; '.join(e.failures)}" if e.failures else ""))
    for e in report.entries:
        if e.calibration:
            lines.append(f"{e.label} {temperature_line(e.calibration)}")
    lines += report.notes
    if report.stages:
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.stages.items()))
    return "\n".join(lines)
