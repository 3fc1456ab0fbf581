"""cifar-doctor: each check against stand-ins (a Raspberry Pi's and a Jetson's files, /proc
texts, fake cv2 and picamera2 modules, broken imports), the report and its JSON, exit codes,
and the real run on this machine. Runs in the base-only environment: nothing here needs
OpenCV, picamera2 or TensorFlow."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner
from PIL import Image
from runtime_models import solid

from runtime import doctor
from runtime.cli.doctor import main
from runtime.cpu import CpuInfo, cpu_features
from runtime.doctor import NOTE, OK, PROBLEM, Board, Check
from runtime.model.providers import JETSON_INDEX

LAPTOP = Board("Debian GNU/Linux 12 (bookworm)", None, None)
PI4 = Board("Debian GNU/Linux 12 (bookworm)", "Raspberry Pi 4 Model B Rev 1.4", None)
JETSON = Board("Ubuntu 22.04.5 LTS", "NVIDIA Jetson Orin Nano Developer Kit", (36, 4, 3))
PI4_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
PI5_CPUINFO = ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
               "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
BUILD_INFO = """
General configuration for OpenCV 4.10.0 =====================================
  GUI:                           {gui}
    GTK+:                        NO
  Video I/O:
    FFMPEG:                      YES
      avcodec:                   YES (58.134.100)
    GStreamer:                   {gstreamer}
    v4l/v4l2:                    YES (linux/videodev2.h)
