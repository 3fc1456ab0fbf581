"""Bring your own Keras model: what a tutorial produces exports, with its preprocessing baked in.

Sequential and functional, .keras and legacy .h5, pixels scaled outside the model (declared with
--pixels / --mean / --std, checked against the data), any class count (--classes), a dynamic
input (--input-size), custom layers (--custom-objects) and Lambda layers
(--unsafe-deserialization). Small models, a few training steps or weights set by hand.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    CLASSES,
    REAL_DATA,
    make_images,
    one_error_line,
    requires_real_data,
    requires_tf,
    write_folder_dataset,
)

pytestmark = [requires_tf, pytest.mark.tf]

# The class colours of helpers.make_images(n, seed=1): those of write_folder_dataset's test split.
TEST_PALETTE = np.random.default_rng(1).integers(0, 256, (10, 3)).astype(np.float32)


def run_export(*args):
    from export.cli import main

    return CliRunner().invoke(main, [*map(str, args), "-q"])


def one_line(result, code: int) -> str:
    """The one stderr line of a failed command, without its prefix."""
    assert "Traceback" not in result.output
    return one_error_line(result, "cifar-export", code=code)


def tutorial_layers(keras, softmax: bool = False):
    """The Keras CIFAR-10 tutorial's network (narrower): convolutions and dense layers that
    carry their ReLU, logits out (or a softmax)."""
    L = keras.layers
    return [L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(16, 3, activation="relu"),
            L.MaxPooling2D(), L.Conv2D(16, 3, activation="relu"), L.Flatten(), L.Dense(16, activation="relu"),
            L.Dense(10, activation="softmax" if softmax else None)]


def trained(model, scale=lambda x: x / 255.0, steps: int = 4):
    """A few steps of training on generated images, scaled outside the model as a tutorial does."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = make_images(64)
    logits = model.layers[-1].get_config().get("activation") != "softmax"
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=logits))
    model.fit(scale(x.astype("float32")), y, batch_size=16, epochs=1, steps_per_epoch=steps, verbose=0)
    return model


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """The tutorial's Sequential, trained on x / 255, saved as model.keras and model.h5."""
    import keras

    model = trained(keras.Sequential([keras.Input((32, 32, 3)), *tutorial_layers(keras)]))
    folder = tmp_path_factory.mktemp("tutorial")
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    return folder


def raw_images(n: int = 16, size: int = 32) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def onnx_outputs(path, batch_nhwc):
    from export.parity import onnx_predictor

    return onnx_predictor(path)(batch_nhwc)


def keras_outputs(path, batch_nhwc, **load):
    from train.loading import load_keras_model

    return np.asarray(load_keras_model(path, **load).predict(batch_nhwc, verbose=0))


def provenance(path) -> dict:
    from export import read_metadata

    return read_metadata(path)["cifar_edge.provenance"]


# --- Sequential, .h5 and the declared pixels ------------------------------------------------

@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_a_tutorial_sequential_exports_with_its_pixels_baked_in(tutorial, tmp_path, name):
    """tf2onnx alone fails on a Keras 3 Sequential (KeyError) and .h5 was "not a Keras model";
    with --pixels 0-1 the ONNX file on raw pixels computes what Keras does on x / 255."""
    out = tmp_path / "m.onnx"
    result = run_export(tutorial / name, "-o", out, "--pixels", "0-1")
    assert result.exit_code == 0, result.output
    x = raw_images()
    np.testing.assert_allclose(onnx_outputs(out, x), keras_outputs(tutorial / name, x / 255.0), atol=1e-4)
    prov = provenance(out)
    assert prov["preprocessing"]["pixels"] == "0-1" and prov["preprocessing"]["source"] == "declared"
    assert len(prov["folded"]) == 1 and re.fullmatch(r"folded declared_preprocessing into conv2d(_\d+)?",
                                                     prov["folded"][0])  # the /255 went into the first conv
    report = json.loads(out.with_suffix(".parity.json").read_text())
    assert report["passed"] and report["preprocessing"]["baked_in"]


def test_cifar_parity_feeds_a_keras_reference_as_the_export_declared(tutorial, tmp_path):
    from export import ExportConfig, Preprocessing, check_parity, export_model

    out = tmp_path / "m.onnx"
    assert export_model(tutorial / "model.h5", ExportConfig(preprocessing=Preprocessing("0-1"), quiet=True),
                        output=out, log=None).passed
    report = check_parity(tutorial / "model.h5", [out], quiet=True)
    assert report.passed, report.table()
    assert "model.h5 is fed pixels as 0-1, as the candidates' export declared (baked into them)" in report.notes


