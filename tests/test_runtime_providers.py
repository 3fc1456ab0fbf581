"""The GPU providers without a GPU: TensorRT's engine cache, FP16 and INT8 options, CUDA's
options, the first-build announcement, and no silent fallback. onnxruntime's
InferenceSession is replaced by a stand-in that records what it was given, runs the model on
the CPU, and says it used whatever the test wants it to have used."""

from __future__ import annotations

import hashlib
import shutil

import onnxruntime as ort
import pytest
from click.testing import CliRunner
from helpers import one_error_line

from runtime.cli.run import main
from runtime.errors import ProviderError
from runtime.model.bundled import PACKAGE_ASSETS
from runtime.model.providers import CUDA_OPTIONS, JETSON_INDEX, JETSON_ZOO, gpu_install_hint, resolve
from runtime.model.session import create_session

JETSON = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class GpuBuild:
    """What the stand-in onnxruntime was asked for, and what it claims to have used."""

    def __init__(self):
        self.calls: list[list[tuple[str, dict]]] = []  # the providers= of each session
        self.used: list[str] | None = None  # None: every provider it was asked for

    def options(self, name: str) -> dict:
        return dict(self.calls[-1])[name]


@pytest.fixture
def gpu(monkeypatch) -> GpuBuild:
    build = GpuBuild()
    cpu_session = ort.InferenceSession

    class StandIn:
        def __init__(self, model, sess_options=None, providers=None):
            build.calls.append(list(providers))
            self._asked = [name for name, _ in providers]
            self._cpu = cpu_session(model, sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return build.used or self._asked

        def __getattr__(self, name):
            return getattr(self._cpu, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(JETSON))
    monkeypatch.setattr(ort, "InferenceSession", StandIn)
    return build


def engine_folder(tmp_path, model, precision: str):
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    root = tmp_path / "cache" / "tensorrt" / f"onnxruntime-{ort.__version__}"  # CIFAR_EDGE_CACHE: conftest
    return root, root / f"{model.stem}-{digest}-{precision}"


# -- the options onnxruntime gets ---------------------------------------------------------------

def test_tensorrt_gets_an_engine_cache_of_its_own_and_fp16(gpu, tiny_model, tmp_path):
    create_session(tiny_model, "tensorrt", log=lambda line: None)
    root, folder = engine_folder(tmp_path, tiny_model, "fp16")
    assert [name for name, _ in gpu.calls[-1]] == JETSON  # TensorRT, CUDA for the rest, CPU
    assert gpu.options("TensorrtExecutionProvider") == {
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(root),
        "trt_fp16_enable": True, "trt_int8_enable": False}
    assert folder.is_dir()
    assert gpu.options("CUDAExecutionProvider") == CUDA_OPTIONS
    assert gpu.options("CPUExecutionProvider") == {}


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_fp16_off(gpu, tiny_model, tmp_path, monkeypatch, value):
    monkeypatch.setenv("CIFAR_EDGE_TRT_FP16", value)
    create_session(tiny_model, "tensorrt", log=lambda line: None)
    options = gpu.options("TensorrtExecutionProvider")
    assert options["trt_fp16_enable"] is False
    assert options["trt_engine_cache_path"] == str(engine_folder(tmp_path, tiny_model, "fp32")[1])


def test_bad_fp16_value_is_an_error(gpu, tiny_model, monkeypatch):
    monkeypatch.setenv("CIFAR_EDGE_TRT_FP16", "maybe")
    with pytest.raises(ProviderError, match=r"^CIFAR_EDGE_TRT_FP16='maybe': expected 1 .* or 0"):
        create_session(tiny_model, "tensorrt", log=lambda line: None)


def test_a_quantized_model_is_built_with_int8(gpu, tmp_path):
    """TensorRT refuses a QDQ model unless INT8 is on; the FP32 model does not need it."""
    int8, fp32 = PACKAGE_ASSETS / "model-int8.onnx", PACKAGE_ASSETS / "model.onnx"
    create_session(int8, "tensorrt", log=lambda line: None)
    options = gpu.options("TensorrtExecutionProvider")
    assert options["trt_int8_enable"] is True and options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_path"] == str(engine_folder(tmp_path, int8, "int8-fp16")[1])
    create_session(fp32, "tensorrt", log=lambda line: None)
    assert gpu.options("TensorrtExecutionProvider")["trt_int8_enable"] is False


def test_models_with_the_same_name_never_share_engines(gpu, tiny_model, no_metadata_model, tmp_path):
    """onnxruntime names engines by model path and graph, not weights: the folder has the hash."""
    first, second, again = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx", tmp_path / "c" / "model.onnx"
    for source, target in ((tiny_model, first), (no_metadata_model, second), (tiny_model, again)):
        target.parent.mkdir()
        shutil.copy(source, target)
    folders = []
    for model in (first, second, again):
        create_session(model, "tensorrt", log=lambda line: None)
        folders.append(gpu.options("TensorrtExecutionProvider")["trt_engine_cache_path"])
    assert folders[0] != folders[1] and folders[0] == folders[2]


def test_cuda_gets_its_options_and_no_engine_cache(gpu, tiny_model, tmp_path):
    create_session(tiny_model, "cuda")
    assert gpu.calls[-1] == [("CUDAExecutionProvider", CUDA_OPTIONS), ("CPUExecutionProvider", {})]
    assert not (tmp_path / "cache").exists()


def test_auto_prefers_tensorrt_on_a_jetson(gpu):
    assert resolve("auto") == JETSON


# -- the first build is announced ----------------------------------------------------------------

def test_first_build_announced_only_while_the_cache_is_empty(gpu, tiny_model, tmp_path):
    lines: list[str] = []
    create_session(tiny_model, "tensorrt", log=lines.append)
    _, folder = engine_folder(tmp_path, tiny_model, "fp16")
    assert len(lines) == 1
    assert lines[0] == (f"TensorRT builds an engine for {tiny_model} (fp16) on its first run, which "
                        f"can take minutes on a Jetson; it is cached in {folder} for the next runs")
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_1_0_fp16_sm87.engine").write_bytes(b"engine")
    create_session(tiny_model, "tensorrt", log=lines.append)
    assert len(lines) == 1


def test_cifar_run_announces_the_build_on_stderr(gpu, tiny_model):
    result = CliRunner().invoke(main, ["--model", str(tiny_model), "--provider", "tensorrt"])
    assert result.exit_code == 0, result.output
    assert "cat.jpg" in result.stdout  # the bundled samples
    announced = [line for line in result.stderr.splitlines() if "TensorRT builds an engine" in line]
    assert len(announced) == 1 and "minutes" in announced[0]


# -- no silent fallback, and how to get the providers ----------------------------------------------

def test_tensorrt_that_falls_back_is_an_error(gpu, tiny_model):
    gpu.used = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ProviderError, match=r"'tensorrt' failed to initialise .*fell back to cuda, cpu\)$"):
        create_session(tiny_model, "tensorrt", log=lambda line: None)