"""


def fake_cv2(gstreamer: str = "NO", gui: str = "NONE"):
    return SimpleNamespace(__version__="4.10.0", __file__="/usr/lib/python3/dist-packages/cv2/__init__.py",
                           getBuildInformation=lambda: BUILD_INFO.format(gui=gui, gstreamer=gstreamer))


def fake_picamera2(*cameras: str):
    info = [{"Model": model, "Location": 2, "Rotation": 180, "Id": f"/base/{model}", "Num": i}
            for i, model in enumerate(cameras)]
    return SimpleNamespace(Picamera2=SimpleNamespace(global_camera_info=lambda: info))


def broken_package(tmp_path, monkeypatch, name: str, raise_line: str):
    """A package ``name`` on sys.path whose import raises, as a real broken install does."""
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(raise_line + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return doctor.try_import(name)


# -- the board ------------------------------------------------------------------------------

def test_board_of_a_raspberry_pi(tmp_path):
    (tmp_path / "os-release").write_text('NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    (tmp_path / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    board = doctor.read_board(tmp_path / "os-release", tmp_path / "model", tmp_path / "absent")
    assert board == Board("Debian GNU/Linux 12 (bookworm)", "Raspberry Pi 5 Model B Rev 1.0", None)
    assert board.is_pi and not board.is_jetson
    assert "Raspberry Pi 5 Model B Rev 1.0" in doctor.check_system(board).detail


def test_board_of_a_jetson(tmp_path):
    (tmp_path / "os-release").write_text("PRETTY_NAME=\"Ubuntu 22.04.5 LTS\"\n")
    (tmp_path / "model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n")
    board = doctor.read_board(tmp_path / "os-release", tmp_path / "model", tmp_path / "nv_tegra_release")
    assert board.l4t == (36, 4, 3) and board.is_jetson and not board.is_pi
    check = doctor.check_system(board)
    assert check.status == OK and "Jetson L4T R36.4.3 (JetPack 6)" in check.detail


def test_board_of_a_plain_machine(tmp_path):
    board = doctor.read_board(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert board.model is None and board.l4t is None and board.os_name


# -- cpu and threads ------------------------------------------------------------------------

def test_cpu_of_a_pi4_says_int8_is_unlikely_to_pay_off():
    check = doctor.check_cpu(cpu_features(PI4_CPUINFO, "aarch64"))
    assert check.status == NOTE
    assert "Raspberry Pi 4 Model B Rev 1.4, arm64" in check.detail and "INT8 unlikely" in check.detail
    assert "cifar-bench" in check.fix


def test_cpu_of_a_pi5_has_the_dot_product():
    check = doctor.check_cpu(cpu_features(PI5_CPUINFO, "aarch64"))
    assert check.status == OK and "asimddp" in check.detail and "INT8 likely" in check.detail


def test_threads():
    pi = CpuInfo("Raspberry Pi 4 Model B Rev 1.4", "arm64", 4, ("asimd",), True)
    check = doctor.check_threads(pi, PI4, usable=4)
    assert check.status == OK and "all 4 on this Raspberry Pi 4" in check.detail and "--threads 3" in check.detail
    limited = doctor.check_threads(CpuInfo("x", "x86_64", 16, (), True), LAPTOP, usable=2)
    assert limited.status == NOTE and "2 of the 16 cores" in limited.detail
    assert limited.fix == "pass --threads 2"


# -- onnxruntime ----------------------------------------------------------------------------

def test_onnxruntime_here():
    check = doctor.check_onnxruntime(LAPTOP)
    assert check.status == OK and "cpu" in check.detail and "--provider auto uses cpu" in check.detail


def test_onnxruntime_without_gpu_on_a_jetson_is_a_problem():
    check = doctor.check_onnxruntime(JETSON)
    assert check.status == PROBLEM and "the Jetson's GPU is unused" in check.detail
    assert JETSON_INDEX in check.fix


def test_onnxruntime_with_tensorrt_on_a_jetson(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    check = doctor.check_onnxruntime(JETSON)
    assert check.status == OK and "providers: tensorrt, cuda, cpu" in check.detail
    assert "--provider auto uses tensorrt (its first run builds an engine: minutes" in check.detail


def test_both_onnxruntime_builds_installed(monkeypatch):
    monkeypatch.setattr(doctor, "_installed", lambda *names: {n: "1.20.0" for n in names})
    check = doctor.check_onnxruntime(JETSON)
    assert check.status == PROBLEM and "both onnxruntime and onnxruntime-gpu" in check.detail
    assert check.fix.startswith("pip uninstall -y onnxruntime onnxruntime-gpu, then install NVIDIA")


def test_onnxruntime_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    check = doctor.check_onnxruntime(LAPTOP)
    assert check.status == PROBLEM and check.detail.startswith("cannot be imported (ModuleNotFoundError")
    assert check.fix == "pip install onnxruntime"


# -- OpenCV, picamera2, cameras, display ------------------------------------------------------

def test_opencv_build_flags():
    check = doctor.check_opencv(LAPTOP, fake_cv2(gstreamer="YES (1.20.3)"))
    assert check.status == OK
    assert check.detail.endswith("GUI none, GStreamer yes, FFmpeg yes, V4L2 yes")
    assert "not from pip: /usr/lib/python3/dist-packages/cv2" in check.detail


def test_opencv_without_gstreamer_on_a_jetson():
    assert doctor.check_opencv(LAPTOP, fake_cv2(gstreamer="NO")).status == OK
    check = doctor.check_opencv(JETSON, fake_cv2(gstreamer="NO"))
    assert check.status == NOTE and "GStreamer no" in check.detail and "nvarguscamerasrc" in check.detail
    assert "--system-site-packages" in check.fix
    assert doctor.check_opencv(JETSON, fake_cv2(gstreamer="YES (1.20.3)")).status == OK


def test_opencv_missing_is_a_note_and_broken_a_problem():
    missing = doctor.check_opencv(LAPTOP, None, ModuleNotFoundError("No module named 'cv2'", name="cv2"))
    assert missing.status == NOTE and missing.fix == "pip install 'cifar-edge[camera]'"
    on_jetson = doctor.check_opencv(JETSON, None, ModuleNotFoundError("No module named 'cv2'", name="cv2"))
    assert "JetPack's OpenCV" in on_jetson.fix
    broken = doctor.check_opencv(LAPTOP, None, ImportError("libGL.so.1: cannot open shared object file"))
    assert broken.status == PROBLEM and "libGL.so.1" in broken.detail


def test_old_opencv_lists_gui_toolkits():
    old = "  GUI: \n    GTK+:                        YES (ver 3.24.20)\n    GStreamer:     NO\n"
    assert doctor.opencv_build(old)["GUI"] == "GTK+"
    assert doctor.opencv_build("")["GUI"] == "NONE"


def test_picamera2_missing():
    missing = ModuleNotFoundError("No module named 'picamera2'", name="picamera2")
    assert doctor.check_picamera2(LAPTOP, None, missing).status == OK
    on_pi = doctor.check_picamera2(PI4, None, missing)
    assert on_pi.status == NOTE and "sudo apt install python3-picamera2" in on_pi.fix


def test_picamera2_numpy_clash_shows_its_text(tmp_path, monkeypatch):
    module, error = broken_package(tmp_path, monkeypatch, "picamera2", "raise ValueError('numpy.dtype "
                                   "size changed, may indicate binary incompatibility. Expected 96 from "
                                   "C header, got 88 from PyObject')")
    check = doctor.check_picamera2(PI4, module, error)
    assert check.status == PROBLEM
    assert "(ValueError: numpy.dtype size changed" in check.detail and "numpy<2" in check.fix


def test_picamera2_without_libcamera(tmp_path, monkeypatch):
    module, error = broken_package(tmp_path, monkeypatch, "picamera2", "import libcamera_is_not_here as libcamera")
    assert module is None and isinstance(error, ImportError)
    error.name = "libcamera"  # what `import libcamera` raises outside a --system-site-packages venv
    check = doctor.check_picamera2(PI4, None, error)
    assert check.status == PROBLEM and "--system-site-packages" in check.fix


def test_picamera2_importable_and_its_cameras(tmp_path):
    assert doctor.check_picamera2(PI4, fake_picamera2("imx708")).status == OK
    dev, names = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    for node in ("video10", "video0", "video2"):
        (dev / node).touch()
    (names / "video0").mkdir(parents=True)
    (names / "video0" / "name").write_text("USB2.0 HD UVC WebCam\n")
    check = doctor.check_cameras(fake_picamera2("imx708", "imx219"), dev, names)
    assert check.status == OK
    assert check.detail == (f"{dev}/video0 (USB2.0 HD UVC WebCam); {dev}/video2; {dev}/video10; "
                            "libcamera imx708 (camera 0); libcamera imx219 (camera 1)")


def test_no_camera_is_a_note(tmp_path):
    check = doctor.check_cameras(None, tmp_path, tmp_path)
    assert check.status == NOTE and "USB camera" in check.fix


def test_display():
    headless = doctor.check_display(None, environ={}, system="linux")
    assert headless.status == NOTE and "--headless" in headless.fix and "--save" in headless.fix
    assert doctor.check_display(fake_cv2(gui="GTK3"), environ={"DISPLAY": ":0"}, system="linux") == \
        Check("display", OK, "DISPLAY=:0")
    no_gui = doctor.check_display(fake_cv2(gui="NONE"), environ={"WAYLAND_DISPLAY": "wayland-0"}, system="linux")
    assert no_gui.status == NOTE and "opens no window" in no_gui.detail and "opencv-python" in no_gui.fix
    assert doctor.check_display(None, environ={}, system="darwin").status == OK


# -- memory and disk ------------------------------------------------------------------------

def test_memory():
    low = doctor.check_memory("MemTotal:  3884096 kB\nMemFree: 1 kB\nMemAvailable:  102400 kB\n", JETSON)
    assert low.status == PROBLEM and "105 MB available of 3,977 MB (shared with the GPU)" == low.detail
    assert doctor.check_memory("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n").status == OK
    assert doctor.check_memory("").detail == "not reported by this system"


def test_disk(tmp_path, monkeypatch):
    check = doctor.check_disk(tmp_path / "not" / "made" / "yet", tmp_path)
    assert check.status == OK and "GB free" in check.detail
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 50e6))
    full = doctor.check_disk(tmp_path, tmp_path)
    assert full.status == PROBLEM and "CIFAR_EDGE_CACHE" in full.fix


# -- the model: the verdict -------------------------------------------------------------------

def colour_sample(tmp_path, monkeypatch, tiny_model, rgb) -> None:
    """The tiny FP32 colour classifier as the bundled ``model.onnx``, and one sample image,
    ``cat.png``, of one colour: the model calls yellow "cat" and red "airplane", so the
    verdict on it is known."""
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(tiny_model, assets / "model.onnx")
    monkeypatch.setenv("CIFAR_EDGE_ASSETS", str(assets))
    sample = tmp_path / "cat.png"
    Image.fromarray(solid(rgb, (32, 32))).save(sample)
    monkeypatch.setattr(doctor.bundled, "sample_images", lambda: [sample])


def test_model_classifies_a_sample(tmp_path, monkeypatch, tiny_model):
    colour_sample(tmp_path, monkeypatch, tiny_model, (255, 255, 0))  # yellow: "cat"
    check = doctor.check_model(runs=3)
    assert check.status == OK and check.fix == ""
    assert check.detail.startswith("model.onnx (fp32) on cpu: cat.png -> cat ") and "(right)" in check.detail
    assert "ms per image (p50 of 3 Classifier.predict calls" in check.detail


def test_a_wrong_label_is_a_note(tmp_path, monkeypatch, tiny_model):
    colour_sample(tmp_path, monkeypatch, tiny_model, (255, 0, 0))  # red: "airplane"
    check = doctor.check_model(runs=1)
    assert check.status == NOTE and "cat.png -> airplane " in check.detail and "(expected cat)" in check.detail
    assert check.fix.startswith("cifar-run shows all ten samples")
    assert doctor.exit_code([check]) == 0  # it classified: the runtime works


def test_a_fallback_to_another_model_is_a_note(tmp_path, monkeypatch, tiny_model):
    colour_sample(tmp_path, monkeypatch, tiny_model, (255, 255, 0))
    load = doctor.bundled.load_classifier

    def load_with_a_note(model=None, *, note, **kwargs):
        note("the bundled model-int8.onnx failed its self-check on this CPU")
        return load(model, note=note, **kwargs)

    monkeypatch.setattr(doctor.bundled, "load_classifier", load_with_a_note)
    check = doctor.check_model(runs=1)
    assert check.status == NOTE and "(right)" in check.detail
    assert check.detail.endswith("; the bundled model-int8.onnx failed its self-check on this CPU")


def test_no_bundled_model_is_the_failure_with_its_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_EDGE_ASSETS", str(tmp_path))
    check = doctor.check_model()
    assert check.status == PROBLEM and check.detail.startswith(f"no model is bundled in {tmp_path}")
    assert check.fix == f"unset CIFAR_EDGE_ASSETS, or put model-int8.onnx in {tmp_path}"
    assert doctor.exit_code([check]) == 1
    monkeypatch.delenv("CIFAR_EDGE_ASSETS")
    monkeypatch.setattr(doctor.bundled, "ASSETS_DIR", tmp_path)
    assert doctor.check_model().fix.startswith("reinstall cifar-edge")


def test_missing_provider_points_to_the_cpu(bundled_assets):
    check = doctor.check_model(provider="tensorrt")
    assert check.status == PROBLEM and "'tensorrt' is not available" in check.detail
    assert check.fix.startswith("cifar-doctor --provider cpu")


def test_a_check_that_breaks_is_reported():
    def broken():
        raise RuntimeError("boom")

    assert doctor._guarded("cpu", broken) == Check(
        "cpu", PROBLEM, "the check itself failed (RuntimeError: boom)",
        "report it with this output: cifar-doctor --json")


# -- the command ----------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_without_opencv_and_picamera2(bundled_assets, monkeypatch):
    """As in a bare arm64 root: no cv2, no picamera2, and the runtime still works."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    checks = {c.name: c for c in doctor.run_checks()}
    assert list(checks) == ["python", "system", "cpu", "threads", "onnxruntime", "opencv", "numpy", "picamera2",
                            "cameras", "display", "memory", "disk", "self-check", "model"]
    assert checks["opencv"].status == NOTE and checks["opencv"].detail.startswith("not installed")
    assert checks["picamera2"].detail.startswith("not installed")
    assert doctor.exit_code(list(checks.values())) == 0