def test_a_model_ending_in_logits_is_compared_in_probabilities_and_not_calibrated(tutorial, tmp_path):
    """Fed 0-255 the x/255 model's logits run into the hundreds; their float rounding must not fail parity."""
    from export import ExportConfig, export_model, read_metadata

    result = export_model(tutorial / "model.keras", ExportConfig(quiet=True), output=tmp_path / "m.onnx", log=None)
    assert result.passed and result.report.entries[0].max_abs_diff < 1e-4
    assert read_metadata(tmp_path / "m.onnx")["cifar_edge.output"] == "logits"
    assert "not calibrated: the model ends in logits, with no Softmax for a temperature to go before; " \
           "probabilities are the network's own" in result.report.notes
    message = one_line(run_export(tutorial / "model.keras", "-o", tmp_path / "f.onnx", "--tta", "flip"), 2)
    assert message.endswith("this model ends in logits: export it without --tta")


def test_the_same_layers_built_functionally_export_alike(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = inputs
    for layer in tutorial_layers(keras, softmax=True):
        x = layer(x)
    path = tmp_path / "functional.keras"
    trained(keras.Model(inputs, x)).save(path)
    result = run_export(path, "-o", tmp_path / "f.onnx", "--pixels", "0-1")
    assert result.exit_code == 0, result.output
    x = raw_images()
    np.testing.assert_allclose(onnx_outputs(tmp_path / "f.onnx", x), keras_outputs(path, x / 255.0), atol=1e-5)


def test_mean_and_std_are_applied_after_the_pixel_scaling(tmp_path):
    import keras

    mean, std = np.array([0.49, 0.48, 0.45]), np.array([0.25, 0.24, 0.26])
    path = tmp_path / "m.keras"
    trained(keras.Sequential([keras.Input((32, 32, 3)), *tutorial_layers(keras)]),
            scale=lambda x: (x / 255.0 - mean) / std).save(path)
    out = tmp_path / "m.onnx"
    result = run_export(path, "-o", out, "--pixels", "0-1", "--mean", "0.49,0.48,0.45", "--std", "0.25,0.24,0.26")
    assert result.exit_code == 0, result.output
    x = raw_images()
    np.testing.assert_allclose(onnx_outputs(out, x), keras_outputs(path, (x / 255.0 - mean) / std), atol=1e-4)
    declared = provenance(out)["preprocessing"]
    assert (declared["pixels"], declared["mean"], declared["std"]) == ("0-1", [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


def test_minus_one_to_one_and_the_library_api(tmp_path):
    import keras

    from export import ExportConfig, Preprocessing, export_model

    path = tmp_path / "m.keras"
    trained(keras.Sequential([keras.Input((32, 32, 3)), *tutorial_layers(keras)]),
            scale=lambda x: x / 127.5 - 1).save(path)
    result = export_model(path, ExportConfig(preprocessing=Preprocessing("-1-1"), quiet=True),
                          output=tmp_path / "m.onnx", log=None)
    assert result.passed
    x = raw_images()
    np.testing.assert_allclose(onnx_outputs(tmp_path / "m.onnx", x), keras_outputs(path, x / 127.5 - 1), atol=1e-4)


@pytest.mark.parametrize("args, fragment", [
    (["--mean", "0.5,0.5"], "--mean '0.5,0.5': expected three numbers"),
    (["--std", "0.2,0,0.2"], "each > 0"),
    (["--mean", "a,b,c"], "--mean"),
])
def test_a_malformed_mean_or_std_is_one_line(tutorial, tmp_path, args, fragment):
    message = one_line(run_export(tutorial / "model.keras", "-o", tmp_path / "m.onnx", *args), 2)
    assert fragment in message


# --- no silent wrong answer: the check against the data --------------------------------------

def centroid_model(path, expects):
    """A classifier right only when fed pixels as ``expects`` (a Preprocessing): the nearest class
    colour in that space, as weights set by hand (logits 2·c·x - |c|² on the mean colour)."""
    import keras

    centroids = expects.apply(TEST_PALETTE[:, None, None, :]).reshape(10, 3).astype(np.float64)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10, activation="softmax")])
    model.layers[-1].set_weights([(2 * centroids).T.astype(np.float32), -(centroids ** 2).sum(1).astype(np.float32)])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def palette_data(tmp_path_factory):
    """CIFAR-10's class folders, each class one colour under noise (helpers.make_images)."""
    return write_folder_dataset(tmp_path_factory.mktemp("palette") / "data", n_train=10, n_test=200)


