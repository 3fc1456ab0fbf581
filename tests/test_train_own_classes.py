"""Your own classes: image folders of any class names and image sizes, in both layouts, train,
export (parity, INT8) and run labelled with their own names; --input-size and --init; every
bad-data case is one line; CIFAR-10 folders decode exactly as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    OWN_CLASSES,
    make_images,
    one_error_line,
    requires_tf,
    write_folder_dataset,
    write_own_classes,
)
from PIL import Image

from runtime.errors import DataError
from runtime.image.preprocess import load_image, prepare
from runtime.model.contract import CIFAR10_CLASSES, InputContract
from train.data import load_dataset

SORTED = tuple(sorted(OWN_CLASSES))  # ("cat", "empty", "parcel"): class index = sorted folder name


# -- loading: layouts, sizes, the split, CIFAR-10 unchanged (no TensorFlow) --------------------

def test_cifar10_folder_decodes_exactly_as_before(tmp_path):
    root = write_folder_dataset(tmp_path / "c", n_train=30, n_test=10, fmt="jpg")
    data = load_dataset(root)
    assert data.class_names == CIFAR10_CLASSES == tuple(sorted(CIFAR10_CLASSES))  # canonical = sorted
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        # Before: load_image per file, class by class in CIFAR-10's order, files sorted, no resize.
        files = [(f, i) for i, name in enumerate(CIFAR10_CLASSES) for f in sorted((root / split / name).iterdir())]
        assert np.array_equal(x, np.stack([np.asarray(load_image(f)) for f, _ in files]))
        assert np.array_equal(y, [i for _, i in files]) and x.dtype == np.uint8
    assert data.split == {"layout": "train/test"}


def test_split_layout_any_names_any_sizes(tmp_path):
    root = write_own_classes(tmp_path / "d", "split", n_train=9, n_test=3)
    data = load_dataset(root)
    assert data.class_names == SORTED
    assert data.x_train.shape == (27, 32, 32, 3) and data.x_test.shape == (9, 32, 32, 3)
    assert np.bincount(data.y_test).tolist() == [3, 3, 3]
    first_parcel = sorted((root / "train" / "parcel").iterdir())[0]
    assert np.array_equal(data.x_train[data.y_train == 2][0], prepare(first_parcel))  # the runtime's path
    big = load_dataset(root, input_size=48)  # another size: another cache entry, the same function
    assert big.x_train.shape == (27, 48, 48, 3)
    assert np.array_equal(big.x_train[big.y_train == 2][0], prepare(first_parcel, InputContract(height=48, width=48)))


def test_flat_layout_is_split_per_file_and_reproducible(tmp_path):
    from train.folders import flat_position

    root = write_own_classes(tmp_path / "d", "flat", n_train=16, n_test=4)  # 20 images a class
    data = load_dataset(root)
    split = data.split
    assert data.class_names == SORTED and len(data.x_train) + len(data.x_test) == 60
    assert split["layout"] == "flat" and split["test_fraction"] == 0.2 and split["seed"] == 0
    assert split["untested"] == [] and len(split["test_files"]) == len(data.x_test)
    # The rule, file by file: under the fraction to test, plus each class's lowest; never its highest.
    for name in SORTED:
        files = sorted((root / name).iterdir(), key=lambda f: flat_position(name, f.name))
        expected = {f"{name}/{f.name}" for f in files[1:-1] if flat_position(name, f.name) < 0.2} | {f"{name}/{files[0].name}"}
        assert {f for f in split["test_files"] if f.startswith(f"{name}/")} == expected
    assert 0 < np.bincount(data.y_test, minlength=3).min() and np.bincount(data.y_test).max() < 20
    again = load_dataset(root, cache_dir=tmp_path / "other-cache")
    assert again.split == split and np.array_equal(again.x_test, data.x_test)
    # A folder that grows keeps every file on its side: the test files before are test files after,
    # the training files before are training files after, and the other classes do not move at all.
    for i in range(40):
        shutil.copy(next((root / "cat").iterdir()), root / "cat" / f"grown-{i:03d}.png")
    grown = load_dataset(root).split["test_files"]
    assert set(split["test_files"]) <= set(grown)
    assert [f for f in grown if not f.startswith("cat/")] == [f for f in split["test_files"] if not f.startswith("cat/")]
    assert 4 <= sum(f.startswith("cat/grown-") for f in grown) <= 16  # about 20% of the 40 new ones
    # The recorded test files win over the rule; a missing one is named.
    recorded = load_dataset(root, test_files=split["test_files"])
    assert recorded.split["test_files"] == split["test_files"]
    (root / split["test_files"][0]).unlink()
    with pytest.raises(DataError, match=f"{split['test_files'][0]}: missing, yet the run recorded it"):
        load_dataset(root, test_files=split["test_files"])
    # Two images: one to test, one to train, whatever their hashes.
    small = write_own_classes(tmp_path / "s", "flat", n_train=1, n_test=1)
    tiny = load_dataset(small)
    assert np.bincount(tiny.y_test).tolist() == [1, 1, 1] and np.bincount(tiny.y_train).tolist() == [1, 1, 1]


def test_duplicates_across_splits_are_one_warning_line(tmp_path):
    root = write_own_classes(tmp_path / "d", "split", n_train=6, n_test=2)
    source = sorted((root / "train" / "cat").iterdir())[0]
    shutil.copy(source, root / "test" / "cat" / "copy-a.jpg")
    shutil.copy(source, root / "test" / "empty" / "copy-b.jpg")
    lines = []
    load_dataset(root, quiet=True, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 test image(s) are byte-identical to training images" in warnings[0]
    assert "copy-a.jpg" in warnings[0] and source.name in warnings[0]
    again = []
    load_dataset(root, quiet=True, log=again.append)  # from the cache: still said
    assert again == warnings


# -- bad data: one line naming the path, exit code 1 (cifar-train's CLI) -----------------------

def _bad(tmp_path, damage) -> str:
    from train.cli import main

    root = write_own_classes(tmp_path / "d", "split", n_train=3, n_test=2)
    expected = damage(root)
    result = CliRunner().invoke(main, ["--data", str(root), "--model", "tiny", "--out", str(tmp_path / "run"),
                                       "--quiet"])
    # An unreadable image is found while decoding: the notice that decoding began comes first.
    line = one_error_line(result, "cifar-train", notices=("decoding the ",))
    assert not (tmp_path / "run").exists()
    assert expected in line, line
    return line


def _empty_class(root):
    for f in (root / "test" / "empty").iterdir():
        f.unlink()
    return f"{root / 'test' / 'empty'}: class folder has no images"


def _one_class(root):
    for split in ("train", "test"):
        for name in ("empty", "parcel"):
            shutil.rmtree(root / split / name)
    return f"{root / 'train'}: only one class (cat); a classifier needs at least 2"


def _unreadable(root):
    (root / "train" / "parcel" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    return f"unreadable image {root / 'train' / 'parcel' / 'broken.jpg'}"


def _classes_differ(root):
    (root / "test" / "parcel").rename(root / "test" / "parcels")
    return f"{root / 'test'}: its classes differ from {root / 'train'}'s (only in train: parcel; only in test: parcels)"


def _too_many(root):
    one = next((root / "train" / "cat").iterdir())
    for i in range(1001 - 3):
        (root / "train" / f"c{i:04d}").mkdir()
        (root / "train" / f"c{i:04d}" / one.name).write_bytes(one.read_bytes())
    return f"{root / 'train'}: 1,001 class folders; at most 1,000 classes are supported"


@pytest.mark.parametrize("damage", [_empty_class, _one_class, _unreadable, _classes_differ, _too_many])
def test_bad_data_is_one_line_naming_the_path(tmp_path, damage):
    _bad(tmp_path, damage)


def test_flat_class_of_one_image_trains_untested_and_images_without_class_folders(tmp_path):
    root = write_own_classes(tmp_path / "d", "flat", n_train=3, n_test=1)
    for f in sorted((root / "cat").iterdir())[1:]:
        f.unlink()
    lines = []
    data = load_dataset(root, quiet=True, log=lines.append)  # a labelled folder's new class, one frame in
    cat = SORTED.index("cat")
    assert (data.y_train == cat).sum() == 1 and (data.y_test == cat).sum() == 0
    assert data.split["untested"] == ["cat"] and sorted(set(data.y_test.tolist())) == [i for i in range(3) if i != cat]
    assert [line for line in lines if "not tested" in line] == \
        ["warning: 1 class(es) of one image train but are not tested: cat (a class needs 2 images to be tested)"]
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(make_images(1)[0][0]).save(loose / "a.png")
    with pytest.raises(DataError, match=f"{loose}: no class folders"):
        load_dataset(loose)


def test_init_refusals_come_before_tensorflow(tmp_path):
    from train.cli import main

    root = write_own_classes(tmp_path / "d", "split", n_train=3, n_test=2)
    args = ["--data", str(root), "--out", str(tmp_path / "run")]
    missing = CliRunner().invoke(main, [*args, "--init", str(tmp_path / "none.keras")])
    assert one_error_line(missing, "cifar-train") == f"{tmp_path / 'none.keras'}: no such file"
    mismatched = CliRunner().invoke(main, [*args, "--init", "shipped", "--model", "quick"])
    assert "a 'default' model, not 'quick'; --init copies the layers of the same architecture: pass --model " \
           "default" in one_error_line(mismatched, "cifar-train")
    not_keras = CliRunner().invoke(main, [*args, "--init", str(tmp_path / "model.h5")])
    assert "--init takes 'shipped' or a .keras model file" in one_error_line(not_keras, "cifar-train")
    assert not (tmp_path / "run").exists()


# -- the whole path with TensorFlow: train, export with parity and INT8, evaluate, run ---------

@pytest.fixture(scope="module", params=[("split", 32), ("flat", 48)], ids=["split-32", "flat-48"])
def own_run(request, tmp_path_factory):
    """A tiny model trained 2 epochs by cifar-train on three classes of mixed sizes, then
    exported by cifar-export with INT8 and parity on the data's test split."""
    pytest.importorskip("tensorflow")
    from export.cli import main as export_main
    from train.cli import main as train_main

    layout, size = request.param
    root = tmp_path_factory.mktemp(f"own-{layout}")
    data = write_own_classes(root / "photos", layout, n_train=40, n_test=10)
    run = root / "run"
    trained = CliRunner().invoke(train_main, ["--data", str(data), "--model", "tiny", "--epochs", "2",
                                              "--batch-size", "16", "--seed", "1", "--input-size", str(size),
                                              "--out", str(run), "--quiet"])
    assert trained.exit_code == 0, trained.output
    exported = CliRunner().invoke(export_main, [str(run / "model.keras"), "--data", str(data), "--int8",
                                                "--calib-images", "30", "--max-int8-drop", "100", "-q"])
    assert exported.exit_code == 0, exported.output
    return data, run, layout, size


