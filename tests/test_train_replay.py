"""``cifar-train --replay``: a labelled folder plus images of the original data, in the run's
own ``data/`` snapshot; and the warning of a fine-tuning run that would forget classes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import CLASSES, cli_in_subprocess, requires_tf, write_folder_dataset, write_own_classes

from runtime.errors import DataError
from train.folders import list_folder
from train.models import SHIPPED_MODEL
from train.replay import MANIFEST, forgetting_warning, with_replay


@pytest.fixture
def labelled(tmp_path) -> Path:
    """A labelled folder as the labelling page leaves it: a new class, two of the model's, the log."""
    root = write_own_classes(tmp_path / "unsure" / "labelled", "flat", n_train=5, n_test=1,
                             classes=("cat", "dog", "traffic cone"))
    (root / "labels.jsonl").write_text('{"file": "x.jpg", "label": "cat"}\n')
    return root


@pytest.fixture
def original(tmp_path) -> Path:
    return write_folder_dataset(tmp_path / "cifar10", n_train=60, n_test=20)  # 6 training images a class


def test_the_snapshot_holds_every_labelled_image_and_n_of_each_original_class(labelled, original, tmp_path):
    lines = []
    into = with_replay(labelled, original, tmp_path / "run" / "data", per_class=4, log=lines.append)
    listing = list_folder(into)
    assert listing.class_names == tuple(sorted({*CLASSES, "traffic cone"}))
    for name in ("cat", "dog", "traffic cone"):  # every labelled frame, under its own name
        assert {f.name for f in (labelled / name).iterdir()} <= {f.name for f in (into / name).iterdir()}
    replayed = {name: sorted(f.name for f in (into / name).iterdir() if f.name.startswith("replay-"))
                for name in CLASSES}
    assert all(len(files) == 4 for files in replayed.values())
    again = with_replay(labelled, original, tmp_path / "again", per_class=4)  # the same picks each time
    assert {n: sorted(f.name for f in (again / n).iterdir()) for n in CLASSES} == \
        {n: sorted(f.name for f in (into / n).iterdir()) for n in CLASSES}
    first = next((labelled / "cat").iterdir())
    assert os.stat(into / "cat" / first.name).st_ino == os.stat(first).st_ino  # a hard link, no copy
    manifest = json.loads((into / MANIFEST).read_text())
    assert manifest["per_class"] == 4 and manifest["own"] == {"cat": 6, "dog": 6, "traffic cone": 6}
    assert manifest["replayed"] == {name: 4 for name in CLASSES} and manifest["source"] == str(original.resolve())
    assert len(lines) == 1 and lines[0].startswith("replay: 18 images of 3 classes from ")
    assert "40 training images of 10 classes" in lines[0] and lines[0].endswith("new classes: traffic cone")
    # The loader reads it (replay.json and labels.jsonl are no classes); about 20% of it tests.
    assert not (into / "labels.jsonl").exists() and not listing.split["untested"]


def test_a_snapshot_is_replaced_whole_and_a_failure_keeps_the_old(labelled, original, tmp_path, monkeypatch):
    into = with_replay(labelled, original, tmp_path / "data", per_class=2)
    before = sorted(p.relative_to(into).as_posix() for p in into.rglob("*"))
    from train import replay

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replay, "_place", broken)
    with pytest.raises(OSError, match="No space left"):
        with_replay(labelled, original, into, per_class=3)
    assert sorted(p.relative_to(into).as_posix() for p in into.rglob("*")) == before
    monkeypatch.undo()
    with_replay(labelled, original, into, per_class=3)
    assert len(list((into / "airplane").iterdir())) == 3 and not list(tmp_path.glob(".data.partial"))


