"""runtime.model.selfcheck: a model file checks, where it runs, that this machine gives its exported
answers; and a file whose export failed parity is refused.

The tiny colour classifier carries self-check vectors computed in numpy (tests/runtime_models.py),
so onnxruntime's own numerics decide every verdict here; nothing of onnxruntime is mocked.
Files with other metadata need the onnx package to be written (the full environment); the
others run in the base-only environment too.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import has_module, one_error_line
from runtime_models import build_model, metadata, self_check_images, self_check_json

from runtime.cli.run import main as cifar_run
from runtime.cpu import cpu_features
from runtime.doctor import PROBLEM, check_self_checks
from runtime.errors import ModelError
from runtime.model import bundled, selfcheck
from runtime.model.classifier import Classifier
from runtime.model.contract import KEY_PARITY, KEY_SELF_CHECK
from runtime.model.selfcheck import (
    ABSENT,
    FAILED,
    PASSED,
    SKIPPED,
    FailedParityError,
    SelfCheckError,
    SelfCheckVectors,
    choose_images,
    run_check,
)

needs_onnx = pytest.mark.skipif(not has_module("onnx"), reason="writing a model file needs the onnx package")

FAILED_PARITY = json.dumps({"passed": False, "failures": ["top-1 agreement 5.04% < 99.50%"]})


def run(*args):
    return CliRunner().invoke(cifar_run, [str(a) for a in args])


def with_meta(clf: Classifier, **changes: str) -> Classifier:
    """``clf`` reading other metadata values (the same session, so the same numerics)."""
    changed = dataclasses.replace(clf.metadata, raw={**clf.metadata.raw, **changes})
    clone = object.__new__(Classifier)
    clone.__dict__.update(clf.__dict__, metadata=changed)
    return clone


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu")


# -- the check, in the base environment ---------------------------------------------------------

def test_a_right_machine_passes_and_the_check_is_cheap(clf):
    result = clf.self_check
    assert result.status == PASSED and result.images == 8 and result.labels_differ == 0
    assert result.max_abs_diff < 1e-5 and result.tolerance == selfcheck.TOLERANCE["fp32"]
    assert 0 < result.ms < 1000
    assert "self-check passed" in clf.describe()


def test_answers_beyond_the_tolerance_fail(clf):
    result = run_check(with_meta(clf, **{KEY_SELF_CHECK: self_check_json(perturb=0.02)}))
    assert result.status == FAILED and result.labels_differ == 0
    assert result.max_abs_diff == pytest.approx(0.02, abs=1e-4)
    assert run_check(with_meta(clf, **{KEY_SELF_CHECK: self_check_json(perturb=0.005)})).status == PASSED


def test_another_top1_label_fails_even_within_the_tolerance(clf):
    vectors = SelfCheckVectors.from_json(self_check_json())
    images = self_check_images()
    # The two blue-and-yellow answers swapped: probabilities within reach, labels not.
    expected = vectors.expected.copy()
    expected[[2, 3]] = expected[[3, 2]]
    swapped = dataclasses.replace(vectors, expected=expected, images_hwc=images, tolerance=1.0)
    result = run_check(with_meta(clf, **{KEY_SELF_CHECK: swapped.to_json()}))
    assert result.status == FAILED and result.labels_differ == 2


def test_refusal_is_one_line_naming_the_cpu_and_the_ways_out(clf):
    bad = with_meta(clf, **{KEY_SELF_CHECK: self_check_json(perturb=0.3)})
    error = selfcheck.refusal(bad, run_check(bad))
    message = str(error)
    assert isinstance(error, SelfCheckError) and error.result.status == FAILED
    assert "\n" not in message and "--no-verify" in message
    assert "self-check failed: max |Δp| 0.3" in message
    assert cpu_features().model in message and "onnxruntime" in message


def test_vectors_round_trip_and_unreadable_ones_are_a_model_error():
    text = self_check_json("int8")
    vectors = SelfCheckVectors.from_json(text)
    assert vectors.images_hwc.dtype == np.uint8 and vectors.images_hwc.shape == (8, 32, 32, 3)
    assert np.array_equal(vectors.images_hwc, self_check_images())
    assert vectors.tolerance == selfcheck.TOLERANCE["int8"]
    assert SelfCheckVectors.from_json(vectors.to_json()).to_json() == vectors.to_json()
    broken = json.loads(text)
    broken["images_zlib_b64"] = "AAAA"
    with pytest.raises(ModelError, match="unreadable self-check vectors.*cifar-export"):
        SelfCheckVectors.from_json(json.dumps(broken), "m.onnx")


def test_chosen_images_are_each_class_most_confident_first():
    reference = np.array([[0.6, 0.4], [0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.99, 0.01]])
    assert choose_images(reference, n=2).tolist() == [2, 4]  # class 0's best (4), class 1's best (2)
    assert choose_images(reference, n=4).tolist() == [1, 2, 3, 4]
    assert len(choose_images(reference, n=8)) == 5
    assert len(choose_images(np.eye(10)[np.arange(40) % 10], n=8, pixels_per_image=224 * 224 * 3)) == 1


def test_no_verify_skips_the_check(tiny_model):
    assert Classifier(tiny_model, verify=False).self_check.status == SKIPPED


# -- files with other metadata (the onnx package writes them) -----------------------------------

@pytest.fixture
def perturbed_model(tmp_path):
    return build_model(tmp_path / "model-int8.onnx", meta={**metadata(variant="int8"),
                                                           KEY_SELF_CHECK: self_check_json("int8", perturb=0.2)})


@needs_onnx
def test_cifar_run_refuses_a_file_whose_answers_differ(perturbed_model, tmp_path):
    fp32 = build_model(tmp_path / "model.onnx")
    message = one_error_line(run("--model", perturbed_model))
    assert message.startswith("model-int8.onnx (int8): this machine's answers are not the exported ones")
    assert f"use the FP32 file ({fp32.name})" in message and "--no-verify" in message
    assert run("--model", perturbed_model, "--no-verify").exit_code == 0


@needs_onnx
def test_a_file_without_vectors_runs_and_says_it_is_unchecked(tmp_path):
    old = build_model(tmp_path / "old.onnx", meta=metadata(self_check=False))
    assert Classifier(old).self_check.status == ABSENT
    r = run("--model", old)
    assert r.exit_code == 0 and "old.onnx carries no self-check" in r.stderr and "unchecked" in r.stderr


@needs_onnx
def test_a_file_whose_export_failed_parity_is_refused(tmp_path):
    failed = build_model(tmp_path / "failed.onnx", meta={**metadata(), KEY_PARITY: FAILED_PARITY})
    with pytest.raises(FailedParityError, match=r"failed the parity check \(top-1 agreement 5.04%"):
        Classifier(failed)
    assert Classifier(failed, allow_failed=True).self_check.status == PASSED
    message = one_error_line(run("--model", failed))
    assert "failed the parity check (top-1 agreement 5.04% < 99.50%)" in message and "--allow-failed" in message
    assert run("--model", failed, "--allow-failed").exit_code == 0


@needs_onnx
def test_the_bundled_int8_falls_back_to_the_bundled_fp32(perturbed_model, tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(perturbed_model, assets / "model-int8.onnx")
    build_model(assets / "model.onnx")
    monkeypatch.setenv(bundled.ASSETS_ENV, str(assets))
    notes: list[str] = []
    clf = bundled.load_classifier(note=notes.append)
    assert clf.model_path.name == "model.onnx" and clf.self_check.status == PASSED
    assert len(notes) == 1 and "model-int8.onnx failed its self-check" in notes[0] and "model.onnx instead" in notes[0]
    r = run("--json")
    assert r.exit_code == 0 and "using the bundled model.onnx instead" in r.stderr
    # A model the user names is never swapped.
    with pytest.raises(SelfCheckError):
        bundled.load_classifier(assets / "model-int8.onnx")


@needs_onnx
def test_doctor_checks_every_model_it_finds(perturbed_model, tiny_model, tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(tiny_model, assets / "model.onnx")
    monkeypatch.setenv(bundled.ASSETS_ENV, str(assets))
    fine = check_self_checks()
    assert fine.status == "ok" and "model.onnx (fp32) passed: max |Δp|" in fine.detail
    named = check_self_checks(perturbed_model)
    assert named.status == PROBLEM
    assert "model-int8.onnx (int8) failed" in named.detail and "model.onnx (fp32) passed" in named.detail
