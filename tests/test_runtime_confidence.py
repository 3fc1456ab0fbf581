"""runtime.model.confidence: ECE, NLL, reliability bins and temperature scaling, on synthetic outputs
whose calibration is known by construction (numpy only, no TensorFlow)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from runtime.model.confidence import (
    ECE_BINS,
    confidence_figures,
    ece,
    fit_temperature,
    nll,
    reliability,
    softmax,
    with_temperature,
)


def calibrated(n: int, seed: int = 0, classes: int = 10, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Random logits z and labels drawn from softmax(z): softmax(z) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, classes))
    labels = (softmax(z).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, labels


# Presented probabilities softmax(z / a): a = 0.5 is over-confident (logits doubled), a = 2 under-confident.
# softmax(log p / T) = softmax(z / (a T)), so the temperature that restores softmax(z) is T = 1 / a.
@pytest.mark.parametrize("a", [0.5, 2.0])
def test_fit_temperature_recovers_the_scale_of_the_logits(a):
    z, labels = calibrated(5000)
    probs = softmax(z / a).astype(np.float32)
    assert fit_temperature(probs, labels) == pytest.approx(1 / a, rel=0.05)
    assert fit_temperature(softmax(z), labels) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("a", [0.5, 2.0])
def test_the_fitted_temperature_lowers_ece_and_nll(a):
    z, labels = calibrated(20000, seed=1)
    probs = softmax(z / a).astype(np.float32)
    fixed = with_temperature(probs, fit_temperature(probs, labels))
    assert ece(probs, labels) > 0.1  # visibly mis-calibrated before
    assert ece(fixed, labels) < 0.02 and nll(fixed, labels) < nll(probs, labels)
    assert ece(softmax(z), labels) < 0.02  # calibrated data scores small


def test_temperature_never_changes_a_top1_label():
    z, _ = calibrated(2000, seed=2)
    probs = softmax(z).astype(np.float32)
    for t in (0.05, 0.5, 1.0, 2.0, 10.0):
        scaled = with_temperature(probs, t)
        assert np.array_equal(scaled.argmax(1), probs.argmax(1)), t
        assert np.allclose(scaled.sum(1), 1.0, atol=1e-5)
    assert np.allclose(with_temperature(probs, 1.0), probs, atol=1e-6)
    # Softer above 1, sharper below.
    softer, sharper = with_temperature(probs, 2.0), with_temperature(probs, 0.5)
    assert softer.max(1).mean() < probs.max(1).mean() < sharper.max(1).mean()
    with pytest.raises(ValueError):
        with_temperature(probs, 0.0)


# Four images; 15 bins of width 1/15, no confidence on an edge:
#   0.95 right → bin 14 (gap 0.05); 0.90 right and 0.88 wrong → bin 13 (mean confidence 0.89,
#   accuracy 0.5, gap 0.39, two images); 0.70 wrong → bin 10 (gap 0.70).
HAND_PROBS = np.array([[0.95, 0.03, 0.02], [0.90, 0.05, 0.05], [0.88, 0.10, 0.02], [0.70, 0.20, 0.10]])
HAND_LABELS = np.array([0, 0, 1, 2])


def test_ece_of_a_hand_made_example():
    assert ece(HAND_PROBS, HAND_LABELS) == pytest.approx((0.05 + 2 * 0.39 + 0.70) / 4)  # 0.3825
    bins = reliability(HAND_PROBS, HAND_LABELS)
    assert [(i, b.count) for i, b in enumerate(bins) if b.count] == [(10, 1), (13, 2), (14, 1)]
    assert bins[13].confidence == pytest.approx(0.89) and bins[13].accuracy == 0.5
    summary = confidence_figures(HAND_PROBS, HAND_LABELS)
    assert (summary.images, summary.accuracy) == (4, 0.5)
    assert summary.mean_confidence == pytest.approx((0.95 + 0.90 + 0.88 + 0.70) / 4)
    assert set(summary.to_dict()) == {"images", "accuracy", "mean_confidence", "ece", "nll"}


def test_nll_is_the_mean_negative_log_probability_of_the_true_label():
    assert nll(HAND_PROBS, HAND_LABELS) == pytest.approx(-np.mean(np.log([0.95, 0.90, 0.10, 0.10])))
    z, labels = calibrated(1000, seed=3)
    probs = softmax(z)
    assert nll(probs, labels) == pytest.approx(-np.mean(np.log(probs[np.arange(1000), labels])))
    # A true class at probability exactly 0 costs a large but finite amount.
    assert 80 < nll(np.array([[1.0, 0.0]]), np.array([1])) < np.inf


def test_reliability_counts_every_image_once_and_confidence_one_in_the_last_bin():
    z, labels = calibrated(1000, seed=4)
    probs = softmax(z)
    bins = reliability(probs, labels)
    assert len(bins) == ECE_BINS and sum(b.count for b in bins) == 1000
    assert bins[0].low == 0.0 and bins[-1].high == 1.0
    assert all(a.high == pytest.approx(b.low) for a, b in pairwise(bins))
    assert all(b.confidence is None and b.accuracy is None for b in bins if not b.count)
    assert all(b.low <= b.confidence <= b.high and 0 <= b.accuracy <= 1 for b in bins if b.count)
    one_hot = np.array([[0.0, 1.0, 0.0], [0.5, 0.3, 0.2]])
    bins = reliability(one_hot, np.array([1, 0]))
    assert bins[-1].count == 1 and bins[-1].confidence == 1.0 and bins[-1].accuracy == 1.0
    assert bins[7].count == 1  # 0.5 lies in (7/15, 8/15]


def test_selective_accuracy_counts_what_min_confidence_keeps():
    from runtime.model.confidence import selective

    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])  # right, wrong, right, right
    rows = {r["threshold"]: r for r in selective(probs, labels, thresholds=(0.5, 0.65, 0.99))}
    assert rows[0.5] == {"threshold": 0.5, "coverage": 1.0, "accuracy": 0.75}
    assert rows[0.65] == {"threshold": 0.65, "coverage": 0.5, "accuracy": 1.0}
    assert rows[0.99] == {"threshold": 0.99, "coverage": 0.0, "accuracy": None}
