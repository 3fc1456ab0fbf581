"""runtime.model.session (the one onnxruntime session factory) and runtime.model.contract.ModelMetadata
(the one metadata reader): their messages, on the command line and from Python."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import one_error_line
from runtime_models import metadata, solid

from runtime.cli.run import main
from runtime.errors import ModelError, ProviderError
from runtime.model.contract import (
    CIFAR10_CLASSES,
    HOW_TO_EXPORT,
    KEY_CLASS_NAMES,
    KEY_INPUT,
    KEY_PROVENANCE,
    InputContract,
    ModelMetadata,
)
from runtime.model.session import IN_MEMORY, create_session, model_metadata


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.fromarray(solid((255, 0, 0))).save(path)
    return path


# -- messages on the command line ----------------------------------------------------------

def test_keras_model_says_to_export_it(tmp_path, image):
    keras_file = tmp_path / "x.keras"
    keras_file.write_bytes(b"PK\x03\x04 a zip archive, as .keras files are")
    line = one_error_line(run(image, "--model", keras_file))
    assert line == (f"{keras_file}: this is a Keras model: export it with "
                    f"`cifar-export {keras_file}` and run the .onnx")


def test_other_non_onnx_file_is_named_as_such(tmp_path, image):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("hello, not a model")
    line = one_error_line(run(image, "--model", not_onnx))
    assert line.startswith(f"{not_onnx}: onnxruntime cannot load it: not an ONNX model")
    assert "cifar-export" in line


def test_image_passed_as_model(image):
    line = one_error_line(run(image, "--model", image))
    assert line.startswith(f"{image}: onnxruntime cannot load it: not an ONNX model")


def test_missing_model_file(tmp_path, image):
    assert one_error_line(run(image, "--model", tmp_path / "nope.onnx")) == \
        f"{tmp_path / 'nope.onnx'}: no such model file"


def test_model_without_metadata(no_metadata_model, image):
    line = one_error_line(run(image, "--model", no_metadata_model))
    assert line == (f"{no_metadata_model} has no cifar-edge metadata (missing cifar_edge.format, "
                    f"cifar_edge.class_names, cifar_edge.input); {HOW_TO_EXPORT}")


# -- create_session from Python ------------------------------------------------------------

def test_path_bytes_and_proto_like_load_the_same_model(tiny_model):
    class ProtoLike:  # what export passes: an onnx ModelProto, duck-typed
        def SerializeToString(self):
            return tiny_model.read_bytes()

    for model in (tiny_model, str(tiny_model), tiny_model.read_bytes(), ProtoLike()):
        session = create_session(model)
        assert session.get_providers() == ["CPUExecutionProvider"]
        assert [i.name for i in session.get_inputs()] == ["image_rgb"]


def test_bad_bytes_name_the_in_memory_model():
    with pytest.raises(ModelError, match=f"^{IN_MEMORY}: onnxruntime cannot load it: not an ONNX"):
        create_session(b"garbage")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="is a directory, not a model file"):
        create_session(tmp_path)


def test_threads_are_set_and_checked(tiny_model):
    assert create_session(tiny_model, threads=2).get_session_options().intra_op_num_threads == 2
    with pytest.raises(ModelError, match="threads must be >= 0, got -1"):
        create_session(tiny_model, threads=-1)


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_no_silent_fallback_to_the_cpu(tiny_model, monkeypatch):
    """onnxruntime runs on the CPU when the first provider cannot start; we refuse."""
    import runtime.model.session

    monkeypatch.setattr(runtime.model.session, "resolve",
                        lambda name: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="'cuda' failed to initialise .*fell back to cpu"):
        create_session(tiny_model, provider="cuda")


# -- the metadata reader -------------------------------------------------------------------

def test_model_metadata_of_a_session(tiny_model):
    meta = model_metadata(create_session(tiny_model), tiny_model)
    assert meta.class_names == CIFAR10_CLASSES and meta.contract == InputContract()
    assert (meta.output_kind, meta.variant, meta.source) == ("probabilities", "fp32", str(tiny_model))
    decoded = meta.decoded()
    assert decoded[KEY_CLASS_NAMES] == list(CIFAR10_CLASSES)
    assert decoded[KEY_PROVENANCE] == {"source": "tests/runtime_models.py"}


def test_model_metadata_defaults_and_errors():
    meta = ModelMetadata.from_map({k: v for k, v in metadata().items()
                                   if k not in ("cifar_edge.output", "cifar_edge.variant")}, "m.onnx")
    assert (meta.output_kind, meta.variant) == ("probabilities", "unknown")
    with pytest.raises(ModelError, match=r"^m.onnx has no cifar-edge metadata \(missing cifar_edge.input\)"):
        ModelMetadata.from_map({k: v for k, v in metadata().items() if k != KEY_INPUT}, "m.onnx")
    with pytest.raises(ModelError, match=r"^m.onnx: unreadable cifar-edge metadata .*cifar-export"):
        ModelMetadata.from_map({**metadata(), KEY_CLASS_NAMES: "[not json"}, "m.onnx")
    broken = ModelMetadata.from_map({**metadata(), KEY_PROVENANCE: "{oops"}, "m.onnx")
    with pytest.raises(ModelError, match=r"^m.onnx: unreadable cifar-edge metadata \(cifar_edge.provenance"):
        broken.decoded()