def _n_test(data: Path, layout: str) -> int:
    """The test split's size: 10 a class written, or by the DIR/<class>/ rule, about 20%."""
    from train.folders import list_folder

    return 3 * 10 if layout == "split" else len(list_folder(data).files["test"])


@requires_tf
def test_the_run_records_classes_size_and_split(own_run):
    data, run, layout, size = own_run
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == list(SORTED) and config["config"]["input_size"] == size
    assert config["split"]["layout"] == ("flat" if layout == "flat" else "train/test")
    if layout == "flat":
        assert len(config["split"]["test_files"]) == _n_test(data, layout) and config["init"] is None
        assert 3 <= _n_test(data, layout) <= 25  # 50 a class: about 10 each


@requires_tf
def test_export_carries_the_names_and_the_input_size(own_run):
    from export import read_metadata
    from runtime.model.contract import KEY_CLASS_NAMES, KEY_INPUT

    data, run, layout, size = own_run
    report = json.loads((run / "model.parity.json").read_text())
    assert report["passed"] and [e["variant"] for e in report["entries"]] == ["fp32", "int8"]
    n = _n_test(data, layout)
    assert report["entries"][0]["n"] == n and f"photos (3 classes) test split, {n} images" == report["data"]
    for name in ("model.onnx", "model-int8.onnx"):
        meta = read_metadata(run / name)
        assert meta[KEY_CLASS_NAMES] == list(SORTED)
        contract = InputContract.from_json(json.dumps(meta[KEY_INPUT]))
        assert contract == InputContract(height=size, width=size)
    assert "temperature" in json.dumps(report)  # calibrated on the images the run held out