@pytest.mark.parametrize("expects, flags", [
    ("0-1", ["--pixels", "0-1"]),
    ("-1-1", ["--pixels", "-1-1"]),
    ("cifar", ["--pixels", "0-1", "--mean", "0.4914,0.4822,0.4465", "--std", "0.247,0.2435,0.2616"]),
])
def test_a_wrong_declaration_stops_before_writing_and_names_the_fix(palette_data, tmp_path, expects, flags):
    from export.preprocessing import CIFAR10_NORMALIZED, Preprocessing

    model = centroid_model(tmp_path / "m.keras", CIFAR10_NORMALIZED if expects == "cifar" else Preprocessing(expects))
    message = one_line(run_export(model, "--data", palette_data), 1)
    assert message.startswith(f"{model}: this model scores 100.0% ")
    assert "as assumed without --pixels (0-255) on 200 test images" in message
    assert message.endswith(f"pass {' '.join(flags)}")
    assert not list(tmp_path.glob("m.*.json")) and not list(tmp_path.glob("*.onnx"))  # nothing written
    result = run_export(model, "--data", palette_data, *flags)  # as the line says: it passes
    assert result.exit_code == 0, result.output
    check = json.loads((tmp_path / "m.parity.json").read_text())["preprocessing"]["check"]
    assert check["images"] == 200 and max(check["accuracy"].values()) == next(iter(check["accuracy"].values()))


def test_the_check_runs_on_the_declaration_too_and_can_be_overridden(palette_data, tmp_path):
    from export.preprocessing import Preprocessing

    model = centroid_model(tmp_path / "m.keras", Preprocessing("0-1"))
    message = one_line(run_export(model, "--data", palette_data, "--pixels", "-1-1"), 1)
    assert "when pixels are scaled to 0-1 and " in message and "as declared (-1-1)" in message
    result = run_export(model, "--data", palette_data, "--pixels", "-1-1", "--no-pixel-check")
    assert result.exit_code == 0, result.output
    assert "(not stopped: --no-pixel-check)" in result.stdout


def test_without_data_the_assumption_is_said_on_stderr_and_in_the_report(tutorial, tmp_path):
    from export.cli import main

    result = CliRunner().invoke(main, [str(tutorial / "model.keras"), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "assumed" in line]
    assert said == ["export: assumed the model takes 0-255 pixels; pass --pixels 0-1 if it was trained on x/255 "
                    "(or --pixels -1-1, --mean, --std), or --data to check"]
    report = json.loads((tmp_path / "m.parity.json").read_text())
    assert report["preprocessing"]["source"] == "assumed" and said[0].removeprefix("export: ") in report["notes"]


def test_a_rescaling_first_layer_is_recognised_and_folded(palette_data, tmp_path):
    import keras

    L = keras.layers
    path = tmp_path / "m.keras"
    augment = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1)], name="augment")  # as tutorials do
    trained(keras.Sequential([keras.Input((32, 32, 3)), augment, L.Rescaling(1 / 255.0), *tutorial_layers(keras)]),
            scale=lambda x: x).save(path)
    result = run_export(path, "-o", tmp_path / "m.onnx")  # no --data: no assumption to state
    assert result.exit_code == 0, result.output
    assert "assumed" not in result.output
    prov = provenance(tmp_path / "m.onnx")
    assert prov["preprocessing"]["source"] == "model" and prov["preprocessing"]["scaling_layer"].endswith("(Rescaling)")
    assert prov["preprocessing"]["baked_in"] is False
    assert any(re.fullmatch(r"folded rescaling(_\d+)? into conv2d(_\d+)?", step) for step in prov["folded"])
    x = raw_images()
    np.testing.assert_allclose(onnx_outputs(tmp_path / "m.onnx", x), keras_outputs(path, x), atol=1e-5)


def test_cifar_train_models_are_recognised_as_scaling_inside(tiny_keras, small_data, tmp_path):
    from export import ExportConfig, export_model

    result = export_model(tiny_keras, ExportConfig(quiet=True), output=tmp_path / "m.onnx", data=small_data, log=None)
    assert result.passed and result.report.preprocessing["source"] == "model"
    assert result.report.preprocessing["scaling_layer"] == "normalize (Normalization)"
    assert not any("assumed" in note for note in result.report.notes)


