"""Calibration: how far a classifier's confidence is from how often it is right, and the
temperature that closes the gap. numpy only, so the runtime, export and evaluation share it.

A classifier is calibrated when, among the images it labels with confidence p, a fraction p
is right. Expected calibration error (ECE) measures the gap over equal-width confidence bins;
the negative log-likelihood (NLL) is the loss a temperature is fitted to. A temperature T > 0
divides the logits before the softmax: it changes every confidence and never a top-1 label.

Probabilities are enough to fit one: log p equals the logits up to a constant per image, and
softmax ignores that constant, so softmax(log p / T) is the model with temperature T.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On Calibration of Modern Neural Networks")
_TINY = 1e-38  # about the smallest normal float32 (1.18e-38): a probability that underflowed to 0 is taken as this


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """(N, C) probabilities → (N, C) float64 log-probabilities: logits up to a per-row constant."""
    return np.log(np.clip(np.asarray(probs, np.float64), _TINY, 1.0))


def softmax(logits: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(N, C) logits → (N, C) probabilities, computed in ``dtype`` (the classifier keeps float32)."""
    z = np.asarray(logits, dtype)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities the same model gives with its logits divided by ``temperature``."""
    if not temperature > 0:
        raise ValueError(f"a temperature must be positive, not {temperature}")
    return softmax(log_probabilities(probs) / temperature).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (natural log)."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p, _TINY, 1.0))))


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    confidence: float | None  # mean top-1 confidence of the images in the bin (None: empty)
    accuracy: float | None  # fraction of them that are right


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[Bin]:
    """Images grouped by top-1 confidence into ``bins`` equal-width bins over (0, 1]."""
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 cannot occur (max of C ≥ 1/C).
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        sel = index == i
        n = int(sel.sum())
        out.append(Bin(float(edges[i]), float(edges[i + 1]), n,
                       float(confidence[sel].mean()) if n else None, float(right[sel].mean()) if n else None))
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: Σ over bins of (images in bin / N) · |accuracy − confidence|."""
    table = reliability(probs, labels, bins)
    total = sum(b.count for b in table)
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in table if b.count) / max(total, 1))


@dataclass(frozen=True)
class ConfidenceFigures:
    """The calibration figures of one model on one labelled set."""

    images: int
    accuracy: float  # fraction right
    mean_confidence: float  # mean top-1 probability
    ece: float
    nll: float

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def confidence_figures(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> ConfidenceFigures:
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    return ConfidenceFigures(images=len(labels), accuracy=float(np.mean(probs.argmax(1) == labels)),
                       mean_confidence=float(probs.max(1).mean()), ece=ece(probs, labels, bins),
                       nll=nll(probs, labels))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, low: float = 1e-2, high: float = 1e2) -> float:
    """The temperature T in [low, high] that minimises the NLL of softmax(log p / T) on ``labels``.

    The NLL is convex in β = 1/T, and its derivative mean(E_softmax(βz)[z] − z_label) grows with
    β, so the minimum is where that derivative crosses zero: found by bisection on log β, to
    float precision. A T > 1 softens an over-confident model, T < 1 sharpens an under-confident one.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled image")
    z = log_probabilities(probs)
    z_label = z[np.arange(len(labels)), labels]

    def slope(beta: float) -> float:
        return float(np.mean((softmax(beta * z) * z).sum(axis=1) - z_label))

    lo, hi = np.log(1.0 / high), np.log(1.0 / low)  # log β
    if slope(np.exp(lo)) >= 0:
        return float(high)  # even the softest allowed is not soft enough
    if slope(np.exp(hi)) <= 0:
        return float(low)  # every image right and confident: sharpen as far as allowed
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if slope(np.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return float(1.0 / np.exp(0.5 * (lo + hi)))


def selective(probs: np.ndarray, labels: np.ndarray, thresholds=(0.5, 0.7, 0.9)) -> list[dict]:
    """What ``cifar-run --min-confidence t`` gives on labelled images, for each t: the share of
    images that keep their label (``coverage``) and how many of those are right (``accuracy``,
    None when none is kept). The rest are shown as "uncertain"."""
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == np.asarray(labels)
    out = []
    for t in thresholds:
        kept = confidence >= t
        out.append({"threshold": float(t), "coverage": round(float(kept.mean()), 6),
                    "accuracy": round(float(right[kept].mean()), 6) if kept.any() else None})
    return out
