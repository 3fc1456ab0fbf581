"""scripts/loop_round_trip.py: the loop on the device end to end (collect from a video, label
over HTTP, fine-tune with and without --replay, export, reload in a running cifar-run), on
generated data; and its checks, which must catch what goes wrong."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import REPO, requires_tf, write_folder_dataset


@pytest.fixture(scope="module")
def trip():
    spec = importlib.util.spec_from_file_location("loop_round_trip", REPO / "scripts" / "loop_round_trip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only
    return module


@requires_tf
@pytest.mark.slow
def test_the_round_trip_on_generated_data(tmp_path, trip):
    pytest.importorskip("cv2")
    data = write_folder_dataset(tmp_path / "cifar10", n_train=100, n_test=100, fmt="jpg")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "loop_round_trip.py"), "--quick", "--cifar", str(data),
                           "--work", str(tmp_path / "work"), "--replay", "5"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["failed"] == [] and proc.stdout.rstrip().endswith("PASS")
    collected = report["collect"]
    assert collected["saved_are_below"] and collected["saved"] == collected["below_threshold"] > 0
    assert report["label"]["filed"] == collected["saved"] and report["label"]["server_counts_match"]
    assert not report["before"]["knows_new_class"] and report["before"]["new_class_accuracy"] == 0
    assert report["after"]["replay"]["knows_new_class"] and report["after"]["replay"]["classes"] == 11
    assert report["train"]["replay"]["train_images"] > report["train"]["labelled"]["train_images"]
    live = report["reload"]
    assert live["frames"] == live["clip_frames"] and live["in_order_none_dropped"]
    assert live["reloads_at_end"] == 1 and "not an ONNX model" in live["refused_on_api_latest"]
    assert report["cpu"]["arch"] and "flags" in report["cpu"]


def test_the_checks_name_what_went_wrong(trip):
    good = {"collect": {"saved_are_below": True, "saved": 5},
            "label": {"filed": 5, "server_counts_match": True},
            "after": {"labelled": {"knows_new_class": True, "new_class_accuracy": 0.9}},
            "reload": {"in_order_none_dropped": True, "exit_code": 0, "reloads_at_end": 1,
                       "refused_on_api_latest": "not an ONNX model", "refusal_logged": True}}
    assert trip.checks(good) == []
    for path, value, named in [
        (("reload", "in_order_none_dropped"), False, "the clip played whole, in order, through the reload"),
        (("reload", "reloads_at_end"), 2, "one reload, and the corrupt file refused"),
        (("reload", "refused_on_api_latest"), None, "one reload, and the corrupt file refused"),
        (("collect", "saved_are_below"), False, "collect saved exactly the frames below the threshold"),
        (("label", "filed"), 4, "every collected frame was labelled and counted"),
        (("after", "labelled", "new_class_accuracy"), 0.4, "the new class is learnt (held-out accuracy over 50%)"),
    ]:
        bad = copy.deepcopy(good)
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert trip.checks(bad) == [named], path


def test_the_cone_is_drawn_the_same_from_the_same_seed(trip):
    import numpy as np

    a = np.asarray(trip.draw_cone(np.random.default_rng(3)))
    b = np.asarray(trip.draw_cone(np.random.default_rng(3)))
    c = np.asarray(trip.draw_cone(np.random.default_rng(4)))
    assert a.shape == (96, 96, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    orange = (a[..., 0] > 200) & (a[..., 1] > 60) & (a[..., 1] < 150) & (a[..., 2] < 60)
    assert 0.03 < orange.mean() < 0.5  # a cone, not a background
