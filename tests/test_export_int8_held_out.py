"""INT8: the images that judge quantization during the float-layer search are never calibration
images, and when the data is too small to keep enough apart, the report says so."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_images, requires_tf, write_folder_dataset


def _rows(batch: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in batch}


@pytest.mark.parametrize("n_images, n_calib, n_held_out", [(60, 20, 2000), (60, 60, 2000), (10, 50, 5),
                                                           (100, 30, 25)])
def test_split_calibration_never_shares_an_index(n_images, n_calib, n_held_out):
    from export.quantize import split_calibration

    calib, held = split_calibration(n_images, n_calib, n_held_out, seed=3)
    assert not set(calib) & set(held)
    assert len(calib) == min(n_calib, n_images)
    assert len(held) == min(n_held_out, max(0, n_images - n_calib))
    assert set(calib) | set(held) <= set(range(n_images))


@requires_tf
def test_calibration_from_cifar_keeps_the_images_apart(tmp_path):
    from export.quantize import calibration_from_cifar

    data = write_folder_dataset(tmp_path / "cifar10", n_train=60, n_test=0)
    calib, (held_x, held_y) = calibration_from_cifar(data, 20)
    assert calib.shape == (20, 32, 32, 3) and held_x.shape == (40, 32, 32, 3) and len(held_y) == 40
    assert not _rows(calib) & _rows(held_x)
    assert len(_rows(calib) | _rows(held_x)) == 60  # every training image, each on one side

    calib, (held_x, held_y) = calibration_from_cifar(data, 100)  # calibration takes the whole split
    assert len(calib) == 60 and len(held_x) == 0 and len(held_y) == 0


def test_held_out_copies_of_calibration_images_are_left_out():
    from export.quantize import held_out_apart

    calib = make_images(8, seed=0)[0].astype(np.float32)
    others, labels = make_images(30, seed=1)
    x = np.concatenate([calib[:3], others.astype(np.float32)])
    y = np.concatenate([np.zeros(3, np.int64), labels])
    kept, notes = held_out_apart(calib, (x, y), min_images=20)
    assert kept is not None and len(kept[0]) == 30 and np.array_equal(kept[1], labels)
    assert not _rows(calib) & _rows(kept[0])
    assert notes == ["INT8: 3 held-out images are identical to calibration images and were left out of the "
                     "held-out check"]


@pytest.mark.parametrize("n_calib, n_held, fix", [(50, 10, "use a larger train split"),
                                                  (600, 100, "pass --calib-images 200 or fewer")])
def test_too_few_held_out_images_skip_the_search_and_say_how_to_get_more(n_calib, n_held, fix):
    from export.quantize import held_out_apart

    x = np.arange(n_calib + n_held, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float32)
    kept, notes = held_out_apart(x[:n_calib], (x[n_calib:], np.zeros(n_held, np.int64)), min_images=500)
    assert kept is None
    assert notes == [f"INT8: only {n_held} training images are left apart from the {n_calib} that calibrate; "
                     f"the float-layer search needs 500 and was skipped ({fix})"]


def test_unlabelled_calibration_says_nothing_was_checked():
    from export.quantize import held_out_apart

    kept, notes = held_out_apart(np.zeros((4, 32, 32, 3), np.float32), None, min_images=1)
    assert kept is None and len(notes) == 1 and "no labels" in notes[0]


@requires_tf
def test_small_train_split_is_reported_not_silent(exported):
    """The shared export calibrates on 50 of 60 training images: 10 left is too few to judge by."""
    from export import read_metadata
    from runtime.model.contract import KEY_PROVENANCE

    notes = [n for n in exported.report.notes if n.startswith("INT8: ")]
    assert notes == ["INT8: only 10 training images are left apart from the 50 that calibrate; the float-layer "
                     "search needs 500 and was skipped (use a larger train split)"]
    assert notes[0] in exported.report.table()
    recipe = read_metadata(exported.onnx_paths["int8"])[KEY_PROVENANCE]["quantization"]
    assert recipe["calibration_images"] == 50 and recipe["held_out_images"] == 0 and recipe["trials"] == []


@requires_tf
def test_quantize_judges_only_on_images_apart_from_calibration(exported, monkeypatch):
    """Overlapping arrays from a caller: the copies are dropped before any held-out accuracy is taken."""
    import onnx

    from export import parity
    from export.quantize import Int8Config, quantize_int8

    calib = make_images(20, seed=0)[0].astype(np.float32)
    others, labels = make_images(30, seed=2)
    x = np.concatenate([calib[:5], others.astype(np.float32)])
    y = np.concatenate([np.zeros(5, np.int64), labels])
    judged = []
    real_predictor = parity.onnx_predictor

    def recording_predictor(model):
        predict = real_predictor(model)
        return lambda batch: judged.append(batch) or predict(batch)

    monkeypatch.setattr(parity, "onnx_predictor", recording_predictor)
    fp32 = onnx.load(str(exported.onnx_paths["fp32"]))
    result = quantize_int8(fp32, calib, Int8Config(min_held_out=10), held_out=(x, y))
    assert result.recipe["held_out_images"] == 30
    assert len(result.trials) >= 1 and "held_out_delta_points" in result.trials[0]
    assert result.notes == ["INT8: 5 held-out images are identical to calibration images and were left out "
                            "of the held-out check"]
    assert judged and sum(len(b) for b in judged) % 30 == 0
    assert all(not _rows(calib) & _rows(batch) for batch in judged)
