"""The export reads its run once: ``cifar-export model.keras --int8 --data DIR`` on a model in
its run folder reads config.json once and each split of the data once, however many stages use
them (class names, parity on the test split, INT8 calibration images, the held-out training
images the temperature is fitted on)."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict

import pytest
from click.testing import CliRunner
from helpers import CLASSES, requires_tf, write_folder_dataset, write_python_batches

from train.config import TrainConfig

VAL_IMAGES = 10  # of the 60 training images, held out by the run (and fitted on by the export)


def _run_folder(root, data, split: dict | None, model=None):
    """``root`` as cifar-train leaves it for a model trained on ``data``: the config.json saying
    what was held out, and the ``model`` copied in as model.keras (None: no file)."""
    root.mkdir()
    if model is not None:
        shutil.copy(model, root / "model.keras")
    config = TrainConfig(model="tiny", epochs=1, val_images=VAL_IMAGES, seed=3)
    (root / "config.json").write_text(json.dumps({
        "config": asdict(config), "data": str(data), "class_names": list(CLASSES), "input_size": 32,
        "split": split, "train_images": 60 - VAL_IMAGES, "validation_images": VAL_IMAGES}))
    return root / "model.keras"


def _count_reads(monkeypatch) -> Counter:
    """Counts opens of any config.json (whichever way it is read), and loads of each split of
    the data: an image folder's split decoded (or read from the cache), or CIFAR-10's batches
    read (both splits at once)."""
    import train.data

    reads: Counter = Counter()
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) == "config.json":
            reads["config.json"] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)  # what Path.read_text and Path.open call
    monkeypatch.setattr(builtins, "open", counting_open)  # what open() calls
    real_decode, real_batches = train.data.decode_split, train.data._from_batches
    monkeypatch.setattr(train.data, "decode_split",
                        lambda split, *args, **kwargs: reads.update([split]) or real_decode(split, *args, **kwargs))
    monkeypatch.setattr(train.data, "_from_batches",
                        lambda *args: reads.update(["train", "test"]) or real_batches(*args))
    return reads


@requires_tf
@pytest.mark.parametrize("layout", ["folder", "cifar-batches"])
def test_int8_export_reads_config_and_each_split_once(tiny_keras, tmp_path, monkeypatch, layout):
    from export.cli import main

    if layout == "folder":
        data, split = write_folder_dataset(tmp_path / "cifar10", n_train=60, n_test=40), {"layout": "train/test"}
    else:
        write_python_batches(tmp_path / "cifar-10-batches-py", n_per_batch=12)  # 60 train, 12 test
        data, split = tmp_path / "cifar-10-batches-py", None
    model = _run_folder(tmp_path / "run", data, split, tiny_keras)
    reads = _count_reads(monkeypatch)
    result = CliRunner().invoke(main, [str(model), "--int8", "--data", str(data), "--calib-images", "20",
                                       "--max-int8-drop", "100", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "model.parity.json").read_text())
    # Every stage that needs the run did use it: the temperature was fitted on its held-out images.
    assert all(f"{VAL_IMAGES} training images held out" in entry["calibration"]["fitted_on"]
               for entry in report["entries"])
    assert reads["config.json"] == 1, reads
    assert (reads["train"], reads["test"]) == (1, 1), reads


def test_finding_the_held_out_images_loads_no_keras(tmp_path):
    """export finds the images a run held out with ``train.split``, not ``train.fit`` (which
    loads Keras and TensorFlow)."""
    import subprocess
    import sys

    data = write_folder_dataset(tmp_path / "cifar10", n_train=60, n_test=10)
    model = _run_folder(tmp_path / "run", data, {"layout": "train/test"})  # never opened: only its run's data
    code = ("import sys\nfrom export.calibrate import held_out_training_images\n"
            f"held = held_out_training_images({str(model)!r}, None)\n"
            "loaded = [m for m in ('train.fit', 'keras', 'tensorflow') if m in sys.modules]\n"
            "print(len(held[0]), loaded)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CIFAR_EDGE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(VAL_IMAGES), "[]"]