@requires_tf
def test_cifar_run_labels_with_the_new_names(own_run, tmp_path):
    from runtime.cli.run import main as run_main

    data, run, layout, size = own_run
    photo = tmp_path / "new.png"  # a size the model never saw
    Image.fromarray(make_images(1)[0][0]).resize((77, 51)).save(photo)
    result = CliRunner().invoke(run_main, [str(photo), "--model", str(run / "model-int8.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert row["top_label"] in SORTED and {t["label"] for t in row["top_k"]} == set(SORTED)
    table = CliRunner().invoke(run_main, [str(photo), "--model", str(run / "model.onnx")])
    assert table.exit_code == 0 and f"new.png  {row['top_label']}" in table.stdout


@requires_tf
def test_cifar_eval_finds_the_same_test_split(own_run, tmp_path):
    from train.eval_cli import main as eval_main

    data, run, layout, size = own_run
    for model in ("model.keras", "model.onnx"):
        result = CliRunner().invoke(eval_main, [str(run / model), "--data", str(data), "--out", str(tmp_path / model),
                                                "--quiet"])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / model / "report.json").read_text())
        assert report["images"] == _n_test(data, layout) and report["class_names"] == list(SORTED)


# -- --init: the features copied, a new head ----------------------------------------------------

@pytest.fixture
def ten_class_keras(tmp_path):
    """A small saved .keras model of 10 classes (a tiny one, untrained) to start from."""
    keras = pytest.importorskip("keras")
    from train.models import build_tiny

    keras.utils.set_random_seed(0)
    saved = tmp_path / "ten.keras"
    build_tiny(num_classes=10).save(saved)
    return saved


@requires_tf
def test_copy_features_copies_every_layer_but_the_head(ten_class_keras):
    import keras

    from train.models import build_tiny, copy_features, load_keras_model

    saved = ten_class_keras
    source = load_keras_model(saved)
    keras.utils.set_random_seed(1)
    model = build_tiny(num_classes=3, input_size=48)
    copied, fresh = copy_features(model, source, saved.name)
    assert fresh == ["logits (a new head for 3 classes)"]
    assert copied == [layer.name for layer in model.layers if layer.weights and layer.name != "logits"]
    for name in copied:
        for ours, theirs in zip(model.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert model.get_layer("logits").kernel.shape == (64, 3) != source.get_layer("logits").kernel.shape


@requires_tf
def test_init_from_a_saved_model_trains_and_records_it(ten_class_keras, tmp_path):
    from train.config import FINE_TUNE, TrainConfig
    from train.fit import fit

    saved = ten_class_keras
    data = write_own_classes(tmp_path / "d", "split", n_train=12, n_test=4)
    config = TrainConfig.for_model("tiny", init=str(saved), epochs=1, batch_size=12, seed=2)
    assert config.lr == FINE_TUNE["lr"]
    lines = []
    fit(config, out=tmp_path / "run", data=data, quiet=True, log=lines.append)
    said = [line for line in lines if line.startswith("init: ")]
    assert len(said) == 1 and said[0].startswith("init: copied ") and f"from {saved} (" in said[0]
    assert said[0].endswith("starting fresh: logits (a new head for 3 classes)")
    record = json.loads((tmp_path / "run" / "config.json").read_text())["init"]
    assert record["from"] == str(saved) and record["fresh"] == ["logits (a new head for 3 classes)"]
    assert "t0_conv" in record["copied"] and "logits" not in record["copied"]


@requires_tf
def test_init_refuses_another_architecture(tmp_path):
    import keras

    from runtime.errors import ModelError
    from train.models import Architecture, build_default, build_quick, build_tiny, copy_features

    quick = build_quick(num_classes=10)
    with pytest.raises(ModelError, match="shares no layer with a 'tiny' model"):
        copy_features(build_tiny(num_classes=3), quick, "quick.keras")
    wide = build_default(num_classes=3, architecture=Architecture("quick", widths=(48, 64, 64)))
    with pytest.raises(ModelError, match=r"its g0_conv1/kernel is \(3, 3, 24, 32\), this 'quick' model's is "
                                         r"\(3, 3, 24, 48\)"):
        copy_features(wide, quick, "quick.keras")
    keras.backend.clear_session()