def test_fallback_is_one_line_from_cifar_run(gpu, tiny_model):
    gpu.used = ["CPUExecutionProvider"]
    result = CliRunner().invoke(main, ["--model", str(tiny_model), "--provider", "cuda"])
    line = one_error_line(result)
    assert line == f"execution provider 'cuda' failed to initialise for {tiny_model} (onnxruntime fell back to cpu)"


@pytest.mark.parametrize("provider", ["tensorrt", "cuda"])
def test_missing_gpu_provider_says_how_to_install_it(tiny_model, monkeypatch, provider):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    result = CliRunner().invoke(main, ["--model", str(tiny_model), "--provider", provider])
    line = one_error_line(result)
    assert line.startswith(f"execution provider '{provider}' is not available in this onnxruntime "
                           "build; available: cpu; install NVIDIA's onnxruntime-gpu: on a Jetson with JetPack 6")
    assert f"pip install onnxruntime-gpu --index-url {JETSON_INDEX}" in line
    assert "pip uninstall onnxruntime" in line and "docs/jetson.md" in line


def test_install_hint_by_jetpack():
    assert JETSON_INDEX in gpu_install_hint((36, 4))
    for older_or_newer in ((35, 4), (36, 3), (38, 2)):
        hint = gpu_install_hint(older_or_newer)
        assert JETSON_INDEX not in hint and JETSON_ZOO in hint
        assert f"L4T R{older_or_newer[0]}.{older_or_newer[1]}" in hint