# --- class names, input size, custom layers, Lambda --------------------------------------------

@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    import keras

    path = tmp_path_factory.mktemp("three") / "m.keras"
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.save(path)
    return path


def test_other_class_counts_need_classes_and_the_error_says_so(three_classes, tmp_path):
    message = one_line(run_export(three_classes, "-o", tmp_path / "m.onnx"), 1)
    assert "model output is (3,)" in message and message.endswith(
        "pass --classes a,b,c or --classes FILE (one name per line), in output order")


@pytest.mark.parametrize("form", ["list", "file"])
def test_classes_as_a_list_or_a_file(three_classes, tmp_path, form):
    from export import read_metadata

    names = ["parcel", "cat", "empty"]
    value = ",".join(names)
    if form == "file":
        value = tmp_path / "classes.txt"
        value.write_text("parcel\ncat\n\nempty\n")
    result = run_export(three_classes, "-o", tmp_path / "m.onnx", "--classes", value)
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "m.onnx")["cifar_edge.class_names"] == names


@pytest.mark.parametrize("value, fragment", [
    ("a,b", "--classes names 2 classes (a, b) but the model outputs 3 scores: pass one name per output"),
    ("a,b,a", "a named twice"),
    ("a,,b", "an empty class name"),
])
def test_a_bad_classes_value_is_one_line(three_classes, tmp_path, value, fragment):
    assert fragment in one_line(run_export(three_classes, "-o", tmp_path / "m.onnx", "--classes", value), 2)


def test_data_whose_classes_are_not_the_models_is_refused(three_classes, small_data, tmp_path):
    message = one_line(run_export(three_classes, "-o", tmp_path / "m.onnx", "--classes", "a,b,c", "--data",
                                  small_data), 1)
    assert message.startswith("the --data classes are (airplane, automobile,") and "--classes" in message


def test_a_dynamic_input_needs_input_size(tmp_path):
    import keras

    L = keras.layers
    path = tmp_path / "dynamic.keras"
    keras.Sequential([keras.Input((None, None, 3)), L.Rescaling(1 / 255.0), L.Conv2D(4, 3, activation="relu"),
                      L.GlobalAveragePooling2D(), L.Dense(10)]).save(path)
    message = one_line(run_export(path, "-o", tmp_path / "m.onnx"), 1)
    assert "model input is (None, None, 3), any size: pass --input-size N" in message
    result = run_export(path, "-o", tmp_path / "m.onnx", "--input-size", "40")
    assert result.exit_code == 0, result.output
    from runtime.model.session import create_session

    assert create_session(tmp_path / "m.onnx").get_inputs()[0].shape == ["batch", 40, 40, 3]
    x = raw_images(size=40)
    np.testing.assert_allclose(onnx_outputs(tmp_path / "m.onnx", x), keras_outputs(path, x), atol=1e-5)


def test_input_size_on_a_fixed_input_is_refused(tutorial, tmp_path):
    message = one_line(run_export(tutorial / "model.keras", "-o", tmp_path / "m.onnx", "--input-size", "48"), 2)
    assert message.startswith("--input-size 48: the model's input is fixed at (32, 32, 3)")


CUSTOM_LAYERS = '''
import keras


@keras.saving.register_keras_serializable(package="byo_test")
class Brighten(keras.layers.Layer):
    def call(self, x):
        return x * 0.5 + 10.0


class Unregistered(keras.layers.Layer):
    def call(self, x):
        return x - 1.0
'''


def test_custom_layers_need_their_code_and_get_it_from_custom_objects(tmp_path):
    import keras

    from train.loading import import_custom_objects

    code = tmp_path / "my_layers.py"
    code.write_text(CUSTOM_LAYERS)
    layers = import_custom_objects(code)
    path = tmp_path / "custom.keras"
    keras.Sequential([keras.Input((32, 32, 3)), layers["Brighten"](), layers["Unregistered"](),
                      *tutorial_layers(keras)]).save(path)
    keras.saving.get_custom_objects().pop("byo_test>Brighten")  # as in a fresh process

    message = one_line(run_export(path, "-o", tmp_path / "m.onnx"), 1)
    assert message == (f"{path}: the model uses layers Keras does not know (Unregistered, byo_test>Brighten): "
                       "pass --custom-objects FILE.py, a Python file that defines them (classes decorated with "
                       "@keras.saving.register_keras_serializable, or a dict named custom_objects)")
    result = run_export(path, "-o", tmp_path / "m.onnx", "--custom-objects", code)
    assert result.exit_code == 0, result.output
    x = raw_images()
    np.testing.assert_allclose(onnx_outputs(tmp_path / "m.onnx", x), keras_outputs(path, x, custom_objects=code),
                               atol=1e-4)


