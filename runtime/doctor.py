"""What a new device needs for cifar-edge: each fact it depends on, checked, with a fix.

``run_checks()`` returns one ``Check`` per topic, in the order a user meets them: Python, the
system and board, the CPU (and whether INT8 pays off), threads, onnxruntime and its providers,
OpenCV, picamera2, cameras, display, memory, disk, and at last the bundled model classifying a
sample image through ``Classifier``. A check never raises: what it cannot find is its answer.
OpenCV and picamera2 are optional and imported here only; neither is needed for the verdict,
which is the model's (``exit_code``). cifar-doctor (``runtime.cli.doctor``) prints the report.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from runtime import __version__
from runtime.camera.picamera import INSTALL_HINT
from runtime.cpu import CpuInfo, cpu_features
from runtime.errors import CifarEdgeError, ExitCode, ProviderError
from runtime.model import bundled
from runtime.model.providers import cache_root, gpu_install_hint, resolve, short_name

OK, NOTE, PROBLEM = "ok", "note", "problem"
OS_RELEASE = Path("/etc/os-release")
# Where Debian's apt puts Python packages (python3-numpy, python3-picamera2, python3-simplejpeg):
# a venv made with --system-site-packages sees them, after its own.
APT_PACKAGES = Path("/usr/lib/python3/dist-packages")
DEVICE_MODEL = Path("/proc/device-tree/model")  # a Raspberry Pi's or a Jetson's board name
TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # a Jetson's L4T release: "# R36 (release), REVISION: 4.0, ..."
MEMINFO = Path("/proc/meminfo")
DEV = Path("/dev")
V4L_NAMES = Path("/sys/class/video4linux")
JETPACK = {32: 4, 35: 5, 36: 6, 38: 7}  # L4T major release -> JetPack major version
MIN_MEMORY_MB = 200  # cifar-run with the INT8 model peaks near 90 MB resident (cifar-bench)
MIN_DISK_MB = 100  # TensorRT engines and the training cache are written to the cache folder
LATENCY_RUNS = 20  # timed Classifier.predict calls for the latency figure
WARMUP = 3  # untimed calls before them: the first calls allocate buffers
CAMERA_EXTRA = "pip install 'cifar-edge[camera]'"


@dataclass(frozen=True)
class Check:
    name: str  # "python", "onnxruntime", "model", ...
    status: str  # OK, NOTE (worth knowing) or PROBLEM (something will not work)
    detail: str  # what was found, one line
    fix: str = ""  # what to type or do; set for every problem, for some notes


@dataclass(frozen=True)
class Board:
    """What this machine is: the OS, the board's own name, a Jetson's L4T release."""

    os_name: str  # "Debian GNU/Linux 12 (bookworm)"
    model: str | None  # "Raspberry Pi 5 Model B Rev 1.0", "NVIDIA Jetson Orin Nano Developer Kit"
    l4t: tuple[int, int, int] | None  # (36, 4, 0) on JetPack 6.1; None off a Jetson

    @property
    def is_pi(self) -> bool:
        return (self.model or "").startswith("Raspberry Pi")

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def read_board(os_release: Path = OS_RELEASE, device_model: Path = DEVICE_MODEL,
               tegra_release: Path = TEGRA_RELEASE) -> Board:
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read(os_release) or "", re.M)
    os_name = pretty.group(1) if pretty else f"{platform.system()} {platform.release()}"
    model = (_read(device_model) or "").strip("\x00 \n") or None  # the device tree ends it with NUL
    tegra = re.search(r"R(\d+) \(release\), REVISION: (\d+)\.(\d+)", _read(tegra_release) or "")
    return Board(os_name, model, tuple(int(g) for g in tegra.groups()) if tegra else None)


def try_import(name: str):
    """(module, None), or (None, the exception): a module that is missing or breaks on import."""
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, and a NumPy ABI clash raises ValueError
        return None, exc


def _missing(exc: BaseException | None, name: str) -> bool:
    return isinstance(exc, ModuleNotFoundError) and exc.name == name


def _installed(*names: str) -> dict[str, str]:
    """The pip distributions among ``names`` that are installed, with their versions."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# -- the checks, in the order of the report -----------------------------------------------------

