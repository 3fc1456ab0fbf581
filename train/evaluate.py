"""Evaluation: accuracy, per-class precision/recall, calibration (ECE, NLL, a reliability
diagram), a confusion matrix and a grid of test images, for a ``.keras`` model (TensorFlow) or
an ``.onnx`` model (through the runtime).

Writes into the output folder (atomically): report.json, confusion.png, grid.png, reliability.png.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.atomic import atomic_path, atomic_write
from runtime.errors import ModelError
from runtime.model.batching import predict_in_batches
from runtime.model.confidence import ECE_BINS, Bin, confidence_figures
from runtime.model.confidence import reliability as reliability_of
from runtime.model.confidence import selective as selective_of

from .callable import callable_module
from .data import ImageDataset, load_for_model, take_slice
from .models import load_keras_model
from .progress import progress_bar

LABELLED_CLASSES = 20  # the confusion matrix names classes and prints counts up to this many


@dataclass
class EvalReport:
    model: str
    data: str
    images: int
    accuracy: float
    per_class: dict[str, dict[str, float]]  # class → precision, recall, f1, support
    confusion: list[list[int]]  # [true][predicted]
    class_names: list[str]
    calibration: dict = field(default_factory=dict)  # runtime.model.confidence.ConfidenceFigures.to_dict()
    reliability: list[dict] = field(default_factory=list)  # its ECE bins: low, high, count, confidence, accuracy
    # What --min-confidence t keeps: threshold, coverage (share labelled), accuracy of those.
    selective: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was not done, and why (one line each)

    def table(self) -> str:
        lines = [f"model     {self.model}", f"data      {self.data} ({self.images:,} images)",
                 f"accuracy  {100 * self.accuracy:.2f}%"]
        if self.calibration:
            c = self.calibration
            lines.append(f"confidence {c['mean_confidence']:.3f} mean top-1; ECE {c['ece']:.3f} "
                         f"({len(self.reliability)} bins); NLL {c['nll']:.3f}")
        for s in self.selective:
            right = "n/a" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
            lines.append(f"--min-confidence {s['threshold']:g}: {100 * s['coverage']:.1f}% of images labelled, "
                         f"{right} of them right")
        lines += ["", f"{'class':<12}{'precision':>10}{'recall':>9}{'f1':>8}{'support':>9}"]
        for name, m in self.per_class.items():
            lines.append(f"{name:<12}{100 * m['precision']:>9.1f}%{100 * m['recall']:>8.1f}%"
                         f"{100 * m['f1']:>7.1f}%{m['support']:>9}")
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadedModel:
    predict: Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) float32 raw RGB → (N, classes) float32
    input_size: int  # S
    class_names: tuple[str, ...] | None  # as an .onnx file's metadata names them; None for .keras


def load_model(model_path: Path) -> LoadedModel:
    """A ``.keras`` model (TensorFlow) or an ``.onnx`` one (the runtime's own session and contract)."""
    suffix = model_path.suffix.lower()
    if suffix == ".keras":
        model = load_keras_model(model_path)
        return LoadedModel(lambda batch: np.asarray(model.predict_on_batch(batch), dtype=np.float32),
                           int(model.inputs[0].shape[1]), None)
    if suffix == ".onnx":
        from runtime.model.classifier import Classifier

        classifier = Classifier(model_path)
        return LoadedModel(lambda batch: classifier.run(batch)[0], classifier.contract.height,
                           classifier.class_names)
    raise ModelError(f"{model_path}: expected a .keras or .onnx model")


def predict_probabilities(model: LoadedModel, images_rgb: np.ndarray, batch_size: int = 500,
                          quiet: bool | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB → (N, classes) float32 probabilities. A progress bar on a
    terminal (``quiet=None``), or when ``quiet`` is False."""
    with progress_bar(len(images_rgb), "evaluating", "img", quiet) as bar:
        # The model takes raw 0-255 RGB pixels; scaling is inside its graph.
        return predict_in_batches(lambda chunk: model.predict(chunk.astype(np.float32)), images_rgb,
                                  batch_size, on_batch=bar.update)


def _metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names) -> tuple[dict, np.ndarray]:
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        precision = tp / max(confusion[:, i].sum(), 1)
        recall = tp / max(confusion[i].sum(), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(confusion[i].sum())}
    return per_class, confusion


def evaluate(model: str | os.PathLike, data: str | os.PathLike | ImageDataset | None = None,
             out: str | os.PathLike | None = None, limit: int | None = None,
             grid_images: int = 64, quiet: bool | None = None) -> EvalReport:
    """Evaluate ``model`` on the test split of ``data`` (None: CIFAR-10 from Keras' downloader),
    at the model's input size and, for a ``DIR/<class>/`` folder, with the test split its run
    recorded; write report.json and PNGs into ``out`` (default: an ``eval`` folder beside the model)."""
    model_path = Path(model)
    if not model_path.exists():
        raise ModelError(f"{model_path}: no such model file")
    loaded = load_model(model_path)
    dataset = data if isinstance(data, ImageDataset) else load_for_model(data, model_path, loaded.input_size,
                                                                         splits=("test",))
    dataset = take_slice(dataset, 0, limit)
    if loaded.class_names is not None and tuple(loaded.class_names) != tuple(dataset.class_names):
        raise ModelError(f"{model_path}: its classes ({', '.join(loaded.class_names[:12])}) are not the "
                         f"data's ({', '.join(dataset.class_names[:12])})")
    probs = predict_probabilities(loaded, dataset.x_test, quiet=quiet)
    if probs.shape[1] != len(dataset.class_names):
        raise ModelError(f"{model_path}: outputs {probs.shape[1]} classes, the data has "
                         f"{len(dataset.class_names)}")
    y_pred = probs.argmax(1)
    per_class, confusion = _metrics(dataset.y_test, y_pred, dataset.class_names)
    bins = [asdict(b) for b in reliability_of(probs, dataset.y_test, ECE_BINS)]
    report = EvalReport(model=str(model_path), data=dataset.source, images=len(dataset.y_test),
                        accuracy=float(np.mean(y_pred == dataset.y_test)), per_class=per_class,
                        confusion=confusion.tolist(), class_names=list(dataset.class_names),
                        calibration=confidence_figures(probs, dataset.y_test, ECE_BINS).to_dict(), reliability=bins,
                        selective=selective_of(probs, dataset.y_test))
    out_dir = Path(out) if out is not None else model_path.parent / f"eval-{model_path.stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    report.files = {"report": str(out_dir / "report.json")}
    if _has_matplotlib():
        report.files.update((name, str(out_dir / f"{name}.png")) for name in ("confusion", "grid", "reliability"))
        plot_confusion(confusion, dataset.class_names, out_dir / "confusion.png")
        plot_grid(dataset.x_test, dataset.y_test, probs, dataset.class_names, out_dir / "grid.png", grid_images)
        plot_reliability(bins, out_dir / "reliability.png", f"Reliability: {model_path.name}")
    else:  # the base install on a device: the figures matter, the pictures can wait
        report.notes.append("no PNGs drawn: matplotlib is not installed (pip install matplotlib, or the [train] "
                            "extra); the figures above and report.json are complete")
    with atomic_write(out_dir / "report.json") as fh:
        json.dump(asdict(report), fh, indent=2)
    return report


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Lay out ``fig``, write it atomically to ``path`` as a 100 dpi PNG and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)


def plot_confusion(confusion: np.ndarray, class_names, path: Path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (counts; colour = row share)")
    if len(class_names) <= LABELLED_CLASSES:  # beyond, names and counts would not fit: colours only
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def plot_grid(images_rgb: np.ndarray, y_true: np.ndarray, probs: np.ndarray, class_names, path: Path,
              n: int = 64):
    """A grid of test images: predicted label and confidence; misclassified ones in red
    with the true label."""
    plt = _pyplot()
    n = min(n, len(images_rgb))
    # Show the first images, but make sure some mistakes are visible when there are any.
    # A fixed shuffle, so the grid shows every class rather than the first folder.
    order = np.random.default_rng(0).permutation(len(y_true))
    wrong = order[probs.argmax(1)[order] != y_true[order]]
    right = order[probs.argmax(1)[order] == y_true[order]]
    n_wrong = min(len(wrong), n // 4)
    idx = np.sort(np.concatenate([wrong[:n_wrong], right[:n - n_wrong]]))[:n]
    cols = 8
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        pred = int(probs[i].argmax())
        ok = pred == y_true[i]
        ax.imshow(images_rgb[i], interpolation="nearest")
        title = f"{class_names[pred]} {100 * probs[i, pred]:.0f}%"
        if not ok:
            title += f"\n✗ true: {class_names[y_true[i]]}"
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=7, color="black" if ok else "red")
    fig.suptitle("Predictions on test images (red: misclassified)", fontsize=10)
    _save(fig, path)


def plot_reliability(bins: list[dict] | list[Bin], path: Path, title: str = "Reliability diagram"):
    """The reliability diagram of ``bins`` (``EvalReport.reliability`` or runtime.model.confidence's
    ``Bin``): above, each bin's accuracy as a bar over its confidence range, beside the diagonal a
    calibrated model would follow, the gap from the bin's mean confidence to its accuracy hatched
    in red, ECE in the title; below, how many images fall in each bin. Empty bins are not drawn."""
    plt = _pyplot()
    bins = [b if isinstance(b, dict) else asdict(b) for b in bins]
    full = [b for b in bins if b["count"]]
    total = sum(b["count"] for b in full)
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in full) / max(total, 1)
    low = [b["low"] for b in full]
    width = [b["high"] - b["low"] for b in full]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(low, [b["accuracy"] for b in full], width=width, align="edge", color="#4c72b0",
           edgecolor="#2b4a7a", linewidth=0.8, label="accuracy")
    ax.bar(low, [abs(b["accuracy"] - b["confidence"]) for b in full], width=width,
           bottom=[min(b["accuracy"], b["confidence"]) for b in full], align="edge",
           facecolor="none", edgecolor="#d62728", hatch="//", linewidth=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="0.3", linewidth=1, label="perfectly calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title}\nECE {ece:.3f} "
           f"({len(bins)} bins, {total:,} images)")
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(loc="upper left", fontsize=9, framealpha=0.95)
    hist.bar(low, [b["count"] for b in full], width=width, align="edge", color="0.6", edgecolor="0.35",
             linewidth=0.8)
    hist.set(xlim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="images")
    hist.grid(axis="y", alpha=0.3, linewidth=0.5)
    _save(fig, path)


# ``from train import evaluate`` gives this module once it is imported: calling it calls evaluate().
callable_module(__name__)