def test_custom_objects_that_do_not_define_the_layer_or_fail_to_import(tmp_path):
    import keras

    from train.loading import import_custom_objects

    code = tmp_path / "my_layers.py"
    code.write_text(CUSTOM_LAYERS)
    path = tmp_path / "custom.keras"
    keras.Sequential([keras.Input((32, 32, 3)), import_custom_objects(code)["Unregistered"](), keras.layers.Flatten(),
                      keras.layers.Dense(10)]).save(path)
    other = tmp_path / "other.py"
    other.write_text("X = 1\n")
    message = one_line(run_export(path, "-o", tmp_path / "m.onnx", "--custom-objects", other), 1)
    assert message.startswith(f"{path}: --custom-objects {other} does not define Unregistered")
    broken = tmp_path / "broken.py"
    broken.write_text("import keras\nraise RuntimeError('half-finished file')\n")
    message = one_line(run_export(path, "-o", tmp_path / "m.onnx", "--custom-objects", broken), 1)
    assert message == f"--custom-objects {broken}: importing it failed (RuntimeError: half-finished file)"
    assert "no such file" in one_line(run_export(path, "--custom-objects", tmp_path / "none.py"), 2)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_lambda_needs_unsafe_deserialization_and_the_message_is_whole(tmp_path, suffix):
    import keras

    L = keras.layers
    path = tmp_path / f"lambda{suffix}"
    keras.Sequential([keras.Input((32, 32, 3)), L.Lambda(lambda x: x / 255.0, name="scale"),
                      *tutorial_layers(keras)]).save(path)
    message = one_line(run_export(path, "-o", tmp_path / "m.onnx"), 1)
    assert message == (f"{path}: the model has Lambda layers (scale), whose Python code Keras runs only from "
                       "a file you trust: if you trust this one, pass --unsafe-deserialization")
    result = run_export(path, "-o", tmp_path / "m.onnx", "--unsafe-deserialization")
    assert result.exit_code == 0, result.output
    x = raw_images()
    np.testing.assert_allclose(onnx_outputs(tmp_path / "m.onnx", x),
                               keras_outputs(path, x, safe_mode=False), atol=1e-4)


def test_an_h5_of_weights_only_is_one_line(tutorial, tmp_path):
    from train.loading import load_keras_model

    path = tmp_path / "weights.h5"
    load_keras_model(tutorial / "model.h5").save_weights(tmp_path / "w.weights.h5")
    (tmp_path / "w.weights.h5").rename(path)
    assert "an HDF5 file of weights only" in one_line(run_export(path, "-o", tmp_path / "m.onnx"), 1)


# --- the real thing, by hand-sized numbers ------------------------------------------------------

@pytest.mark.slow
@requires_real_data
def test_the_tutorial_on_real_cifar10_stops_without_pixels_and_passes_with_them(tmp_path):
    """1 epoch on 5,000 real training images is enough for 0-1 to beat 0-255 clearly."""
    import keras
    from PIL import Image

    files = [(f, label) for label, name in enumerate(CLASSES)
             for f in sorted((REAL_DATA / "train" / name).iterdir())[:500]]
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files]).astype("float32")
    y = np.array([label for _, label in files])
    model = keras.Sequential([keras.Input((32, 32, 3)), *tutorial_layers(keras)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    keras.utils.set_random_seed(0)
    model.fit(x / 255.0, y, batch_size=32, epochs=2, shuffle=True, verbose=0)
    model.save(tmp_path / "model.h5")
    message = one_line(run_export(tmp_path / "model.h5", "--data", REAL_DATA), 1)
    assert "when pixels are scaled to 0-1" in message and message.endswith("pass --pixels 0-1")
    result = run_export(tmp_path / "model.h5", "--data", REAL_DATA, "--pixels", "0-1")
    assert result.exit_code == 0, result.output
