"""cifar-bench and runtime.bench.measure: options, output formats, bounds, accuracy on a generated
folder, the camera loop's stages, CPU flags, and one-line errors. Never the timings themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import CLASSES, loaded_by_import
from PIL import Image
from runtime_models import solid

from runtime.bench import measure as bench
from runtime.bench.measure import BenchConfig, measure_model, parse_batches
from runtime.bench.report import BenchResult, Timing, int8_speedup
from runtime.cli.bench import main
from runtime.cpu import cpu_features
from runtime.errors import DataError, OptionError
from runtime.image.inputs import labelled_images

FAST = BenchConfig(batches=(1, 4), runs=3, warmup=1, max_seconds=30)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def colours(tmp_path) -> Path:
    """test/ with red airplanes, a green automobile, a blue bird and a red "cat" (which the tiny
    model calls airplane): 4 of 5 right."""
    for name, rgb in (("airplane/0.png", (255, 0, 0)), ("airplane/1.png", (250, 0, 0)),
                      ("automobile/0.png", (0, 255, 0)), ("bird/0.png", (0, 0, 255)),
                      ("cat/0.png", (255, 0, 0))):
        path = tmp_path / "data" / "test" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(solid(rgb)).save(path)
    (tmp_path / "data" / "test" / "bird" / "notes.txt").write_text("not an image")
    return tmp_path / "data"


# -- options ------------------------------------------------------------------------------------

def test_parse_batches():
    assert parse_batches("1,32") == (1, 32)
    assert parse_batches("32, 1,1") == (1, 32)
    for bad in ("", "a", "0", "1,,32", "-1", "1.5"):
        with pytest.raises(OptionError, match="--batch"):
            parse_batches(bad)


def test_config_bounds():
    assert BenchConfig(batches=(32, 1, 32)).batches == (1, 32)
    for bad in ({"runs": 0}, {"max_seconds": 0}, {"batches": ()}, {"frames": 0}, {"threads": -1}):
        with pytest.raises(OptionError):
            BenchConfig(**bad)


# -- measurements (in this process) -------------------------------------------------------------

def test_runs_and_result_round_trip(tiny_model):
    result = measure_model(tiny_model, FAST)
    assert [(t.api, t.batch, t.runs) for t in result.timings] == [
        ("classifier", 1, 3), ("onnxruntime", 1, 3), ("classifier", 4, 3), ("onnxruntime", 4, 3)]
    assert all(0 < t.p50_ms <= t.p95_ms for t in result.timings)
    assert result.variant == "fp32" and result.file_mb > 0 and result.load_ms > 0
    assert not result.stopped_early and result.accuracy is None and result.camera is None
    assert BenchResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_max_seconds_stops_early_and_says_so(tiny_model):
    config = BenchConfig(batches=(1, 4), runs=1_000_000, warmup=0, max_seconds=0.05)
    result = measure_model(tiny_model, config)
    assert result.stopped_early
    assert sum(t.runs for t in result.timings) < 1_000_000
    assert len(result.notes) == 1 and result.notes[0].startswith("stopped at --max-seconds 0.05")


def test_accuracy_from_folder_names(tiny_model, colours):
    result = measure_model(tiny_model, BenchConfig(batches=(1, 2), runs=1, data=str(colours)))
    assert (result.accuracy, result.accuracy_images, result.accuracy_total) == (0.8, 5, 5)


def test_accuracy_on_the_train_layout(tiny_model, folder_dataset):
    result = measure_model(tiny_model, BenchConfig(runs=1, data=str(folder_dataset)))
    assert result.accuracy_images == result.accuracy_total == 20
    assert 0.0 <= result.accuracy <= 1.0


def test_labelled_images_and_a_balanced_order(colours):
    files = labelled_images(colours / "test", CLASSES)
    assert [(p.parent.name, label) for p, label in files] == [
        ("airplane", 0), ("airplane", 0), ("automobile", 1), ("bird", 2), ("cat", 3)]
    order = [label for _, label in bench._balanced_order(files)]
    assert order == [0, 1, 2, 3, 0]  # one of each class before a second of any


def test_data_errors(tmp_path, colours):
    with pytest.raises(DataError, match="no such folder"):
        bench.data_split(tmp_path / "nowhere")
    # DIR/<class>/ (cifar-train's other layout): its test split lives in the run, so say where.
    with pytest.raises(DataError, match=r"class folders but no test/ folder.*cifar-eval RUN/model.keras --data"):
        bench.data_split(colours / "test")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"no test/ folder inside \(expected .*loose/test/<class>/\*.jpg\)$"):
        bench.data_split(tmp_path / "loose")
    (colours / "test" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unicorn name no class of the model"):
        labelled_images(colours / "test", CLASSES)


def test_camera_stages(tiny_model, tmp_path):
    cv2 = pytest.importorskip("cv2")
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    for _ in range(8):
        writer.write(solid((0, 0, 255), (64, 48)))  # red, in BGR
    writer.release()
    result = measure_model(tiny_model, BenchConfig(runs=1, camera=str(clip), frames=5))
    assert result.camera.frames == 5 and result.camera.fps > 0
    assert set(result.camera.stage_ms) == set(bench.STAGES)
    assert all(ms > 0 for ms in result.camera.stage_ms.values())
    longer = measure_model(tiny_model, BenchConfig(runs=1, camera=str(clip), frames=20))
    assert longer.camera.frames == 8 and "source ended after 8 of 20 frames" in longer.notes[0]


# -- the CPU and INT8 -------------------------------------------------------------------------------

X86 = "processor\t: 0\nmodel\t\t: 143\nmodel name\t: Intel Xeon\nflags\t\t: sse avx2 fma {}\n"
PI = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid{}\n\nModel\t\t: Raspberry Pi {} Model B\n"


def test_int8_outlook_from_cpu_flags():
    vnni = cpu_features(X86.format("avx512f avx512_vnni"), "x86_64")
    assert vnni.model == "Intel Xeon" and vnni.int8_likely is True and "avx512_vnni" in vnni.int8_outlook()
    plain = cpu_features(X86.format(""), "AMD64")
    assert plain.arch == "x86_64" and plain.flags == ("avx2", "fma") and plain.int8_likely is False
    pi4 = cpu_features(PI.format("", 4), "aarch64")
    assert pi4.arch == "arm64" and pi4.model == "Raspberry Pi 4 Model B" and pi4.int8_likely is False
    pi5 = cpu_features(PI.format(" asimddp", 5), "aarch64")
    assert pi5.int8_likely is True and pi5.int8_flags == ("asimddp",)
    assert cpu_features("", "arm64").int8_likely is None
    zen4 = cpu_features(X86.format("avx512f avx512_vnni avx512_bf16 avx512_vpopcntdq"), "x86_64")
    assert zen4.flags == ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")  # bf16 named: training speed


def test_int8_speedup_pairs_fp32_with_int8():
    def result(variant, ms):
        timings = (Timing("classifier", 1, 3, ms, ms), Timing("onnxruntime", 1, 3, ms / 2, ms / 2),
                   Timing("classifier", 32, 3, 32 * ms, 32 * ms))
        return BenchResult(f"m-{variant}.onnx", variant, "cpu", 0, 1.0, 1.0, timings, None, None, True)

    assert int8_speedup((result("fp32", 2.0),), 1, 32) is None
    speedup = int8_speedup((result("int8", 0.5), result("fp32", 2.0)), 1, 32)
    assert (speedup.latency, speedup.onnxruntime, speedup.throughput) == (4.0, 4.0, 4.0)


# -- the command ----------------------------------------------------------------------------------

def test_json_output(tiny_model):
    r = run(tiny_model, "--json", "--runs", "2", "--batch", "1,8")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    machine = report["machine"]
    for key, kind in (("cpu_model", str), ("arch", str), ("cores", int), ("flags", list),
                      ("onnxruntime", str), ("provider", str), ("threads", int), ("int8_outlook", str)):
        assert isinstance(machine[key], kind), key
    assert report["config"]["batches"] == [1, 8] and report["int8_speedup"] is None
    [model] = report["models"]
    assert model["model"] == str(tiny_model) and model["isolated"] is True
    for key in ("file_mb", "load_ms"):
        assert isinstance(model[key], float)
    assert model["self_check"]["status"] == "passed" and model["self_check"]["images"] == 8
    assert model["peak_rss_mb"] is None or model["peak_rss_mb"] >= model["baseline_rss_mb"] > 0
    assert [(t["api"], t["batch"], t["runs"]) for t in model["timings"]] == [
        ("classifier", 1, 2), ("onnxruntime", 1, 2), ("classifier", 8, 2), ("onnxruntime", 8, 2)]
    assert all(isinstance(t["images_per_s"], float) for t in model["timings"])


def test_markdown_table_shape(tiny_model, tmp_path, colours):
    second = tmp_path / "copy.onnx"
    second.write_bytes(Path(tiny_model).read_bytes())
    r = run(tiny_model, second, "--markdown", "--runs", "1", "--data", colours)
    assert r.exit_code == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(rows) == 4 and rows[1].replace(" ", "").strip("|").split("|") == ["---"] * 10
    assert len({row.count("|") for row in rows}) == 1
    assert "| accuracy |" in rows[0] and "80.00%" in rows[2] and "copy.onnx" in rows[3]
    assert "| self-check |" in rows[0] and "| passed, " in rows[2]


def test_table_on_the_bundled_models(bundled_assets):
    r = run("--runs", "1")
    assert r.exit_code == 0, r.stderr
    assert "model-int8.onnx" in r.stdout and "INT8 on this CPU:" in r.stdout
    assert r.stderr.splitlines() == [f"cifar-bench: [1/1] {bundled_assets / 'model-int8.onnx'}"]


@pytest.mark.parametrize("args, code, message", [
    (["missing.onnx"], 1, "missing.onnx: no such model file"),
    (["{junk}"], 1, "not an ONNX model"),
    (["{model}", "--data", "nowhere"], 1, "--data nowhere: no such folder"),
    (["{model}", "--batch", "1,x"], 2, "--batch '1,x'"),
    (["{model}", "--frames", "5"], 2, "--frames needs --camera"),
])
def test_errors_are_one_line(tiny_model, tmp_path, args, code, message):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    r = run(*[a.format(model=tiny_model, junk=junk) for a in args])
    lines = [line for line in r.stderr.splitlines() if not line.startswith("cifar-bench: [")]
    assert r.exit_code == code and len(lines) == 1 and message in lines[0], r.stderr


def test_importing_bench_loads_nothing_heavy():
    assert loaded_by_import("import runtime.bench.measure, runtime.cli.bench",
                            ("onnxruntime", "cv2", "tensorflow", "onnx")) == []


def test_cpu_flags_are_every_flag_the_cpu_reports():
    from runtime.cpu import cpu_flags

    assert cpu_flags(X86.format("avx512_bf16 amx_bf16")) == {"sse", "avx2", "fma", "avx512_bf16", "amx_bf16"}
    assert "asimddp" in cpu_flags(PI.format(" asimddp", 5)) and "Raspberry" not in cpu_flags(PI.format("", 4))
    assert cpu_flags("") == set()