def test_copies_where_links_cannot_go(labelled, original, tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    lines = []
    into = with_replay(labelled, original, tmp_path / "data", per_class=2, log=lines.append)
    first = next((labelled / "cat").iterdir())
    assert (into / "cat" / first.name).read_bytes() == first.read_bytes()
    assert os.stat(into / "cat" / first.name).st_ino != os.stat(first).st_ino
    assert lines[0].endswith(f"in {tmp_path / 'data'} (38 copies); new classes: traffic cone")


def test_bad_replay_inputs_are_one_line(labelled, original, tmp_path):
    with pytest.raises(DataError, match="--replay adds to a DIR/<class>/ folder"):
        with_replay(original, original, tmp_path / "a")
    with pytest.raises(DataError, match=f"--replay {tmp_path / 'nope'}: not a folder"):
        with_replay(labelled, tmp_path / "nope", tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders with images"):
        with_replay(labelled, tmp_path / "empty", tmp_path / "c")


def test_the_warning_of_a_run_that_would_forget(labelled, tmp_path):
    names = ("cat", "dog", "traffic cone")
    warning = forgetting_warning(SHIPPED_MODEL, labelled, names, [4, 4, 4])
    assert warning.startswith("warning: 8 of the 10 classes model.keras knew are not in the data (airplane, ")
    assert "2 have under 20 training images (cat, dog): expect them to be forgotten" in warning
    assert warning.endswith("--replay DIR (the folder the model was trained on; docs/training.md)")
    # Classes of one's own (no labelling log, under half the model's) are no extension: no warning.
    own = write_own_classes(tmp_path / "own", "flat", n_train=3, n_test=1)
    assert forgetting_warning(SHIPPED_MODEL, own, ("cat", "empty", "parcel"), [3, 3, 3]) is None
    # All ten, enough of each: nothing to say; a replayed snapshot with too few says to replay more.
    assert forgetting_warning(SHIPPED_MODEL, tmp_path, CLASSES, [50] * 10) is None
    (tmp_path / MANIFEST).write_text("{}")
    assert forgetting_warning(SHIPPED_MODEL, tmp_path, CLASSES, [5] * 10).endswith("raise --replay-images")
    assert forgetting_warning(tmp_path / "elsewhere" / "model.keras", labelled, names, [4] * 3) is None  # no config.json


@pytest.mark.parametrize("args, message", [
    (["--replay", "{original}"], "--replay goes with --init"),
    (["--init", "shipped", "--replay", "{original}", "--resume", "{tmp}/run"], "drop --replay"),
    (["--init", "shipped", "--replay", "{tmp}/nope"], "does not exist"),
])
def test_cli_refusals_come_before_tensorflow(labelled, original, tmp_path, args, message):
    if "--resume" in args:
        (tmp_path / "run").mkdir()
    args = [a.format(original=original, tmp=tmp_path) for a in args]
    proc = cli_in_subprocess(["--data", str(labelled), *args, "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert "exit 2 False" in proc.stdout or "exit 1 False" in proc.stdout, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@requires_tf
def test_a_run_with_replay_trains_on_its_snapshot_and_export_reads_it(labelled, original, tmp_path):
    from export.cli import main as export_main
    from train.cli import main as train_main

    run = tmp_path / "run"
    trained = CliRunner().invoke(train_main, ["--data", str(labelled), "--init", "shipped", "--replay", str(original),
                                              "--replay-images", "5", "--epochs", "1", "--out", str(run), "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert "replay: 18 images of 3 classes" in trained.stderr and "warning: " not in trained.stderr.split("replay:")[0]
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str((run / "data").resolve()) and len(config["class_names"]) == 11
    assert config["train_images"] + config["validation_images"] + len(config["split"]["test_files"]) == 18 + 50
    (labelled / "cat" / "later.png").write_bytes(next((labelled / "cat").iterdir()).read_bytes())  # it grows
    exported = CliRunner().invoke(export_main, [str(run / "model.keras"), "--data", str(run / "data"), "-q"])
    assert exported.exit_code == 0, exported.output
    report = json.loads((run / "model.parity.json").read_text())
    assert report["passed"] and report["entries"][0]["n"] == len(config["split"]["test_files"])