def check_python(version: tuple = tuple(sys.version_info[:3]), executable: str = sys.executable) -> Check:
    venv = "a virtual environment" if sys.prefix != sys.base_prefix else "the system's Python"
    detail = f"{'.'.join(map(str, version))} at {executable} ({venv})"
    if tuple(version[:2]) < (3, 10):
        return Check("python", PROBLEM, detail, "use Python 3.10 or newer (JetPack 6 and Raspberry "
                     "Pi OS Bookworm have it)")
    return Check("python", OK, detail)


def check_system(board: Board) -> Check:
    parts = [board.os_name, f"{platform.system()} {platform.release()}"]
    if board.model:
        parts.append(board.model)
    if board.l4t:
        jetpack = JETPACK.get(board.l4t[0])
        parts.append(f"Jetson L4T R{'.'.join(map(str, board.l4t))}"
                     + (f" (JetPack {jetpack})" if jetpack else ""))
    return Check("system", OK, "; ".join(parts))


def check_cpu(cpu: CpuInfo) -> Check:
    flags = ", ".join(cpu.flags) or "none reported"
    detail = f"{cpu.model}, {cpu.arch}, {cpu.cores} cores, flags: {flags}; INT8 {cpu.int8_outlook()}"
    if cpu.int8_likely:
        return Check("cpu", OK, detail)
    return Check("cpu", NOTE, detail, "compare the INT8 and FP32 models here: cifar-bench "
                 "(the FP32 model.onnx may be as fast)")


def check_threads(cpu: CpuInfo, board: Board, usable: int | None) -> Check:
    default = "onnxruntime's default (--threads 0) is one thread per physical core"
    if usable is not None and usable < cpu.cores:
        return Check("threads", NOTE, f"this process may use {usable} of the {cpu.cores} cores (CPU "
                     f"affinity or a container limit); {default} of the machine",
                     f"pass --threads {usable}")
    detail = f"{cpu.cores} cores; {default}"
    if board.is_pi:
        return Check("threads", OK, f"{detail}: all {cpu.cores} on this {board.model}; with a camera, "
                     f"--threads {max(1, cpu.cores - 1)} leaves a core for capture and drawing "
                     f"(measure both with cifar-bench --threads N)")
    return Check("threads", OK, detail)


def check_onnxruntime(board: Board) -> Check:
    hint = gpu_install_hint(board.l4t[:2]) if board.l4t else "pip install onnxruntime"
    ort, error = try_import("onnxruntime")
    if ort is None:
        return Check("onnxruntime", PROBLEM, f"cannot be imported ({type(error).__name__}: {error})", hint)
    names = [short_name(p) for p in ort.get_available_providers()]
    detail = f"{ort.__version__}, providers: {', '.join(names)}"
    if len(_installed("onnxruntime", "onnxruntime-gpu")) > 1:
        return Check("onnxruntime", PROBLEM, f"{detail}; both onnxruntime and onnxruntime-gpu are "
                     "installed: they share one module and the last one installed wins",
                     "pip uninstall -y onnxruntime onnxruntime-gpu, then "
                     + (hint if board.l4t else "pip install onnxruntime (or onnxruntime-gpu)"))
    if board.is_jetson and not {"cuda", "tensorrt"} & set(names):
        return Check("onnxruntime", PROBLEM, f"{detail}: no CUDA or TensorRT, the Jetson's GPU "
                     "is unused", hint)
    auto = short_name(resolve("auto")[0])
    return Check("onnxruntime", OK, f"{detail}; --provider auto uses {auto}" + (
        " (its first run builds an engine: minutes, then cached)" if auto == "tensorrt" else ""))


def opencv_build(info: str) -> dict[str, str]:
    """cv2.getBuildInformation() -> {"GUI": "NONE", "GStreamer": "NO", "FFMPEG": "YES", ...}."""
    found = {}
    for key in ("GUI", "GTK+", "QT", "Win32 UI", "Cocoa", "GStreamer", "FFMPEG", "v4l/v4l2"):
        match = re.search(rf"^[ \t]*{re.escape(key)}:[ \t]*(\S+)", info, re.M)
        if match:
            found[key] = match.group(1)
    if "GUI" not in found:  # older builds leave the GUI line empty and list the toolkits below it
        toolkits = [k for k in ("GTK+", "QT", "Win32 UI", "Cocoa") if found.get(k) == "YES"]
        found["GUI"] = toolkits[0] if toolkits else "NONE"
    return found