def test_json_is_one_object(tmp_path, monkeypatch, tiny_model):
    colour_sample(tmp_path, monkeypatch, tiny_model, (255, 255, 0))
    monkeypatch.setattr(doctor, "cpu_features", lambda: cpu_features(PI4_CPUINFO, "aarch64"))
    result = run("--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"version", "exit_code", "summary", "checks"} and report["exit_code"] == 0
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["cpu"]["status"] == NOTE and "INT8 unlikely" in checks["cpu"]["detail"]  # a Pi 4's CPU
    assert checks["model"]["status"] == OK and "cat.png -> cat " in checks["model"]["detail"]
    counts = {s: sum(c["status"] == s for c in report["checks"]) for s in (PROBLEM, NOTE)}
    assert report["summary"] == (f"{counts[PROBLEM]} problem(s), {counts[NOTE]} note(s); the runtime works: "
                                 "the model classified a sample image")
    assert all(c["fix"] for c in report["checks"] if c["status"] == PROBLEM)


def test_cannot_classify_exits_1(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_EDGE_ASSETS", str(tmp_path))
    result = run()
    assert result.exit_code == 1
    assert "problem  model" in result.stdout and "fix: unset CIFAR_EDGE_ASSETS" in result.stdout
    assert result.stdout.rstrip().endswith("the runtime cannot classify: see the model line")
    assert json.loads(run("--json").stdout)["exit_code"] == 1


def test_real_run_on_this_machine():
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cifar-edge ") and lines[-1].endswith("the runtime works: the model "
                                                                      "classified a sample image")
    model = next(line for line in lines if line.split()[1:2] == ["model"])
    assert "model-int8.onnx (int8) on cpu: cat.jpg -> " in model


def _apt_root(tmp_path, numpy_info: str, picamera2: bool = True) -> Path:
    """A stand-in for /usr/lib/python3/dist-packages as apt leaves it."""
    dist = tmp_path / "dist-packages"
    (dist / "numpy").mkdir(parents=True)
    (dist / "numpy" / "__init__.py").write_text("")
    (dist / numpy_info).mkdir()
    if picamera2:
        (dist / "picamera2").mkdir()
    return dist


def test_apt_version_reads_dist_info_and_egg_info(tmp_path):
    dist = _apt_root(tmp_path, "numpy-2.2.4.dist-info")
    assert doctor.apt_version("numpy", dist) == "2.2.4"
    old = _apt_root(tmp_path / "bookworm", "numpy-1.24.2.egg-info")
    assert doctor.apt_version("numpy", old) == "1.24.2"
    assert doctor.apt_version("simplejpeg", dist) is None


def test_numpy_from_apt_is_ok(tmp_path):
    dist = _apt_root(tmp_path, "numpy-2.2.4.dist-info")
    check = doctor.check_numpy("2.2.4", str(dist / "numpy" / "__init__.py"), dist)
    assert check.status == doctor.OK and "apt's" in check.detail


def test_pip_numpy_of_another_major_than_apt_picamera2_is_a_problem(tmp_path):
    """Bookworm: apt's picamera2 and simplejpeg are built for NumPy 1.24; a venv's NumPy 2 breaks them."""
    dist = _apt_root(tmp_path, "numpy-1.24.2.egg-info")
    check = doctor.check_numpy("2.3.5", "/venv/lib/python3.11/site-packages/numpy/__init__.py", dist)
    assert check.status == doctor.PROBLEM
    assert "1.24.2" in check.detail and "pip's" in check.detail
    assert "pip uninstall numpy" in check.fix and "numpy==1.24.2" in check.fix


def test_pip_numpy_older_than_apt_is_a_problem_newer_is_ok(tmp_path):
    """Bookworm's advice, pip's "numpy<2" (1.26) over apt's 1.24, runs; trixie's 2.2 under 2.1 does not."""
    dist = _apt_root(tmp_path, "numpy-2.2.4.dist-info")
    pip = "/venv/lib/python3.13/site-packages/numpy/__init__.py"
    assert doctor.check_numpy("2.1.3", pip, dist).status == doctor.PROBLEM
    newer = doctor.check_numpy("2.3.5", pip, dist)
    assert newer.status == doctor.OK and "shadows" in newer.detail
    bookworm = _apt_root(tmp_path / "bookworm", "numpy-1.24.2.egg-info")
    assert doctor.check_numpy("1.26.4", pip, bookworm).status == doctor.OK


def test_pip_numpy_without_apt_picamera2_is_ok(tmp_path):
    dist = _apt_root(tmp_path, "numpy-2.2.4.dist-info", picamera2=False)
    assert doctor.check_numpy("1.26.4", "/venv/site-packages/numpy/__init__.py", dist).status == doctor.OK
    assert doctor.check_numpy("2.3.5", "/venv/site-packages/numpy/__init__.py", tmp_path / "none").status == doctor.OK