def _pip_wheel(module, *names: str) -> str | None:
    """Which of these pip distributions ``module`` came from (one installed beside it), if any."""
    from importlib.metadata import PackageNotFoundError, distribution

    for name in names:
        try:
            folder = Path(distribution(name).locate_file("")).resolve()
        except PackageNotFoundError:
            continue
        if Path(module.__file__).resolve().is_relative_to(folder):
            return name
    return None


def _yes(value: str | None) -> str:
    return "yes" if (value or "").upper().startswith("YES") else "no"


def check_opencv(board: Board, cv2=None, error: BaseException | None = None) -> Check:
    """``cv2`` and ``error`` are what ``try_import("cv2")`` gave."""
    jetson_fix = ("on a Jetson, use JetPack's OpenCV (it has GStreamer): a venv made with "
                  "--system-site-packages, without opencv-python-headless")
    if cv2 is None and _missing(error, "cv2"):
        return Check("opencv", NOTE, "not installed: image files work, a camera or video needs it",
                     CAMERA_EXTRA + (f"; {jetson_fix}" if board.is_jetson else ""))
    if cv2 is None:
        return Check("opencv", PROBLEM, f"installed but cannot be imported ({type(error).__name__}: "
                     f"{error})", "pip install --force-reinstall opencv-python-headless")
    build = opencv_build(cv2.getBuildInformation())
    origin = _pip_wheel(cv2, "opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                        "opencv-contrib-python") or f"not from pip: {Path(cv2.__file__).parent}"
    detail = (f"{cv2.__version__} ({origin}): GUI {build['GUI'].lower()}, GStreamer "
              f"{_yes(build.get('GStreamer'))}, FFmpeg {_yes(build.get('FFMPEG'))}, "
              f"V4L2 {_yes(build.get('v4l/v4l2'))}")
    if board.is_jetson and _yes(build.get("GStreamer")) == "no":
        return Check("opencv", NOTE, f"{detail}: a CSI camera (nvarguscamerasrc) needs GStreamer",
                     jetson_fix)
    return Check("opencv", OK, detail)


def apt_version(name: str, dist_packages: Path = APT_PACKAGES) -> str | None:
    """The version of an apt-installed Python package, from its dist-info/egg-info folder name
    (``numpy-2.2.4.dist-info``, ``numpy-1.24.2.egg-info``); None when apt has not installed it."""
    for info in sorted(dist_packages.glob(f"{name}-*.*-info")):
        match = re.match(rf"{name}-(\d[^-]*?)(?:\.dist-info|\.egg-info)$", info.name)
        if match:
            return match.group(1)
    return None


def _major_minor(version: str) -> tuple[int, int]:
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    return (numbers + [0, 0])[0], (numbers + [0, 0])[1]


def check_numpy(numpy_version: str, numpy_path: str, dist_packages: Path = APT_PACKAGES) -> Check:
    """The NumPy this Python imports, against the one apt's picamera2 (and the simplejpeg it
    uses, compiled against it) was built with: a venv's pip NumPy shadows apt's, and a NumPy
    older than the build, or of another major version, breaks the import of picamera2 (a
    problem); a newer one of the same major version runs it."""
    apt_numpy = apt_version("numpy", dist_packages)
    where = "apt's" if Path(numpy_path).resolve().is_relative_to(dist_packages.resolve()) else "pip's"
    detail = f"{numpy_version} ({where}, {Path(numpy_path).parent})"
    if where == "apt's" or apt_numpy is None or not (dist_packages / "picamera2").is_dir():
        return Check("numpy", OK, detail)
    detail += f"; apt's picamera2 was built with apt's NumPy {apt_numpy}, which pip's shadows"
    fix = ("in the venv: pip uninstall numpy (the venv then uses apt's; pip keeps it when it "
           f"satisfies a requirement), or pin it: pip install 'numpy=={apt_numpy}'")
    used, built = _major_minor(numpy_version), _major_minor(apt_numpy)
    if used[0] != built[0] or used < built:
        return Check("numpy", PROBLEM, detail, fix)
    # A compiled module runs on a newer NumPy of the major version it was built with.
    return Check("numpy", OK, f"{detail} (newer, of the same major version: it runs what was built for it)")


def _numpy_clash(error: BaseException) -> bool:
    return "numpy" in str(error).lower() or "size changed" in str(error)


def check_picamera2(board: Board, picamera2=None, error: BaseException | None = None) -> Check:
    """``picamera2`` and ``error`` are what ``try_import("picamera2")`` gave."""
    if picamera2 is not None:
        version = _installed("picamera2").get("picamera2", "version unknown")
        return Check("picamera2", OK, f"importable ({version})")
    if _missing(error, "picamera2"):
        if board.is_pi:
            return Check("picamera2", NOTE, "not installed: a Raspberry Pi camera module needs it",
                         INSTALL_HINT)
        return Check("picamera2", OK, "not installed (only a Raspberry Pi camera module needs it)")
    if _numpy_clash(error):
        fix = ("apt's picamera2 (simplejpeg) was built for the system's NumPy 1.x, and the venv's "
               "NumPy 2 shadows it: pip install 'numpy<2' in the venv (with pip's OpenCV, also "
               "'opencv-python-headless<4.12', which needs NumPy 2)")
    elif _missing(error, "libcamera"):
        fix = "libcamera's Python module comes from apt: make the venv with --system-site-packages"
    else:
        fix = "sudo apt install --reinstall python3-picamera2"
    return Check("picamera2", PROBLEM, f"installed but cannot be imported ({type(error).__name__}: "
                 f"{error})", fix)


def check_cameras(picamera2=None, dev: Path = DEV, names: Path = V4L_NAMES) -> Check:
    found = []
    for node in sorted(dev.glob("video*"), key=lambda p: (len(p.name), p.name)):
        label = (_read(names / node.name / "name") or "").strip()
        found.append(f"{node}" + (f" ({label})" if label else ""))
    if len(found) > 6:
        found = found[:6] + [f"... {len(found) - 6} more"]
    if picamera2 is not None:
        try:
            for info in picamera2.Picamera2.global_camera_info():
                found.append(f"libcamera {info.get('Model', '?')} (camera {info.get('Num', '?')})")
        except Exception as exc:  # libcamera itself failing: say so, keep the V4L2 list
            found.append(f"libcamera: cannot list cameras ({type(exc).__name__}: {exc})")
    if not found:
        return Check("cameras", NOTE, "none found (no /dev/video*, no libcamera camera)",
                     "plug in a USB camera, or connect and enable a camera module; image files "
                     "work without one")
    return Check("cameras", OK, "; ".join(found))


def check_display(cv2=None, environ=os.environ, system: str = sys.platform) -> Check:
    """``cv2``: the imported OpenCV or None; a build without a GUI opens no window."""
    headless_fix = ("cifar-run --camera 0 --headless --json prints one line per frame; "
                    "--save out.mp4 keeps the annotated video")
    if system.startswith("linux"):
        shown = [f"{k}={environ[k]}" for k in ("DISPLAY", "WAYLAND_DISPLAY") if environ.get(k)]
        if not shown:
            return Check("display", NOTE, "none (DISPLAY and WAYLAND_DISPLAY are unset): cifar-run "
                         "--camera runs headless", headless_fix)
        detail = ", ".join(shown)
    else:
        detail = f"a desktop ({system})"
    if cv2 is not None and opencv_build(cv2.getBuildInformation())["GUI"].upper() == "NONE":
        return Check("display", NOTE, f"{detail}, but this OpenCV has no GUI: cifar-run --camera "
                     "opens no window", "for a window, pip install opencv-python in place of "
                     f"opencv-python-headless; or {headless_fix}")
    return Check("display", OK, detail)


def check_memory(meminfo: str | None = None, board: Board | None = None) -> Check:
    meminfo = _read(MEMINFO) if meminfo is None else meminfo
    values = dict(re.findall(r"^(MemAvailable|MemTotal):\s+(\d+) kB", meminfo or "", re.M))
    if "MemAvailable" not in values:
        return Check("memory", OK, "not reported by this system")
    available, total = int(values["MemAvailable"]) * 1024 / 1e6, int(values.get("MemTotal", 0)) * 1024 / 1e6
    detail = f"{available:,.0f} MB available of {total:,.0f} MB" + \
        (" (shared with the GPU)" if board and board.is_jetson else "")
    if available < MIN_MEMORY_MB:
        return Check("memory", PROBLEM, detail, f"cifar-run needs about {MIN_MEMORY_MB} MB: close "
                     "other programs, or add swap")
    return Check("memory", OK, detail)


def _free_mb(path: Path) -> float:
    while not path.exists() and path != path.parent:
        path = path.parent  # the cache folder may not exist yet: its disk is its parent's
    return shutil.disk_usage(path).free / 1e6


def check_disk(cache: Path | None = None, here: Path | None = None) -> Check:
    places = {"cache": cache or cache_root(), "here": here or Path.cwd()}
    free = {name: _free_mb(path) for name, path in places.items()}
    detail = "; ".join(f"{name} {places[name]}: {free[name] / 1000:,.1f} GB free" for name in places)
    if free["cache"] < MIN_DISK_MB:
        return Check("disk", PROBLEM, detail, "free some space, or set CIFAR_EDGE_CACHE to a folder "
                     "on a disk with room (TensorRT engines are cached there)")
    if free["here"] < MIN_DISK_MB:
        return Check("disk", PROBLEM, detail, "free some space here: --save writes annotated "
                     "images and video")
    return Check("disk", OK, detail)


def _sample() -> Path:
    samples = bundled.sample_images()
    return next((p for p in samples if p.stem == "cat"), samples[0])


def _model_fix(error: CifarEdgeError, model: str | os.PathLike | None) -> str:
    if isinstance(error, ProviderError):
        return ("cifar-doctor --provider cpu checks the model on the CPU; the onnxruntime line "
                "lists the providers this build has")
    if model:
        return "pass a model exported with cifar-export (the message says what is wrong with this one)"
    assets = os.environ.get(bundled.ASSETS_ENV)
    if assets:
        return f"unset {bundled.ASSETS_ENV}, or put {bundled.MODEL_NAMES[0]} in {assets}"
    return ("reinstall cifar-edge (its package ships runtime/assets/model-int8.onnx), or pass "
            "--model PATH")


def check_model(model: str | os.PathLike | None = None, provider: str = "auto",
                runs: int = LATENCY_RUNS) -> Check:
    """The verdict: the model (the bundled one by default, as cifar-run picks it) classifies a
    bundled sample image."""
    notes: list[str] = []
    try:
        clf = bundled.load_classifier(model, provider=provider, note=notes.append)
        path = clf.model_path
        sample = _sample()
        prediction = clf.predict(sample)
        image_rgb = clf.prepare(sample)  # (H, W, 3) uint8 RGB: decoding is not timed
        times = []
        for _ in range(WARMUP + runs):
            start = time.perf_counter()
            clf.predict(image_rgb=image_rgb)
            times.append((time.perf_counter() - start) * 1000.0)
    except CifarEdgeError as exc:
        return Check("model", PROBLEM, str(exc), _model_fix(exc, model))
    except Exception as exc:  # onnxruntime missing or broken: the onnxruntime line says why
        return Check("model", PROBLEM, f"cannot classify ({type(exc).__name__}: {exc})",
                     "see the onnxruntime line")
    verdict = "right" if prediction.label == sample.stem else f"expected {sample.stem}"
    p50 = statistics.median(times[WARMUP:])
    fixes = [] if verdict == "right" else ["cifar-run shows all ten samples (the bundled model gets 9 or 10 right)"]
    return Check("model", OK if verdict == "right" and not notes else NOTE,
                 f"{path.name} ({clf.variant}) on {clf.provider}: {sample.name} -> {prediction.label} "
                 f"{prediction.confidence:.1%} ({verdict}); {p50:.2f} ms per image (p50 of {runs} "
                 "Classifier.predict calls on the decoded image)" + "".join(f"; {n}" for n in notes),
                 "; ".join(fixes))


def check_self_checks(model: str | os.PathLike | None = None, provider: str = "auto") -> Check:
    """Every model found (``model`` and the bundled ones) runs its self-check images here: are
    this machine's answers the exported ones? A failure of ``model`` is a problem; of a
    bundled INT8 file a note (cifar-run falls back to the bundled FP32 file)."""
    from runtime.model.classifier import Classifier
    from runtime.model.selfcheck import ABSENT, FAILED, run_check

    try:
        found = bundled.bundled_models()
    except CifarEdgeError:
        found = []
    paths = ([Path(model)] if model else []) + [p for p in found if not model or p.resolve() != Path(model).resolve()]
    if not paths:
        return Check("self-check", NOTE, "no model to check", "pass --model PATH")
    parts, failed, absent, used = [], [], [], provider
    for path in paths:
        try:
            clf = Classifier(path, provider=provider, verify=False, allow_failed=True)
            result = run_check(clf)
        except CifarEdgeError as exc:
            parts.append(f"{path.name}: cannot check ({exc})")
            failed.append(path)
            continue
        parts.append(f"{path.name} ({clf.variant}) {result.summary()}")
        used = clf.provider
        (failed if result.status == FAILED else absent if result.status == ABSENT else []).append(path)
    detail = "; ".join(parts) + f"; on {cpu_features().model}, {used}"
    if model and Path(model) in failed:
        return Check("self-check", PROBLEM, detail, "this machine's answers are not the exported ones: use the "
                     "FP32 file of the same export, or --provider cpu; cifar-run refuses the file unless --no-verify")
    if failed:
        return Check("self-check", NOTE, detail, f"cifar-run uses the next bundled model instead of "
                     f"{', '.join(p.name for p in failed)}")
    if absent:
        return Check("self-check", NOTE, detail, f"re-export {', '.join(p.name for p in absent)} with cifar-export: "
                     "files exported before self-checks existed cannot be checked")
    return Check("self-check", OK, detail)


# -- all of them ------------------------------------------------------------------------------------

def _guarded(name: str, check: Callable[..., Check], *args) -> Check:
    try:
        return check(*args)
    except Exception as exc:  # a check that breaks is reported, never fatal
        return Check(name, PROBLEM, f"the check itself failed ({type(exc).__name__}: {exc})",
                     "report it with this output: cifar-doctor --json")


def run_checks(model: str | os.PathLike | None = None, provider: str = "auto") -> list[Check]:
    """Every check, in report order; the last one ("model") is the verdict."""
    board = read_board()
    cpu = cpu_features()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cv2, cv2_error = try_import("cv2")
    os.environ.setdefault("LIBCAMERA_LOG_LEVELS", "*:ERROR")  # no libcamera INFO lines in the report
    picamera2, picamera2_error = try_import("picamera2")
    return [_guarded("python", check_python),
            _guarded("system", check_system, board),
            _guarded("cpu", check_cpu, cpu),
            _guarded("threads", check_threads, cpu, board, usable),
            _guarded("onnxruntime", check_onnxruntime, board),
            _guarded("opencv", check_opencv, board, cv2, cv2_error),
            _guarded("numpy", check_numpy, np.__version__, np.__file__),
            _guarded("picamera2", check_picamera2, board, picamera2, picamera2_error),
            _guarded("cameras", check_cameras, picamera2),
            _guarded("display", check_display, cv2),
            _guarded("memory", check_memory, None, board),
            _guarded("disk", check_disk),
            _guarded("self-check", check_self_checks, model, provider),
            _guarded("model", check_model, model, provider)]


def exit_code(checks: list[Check]) -> int:
    """0 when the model classified the sample (whatever else is missing), 1 when it could not."""
    verdict = next((c for c in checks if c.name == "model"), None)
    return int(ExitCode.OK if verdict is not None and verdict.status != PROBLEM else ExitCode.ERROR)


def _summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (PROBLEM, NOTE)}
    works = ("the runtime works: the model classified a sample image" if exit_code(checks) == 0
             else "the runtime cannot classify: see the model line")
    return f"{counts[PROBLEM]} problem(s), {counts[NOTE]} note(s); {works}"


def report_text(checks: list[Check]) -> str:
    """An aligned list for people: status, name, what was found, and the fix below it."""
    width = max(len(c.name) for c in checks)
    lines = [f"cifar-edge {__version__} on this machine", ""]
    for c in checks:
        lines.append(f"{c.status:<8} {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<8} {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines + ["", _summary(checks)])


def report_json(checks: list[Check]) -> str:
    """One JSON object: exit_code, summary, and every check as {name, status, detail, fix}."""
    return json.dumps({"version": __version__, "exit_code": exit_code(checks),
                       "summary": _summary(checks), "checks": [asdict(c) for c in checks]}, indent=2)
