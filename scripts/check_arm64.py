"""arm64 under emulation: the runtime wheel installs with no network in a Debian arm64 root
(trixie, the base of today's Raspberry Pi OS, or bookworm, the one before) and gives the host's
answers.

    sudo .venv/bin/python scripts/check_arm64.py                   # trixie; the first run builds the root
    sudo .venv/bin/python scripts/check_arm64.py --suite bookworm  # later runs reuse each suite's root

On the host: build the project wheel from this checkout and download the arm64 wheels of the
base dependencies at the versions installed here, for the suite's CPython (trixie 3.13,
bookworm 3.11). In the root, through qemu-user and binfmt_misc, in a network namespace with no
network: ``python3 -m venv`` (on trixie ``--system-site-packages`` beside apt's python3-numpy,
as apt's picamera2 needs: pip must keep apt's NumPy, and the check fails if it replaced it),
``pip install --no-index`` from those wheels only, ``cifar-run --json`` on the sample images
with the bundled INT8 model (the default) and the bundled FP32 one on each emulated CPU (a
Raspberry Pi 4's Cortex-A72 and a Pi 5's Cortex-A76), and ``cifar-doctor`` when the wheel has
it. The host runs the same wheel's ``cifar-run`` on the same files. Verdict: the same labels and
every probability (all ten classes) within --tolerance of the host's.

Exit codes: 0 PASS, 4 FAIL (a label or a probability differs), 1 a missing prerequisite (one
line each, with the fix) or a step that failed. Needs root (debootstrap, chroot), debootstrap,
qemu-user-static and binfmt_misc registered for aarch64; on Debian:
``apt-get install debootstrap qemu-user-static binfmt-support``. The root is cached in
cifar-edge's cache folder (``$CIFAR_EDGE_CACHE``, else ``~/.cache/cifar-edge``) as
``arm64-SUITE-root/``; --fresh-root builds it again.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click

from runtime.cli.common import run_cli, traceback_option
from runtime.errors import CifarEdgeError, ExitCode
from runtime.model.providers import cache_root

PROG = "check_arm64"
REPO = Path(__file__).resolve().parents[1]
ARM64_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
BASE_DEPENDENCIES = ("numpy", "pillow", "onnxruntime", "click")  # pyproject's dependencies
BINFMT = Path("/proc/sys/fs/binfmt_misc")
ROOT_MARKER = ".cifar-edge-root"  # written last: a root without it was never finished
IN_ROOT = "/opt/cifar-check"  # everything this script puts into the root, emptied on each run
ROOT_ENV = ("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/root", "LANG=C.UTF-8",
            "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1")
# The emulated CPUs cifar-run is checked on (qemu's QEMU_CPU): a Raspberry Pi 4's Cortex-A72 has
# no int8 dot-product instructions (asimddp), a Pi 5's Cortex-A76 has them, so onnxruntime's INT8
# kernels for each kind are exercised; "max" (qemu's default) adds i8mm and SVE.
CPUS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5"}
MODELS = {"INT8": None, "FP32": "model.onnx"}  # None: cifar-run's default, the bundled INT8 model
TOP_K = 10  # every class: all ten probabilities are compared, not only the top three
JSON_STEP = 1e-6  # cifar-run --json writes probabilities with 6 decimals: smaller differences are 0
TOOLS = (("debootstrap", "apt-get install debootstrap"),
         ("qemu-aarch64-static", "apt-get install qemu-user-static binfmt-support"),
         ("unshare", "apt-get install util-linux"),
         ("chroot", "apt-get install coreutils"))


class StepFailed(CifarEdgeError):
    """A command of one of the steps failed; the message carries its last lines."""


@dataclass(frozen=True)
class Suite:
    """A Debian release as Raspberry Pi OS 64-bit is built on it."""

    name: str
    python: str  # its python3: the arm64 wheels are downloaded for it
    packages: tuple[str, ...]  # on top of debootstrap's minbase
    # NumPy from apt (python3-numpy, what apt's picamera2 is built against) and a venv made with
    # --system-site-packages, as the Pi docs say; False: the venv's own NumPy from pip.
    apt_numpy: bool


SUITES = {"trixie": Suite("trixie", "3.13", ("python3", "python3-venv", "python3-numpy"), apt_numpy=True),
          "bookworm": Suite("bookworm", "3.11", ("python3", "python3-venv"), apt_numpy=False)}
APT_PACKAGES = "/usr/lib/python3/dist-packages"  # where apt's python3-numpy lives in the root


# -- prerequisites ---------------------------------------------------------------------------------

def missing_prerequisites(is_root: bool, which=shutil.which, binfmt: Path = BINFMT) -> list[str]:
    """One line per missing prerequisite, each saying how to fix it; empty when all are there."""
    missing = [] if is_root else [(f"not root: debootstrap and chroot need it; run: sudo {sys.executable} "
                                   f"{' '.join(sys.argv)}")]
    missing += [f"{tool} not found: {fix}" for tool, fix in TOOLS if which(tool) is None]
    problem = binfmt_problem(binfmt)
    return missing + ([problem] if problem else [])


def binfmt_problem(binfmt: Path) -> str | None:
    """Why the kernel would not run an aarch64 binary inside a chroot, or None."""
    entry = binfmt / "qemu-aarch64"
    if not (binfmt / "register").exists():
        return (f"binfmt_misc is not mounted at {binfmt}: mount -t binfmt_misc binfmt_misc {binfmt}, "
                "then: update-binfmts --enable qemu-aarch64")
    if not entry.exists():
        return ("aarch64 is not registered with binfmt_misc: update-binfmts --enable qemu-aarch64 "
                "(from qemu-user-static and binfmt-support)")
    text = entry.read_text()
    if not text.startswith("enabled"):
        return "binfmt_misc's qemu-aarch64 entry is disabled: update-binfmts --enable qemu-aarch64"
    flags = re.search(r"^flags: *(\S*)", text, re.MULTILINE)
    if flags is None or "F" not in flags.group(1):
        return (f"{entry} lacks the F flag, so its interpreter is not found inside a chroot: "
                "use Debian's qemu-user-static (it registers with F), then update-binfmts --enable qemu-aarch64")
    return None


# -- comparing cifar-run --json outputs ------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """The arm64 run of one model against the host's, image by image and class by class."""

    model: str  # "INT8" or "FP32", and the emulated CPU: "INT8 on cortex-a72 (Raspberry Pi 4)"
    images: int
    problems: tuple[str, ...]  # a label that differs, an image missing or failed on one side
    max_diff: float  # the largest |p_host - p_arm64| over every image and class
    worst: str  # where it is: "cat.jpg, dog"
    tolerance: float

    @property
    def passed(self) -> bool:
        return not self.problems and self.max_diff <= self.tolerance

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        labels = "same labels" if not self.problems else "; ".join(self.problems)
        return (f"{self.model}  {verdict}  {self.images} images, {labels}, {self.figure()}, "
                f"tolerance {self.tolerance:.0e}")

    def figure(self) -> str:
        if self.max_diff == 0:
            return f"max |dp| < {JSON_STEP:.0e} (every probability identical to the 6 decimals of --json)"
        return f"max |dp| {self.max_diff:.1e} ({self.worst})"


def read_rows(text: str) -> dict[str, dict]:
    """``cifar-run --json`` lines keyed by file name: the two sides see the same files by other paths."""
    rows = (json.loads(line) for line in text.splitlines() if line.strip())
    return {Path(row["file"]).name: row for row in rows}


def compare(model: str, host: dict[str, dict], arm64: dict[str, dict], tolerance: float) -> Comparison:
    problems, max_diff, worst = [], 0.0, "-"
    for name in sorted(host.keys() | arm64.keys()):
        h, a = host.get(name), arm64.get(name)
        if h is None or a is None:
            problems.append(f"{name} only on {'the host' if a is None else 'arm64'}")
        elif h["error"] or a["error"]:
            problems.append(f"{name} failed: host {h['error']}, arm64 {a['error']}")
        else:
            if h["top_label"] != a["top_label"]:
                problems.append(f"{name}: host {h['top_label']}, arm64 {a['top_label']}")
            h_probs = {e["label"]: e["probability"] for e in h["top_k"]}
            a_probs = {e["label"]: e["probability"] for e in a["top_k"]}
            if h_probs.keys() != a_probs.keys():
                problems.append(f"{name}: other classes in the top {len(h_probs)}")
            for label in h_probs.keys() & a_probs.keys():
                diff = abs(h_probs[label] - a_probs[label])
                if diff > max_diff:
                    max_diff, worst = diff, f"{name}, {label}"
    return Comparison(model, len(host), tuple(problems), max_diff, worst, tolerance)


# -- running and timing the steps ------------------------------------------------------------------

class Steps:
    """Times named steps: a line as each starts and ends, and a table of them all at the end."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, name: str):
        click.echo(f"== {name}")
        started = time.perf_counter()
        yield
        self.times.append((name, time.perf_counter() - started))
        click.echo(f"   {self.times[-1][1]:.1f} s")

    def table(self) -> str:
        width = max(len(name) for name, _ in self.times)
        lines = [f"{name:<{width}}  {seconds:7.1f} s" for name, seconds in self.times]
        return "\n".join(lines + [f"{'total':<{width}}  {time.perf_counter() - self.start:7.1f} s"])


def run(command: list[str], *, cwd: Path | None = None, env: dict | None = None, stream: bool = False) -> str:
    """Run ``command`` and return its stdout, or raise StepFailed with the last lines it wrote.
    With ``stream`` its output goes straight to ours, as it comes (a long step shows progress)."""
    pipe = None if stream else subprocess.PIPE
    proc = subprocess.run(command, cwd=cwd, env=env, text=True, stdout=pipe, stderr=pipe, check=False)
    if proc.returncode != 0:
        tail = "see its output above" if stream else "\n".join(f"{proc.stdout}{proc.stderr}".splitlines()[-15:])
        raise StepFailed(f"{' '.join(command[:6])} ... exited with {proc.returncode}:\n{tail}")
    return proc.stdout or ""


def in_root(root: Path, command: list[str], cpu: str | None = None) -> list[str]:
    """``command`` inside ``root``, in a network namespace with no interface up (no network at
    all) and a private mount namespace with its own /proc (nothing to unmount afterwards);
    ``cpu`` is the CPU qemu emulates (qemu's default "max" when None).

    No /sys: qemu-user 7.2 shows the host's x86 /proc/cpuinfo to the arm64 process, and
    onnxruntime's cpuinfo library, finding the CPU list in /sys, parses that as arm64 and
    crashes (SIGSEGV) on import. Without /sys it gives up with warnings and onnxruntime runs."""
    mount_and_chroot = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return ["unshare", "--net", "--mount", "--", "sh", "-c", mount_and_chroot, str(root),
            "/usr/bin/env", "-i", *ROOT_ENV, *([f"QEMU_CPU={cpu}"] if cpu else []), *command]


# -- the root --------------------------------------------------------------------------------------

def refuse_if_mounted(path: Path) -> None:
    """Deleting a tree with something mounted inside would reach into the host's /proc or /dev."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m == str(path) or m.startswith(f"{path}/")]
    if inside:
        raise StepFailed(f"{inside[0]} is still mounted, so {path} is not removed: umount -R {inside[0]}")


def remove_tree(path: Path) -> None:
    if path.exists():
        refuse_if_mounted(path)
        shutil.rmtree(path)


def ensure_root(root: Path, suite: Suite, mirror: str, fresh: bool) -> str:
    """The cached arm64 root, built with debootstrap when absent; says which it was."""
    if fresh:
        remove_tree(root)
    if (root / ROOT_MARKER).is_file():
        return f"cached {root} ({(root / ROOT_MARKER).read_text().strip()})"
    if root.exists():
        raise StepFailed(f"{root} exists but was not finished by this script: remove it, or pass --fresh-root")
    partial = root.with_name(root.name + ".partial")
    remove_tree(partial)  # an interrupted build
    partial.parent.mkdir(parents=True, exist_ok=True)
    # Its own mount namespace: the /proc and /sys debootstrap mounts vanish with it, even when killed.
    run(["unshare", "--mount", "--", "debootstrap", "--arch=arm64", "--variant=minbase",
         f"--include={','.join(suite.packages)}", suite.name, str(partial), mirror], stream=True)
    (partial / ROOT_MARKER).write_text(f"debootstrap {suite.name} arm64 minbase + {' '.join(suite.packages)}, "
                                       f"{datetime.now():%Y-%m-%d %H:%M}\n")
    partial.rename(root)
    return f"built {root} with debootstrap from {mirror}"


# -- wheels ----------------------------------------------------------------------------------------

def build_project_wheel(out: Path) -> Path:
    """The wheel of this checkout as it is (tracked and new files), built from a clean copy so
    no stale build/ directory can leak old modules into it."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO).split("\0")
    source = out / "source"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)])
    return next(out.glob("cifar_edge-*.whl"))


def host_versions(suite: Suite) -> list[str]:
    """``name==version`` of each base dependency installed here: arm64 gets the very same, but
    for NumPy on a suite whose NumPy comes from apt."""
    names = [name for name in BASE_DEPENDENCIES if not (suite.apt_numpy and name == "numpy")]
    try:
        return [f"{name}=={importlib.metadata.version(name)}" for name in names]
    except importlib.metadata.PackageNotFoundError as exc:
        raise StepFailed(f"{exc.name} is not installed for {sys.executable}: pip install -e . first") from exc


def download_arm64_wheels(wheels: Path, pins: list[str], python: str) -> list[str]:
    platforms = [arg for platform in ARM64_PLATFORMS for arg in ("--platform", platform)]
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *platforms,
         "--python-version", python, "--implementation", "cp", "-d", str(wheels), *pins])
    return sorted(p.name for p in wheels.glob("*.whl"))


def console_scripts(wheel: Path) -> set[str]:
    """The commands a wheel installs, from its entry_points.txt."""
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
        text = zf.read(name).decode() if name else ""
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0] if "[console_scripts]" in text else ""
    return {line.split("=", 1)[0].strip() for line in section.splitlines() if "=" in line}


# -- the runs --------------------------------------------------------------------------------------

def classify(command: Callable[[list[str]], list[str]], images: str, assets: str, **where) -> dict[str, dict]:
    """``cifar-run --json`` rows on ``images`` for each bundled model, by model; ``command(args)``
    is the whole command line on its side, ``assets`` the bundled models' folder there."""
    rows = {}
    for model, name in MODELS.items():
        args = ["--json", "--top-k", str(TOP_K), *(["--model", f"{assets}/{name}"] if name else []), images]
        rows[model] = read_rows(run(command(args), **where))
    return rows


def host_runs(wheel: Path, unpacked: Path, images: Path) -> dict[str, dict]:
    """The wheel's cifar-run with this interpreter, from an unpacked copy put first on sys.path."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    return classify(lambda args: [sys.executable, "-m", "runtime.cli.run", *args], str(images),
                    str(unpacked / "runtime" / "assets"), cwd=unpacked, env=env)


def install_in_root(root: Path, suite: Suite, wheels: list[Path], images: Path) -> str:
    """Copy the wheels and images in; venv and pip install with no network. Returns what runs
    there; on an apt-NumPy suite, fails if pip put its own NumPy in front of apt's."""
    work = root / IN_ROOT.lstrip("/")
    remove_tree(work)
    (work / "wheels").mkdir(parents=True)
    for wheel in wheels:
        shutil.copy2(wheel, work / "wheels")
    shutil.copytree(images, work / "images")
    system = ["--system-site-packages"] if suite.apt_numpy else []
    run(in_root(root, ["python3", "-m", "venv", *system, f"{IN_ROOT}/venv"]))
    run(in_root(root, [f"{IN_ROOT}/venv/bin/pip", "install", "-q", "--no-index", "--find-links",
                       f"{IN_ROOT}/wheels", "cifar-edge"]))
    probe = ("import os, platform, socket, numpy, PIL, onnxruntime; print(platform.machine(), 'Python', "
             "platform.python_version(), 'numpy', numpy.__version__, 'from', os.path.dirname(numpy.__file__), "
             "'Pillow', PIL.__version__, 'onnxruntime', onnxruntime.__version__, '- network interfaces:', "
             "' '.join(name for _, name in socket.if_nameindex()))")
    found = run(in_root(root, [f"{IN_ROOT}/venv/bin/python", "-c", probe])).strip()
    if suite.apt_numpy and f"from {APT_PACKAGES}/numpy" not in found:
        raise StepFailed(f"pip replaced apt's NumPy in the venv, which apt's picamera2 cannot use: {found}")
    return found


def arm64_runs(root: Path, cpu: str) -> dict[str, dict]:
    """The installed cifar-run in the root on the emulated ``cpu``, on the images copied there."""
    model = next((root / IN_ROOT.lstrip("/")).glob("venv/lib/python3*/site-packages/runtime/assets/model.onnx"))
    return classify(lambda args: in_root(root, [f"{IN_ROOT}/venv/bin/cifar-run", *args], cpu),
                    f"{IN_ROOT}/images", f"/{model.parent.relative_to(root)}")


def run_doctor(root: Path, commands: set[str], cpu: str) -> bool:
    """cifar-doctor inside the root when the wheel has it; False only when it ran and failed."""
    if "cifar-doctor" not in commands:
        click.echo("   cifar-doctor not in this checkout: skipped")
        return True
    proc = subprocess.run(in_root(root, [f"{IN_ROOT}/venv/bin/cifar-doctor"], cpu), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    click.echo("\n".join(f"   {line}" for line in proc.stdout.rstrip().splitlines()))
    click.echo(f"   cifar-doctor exited with {proc.returncode}")
    return proc.returncode == 0


# -- the command -----------------------------------------------------------------------------------

@click.command()
@click.option("--suite", type=click.Choice(list(SUITES)), default="trixie", show_default=True,
              help="The Debian release of the root: trixie (Raspberry Pi OS since late 2025: Python 3.13, "
                   "NumPy 2 from apt) or bookworm (Python 3.11).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=cache_root,
              show_default="$CIFAR_EDGE_CACHE, else ~/.cache/cifar-edge",
              help="The folder that keeps each suite's arm64 root (arm64-SUITE-root/: about 300 MB, and 240 MB "
                   "more of the last run's wheels and venv in its opt/cifar-check, left to look into).")
@click.option("--fresh-root", is_flag=True, help="Build the root again with debootstrap even when one is cached.")
@click.option("--mirror", default="http://deb.debian.org/debian", show_default=True,
              help="The Debian mirror debootstrap downloads from.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=REPO / "runtime" / "assets" / "samples", show_default="the bundled samples",
              help="A folder of images to classify on both sides.")
@click.option("--cpu", "cpus", multiple=True, default=tuple(CPUS), show_default=True,
              help="An emulated CPU to run cifar-run on (qemu-aarch64-static -cpu help lists them); "
                   "repeat for more.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="The largest difference of a probability between the host and arm64 that passes.")
@traceback_option
def main(suite, cache, fresh_root, mirror, images, cpus, tolerance, show_traceback):
    """Install the runtime wheel in an emulated Debian arm64 root (trixie or bookworm) with no
    network and check that cifar-run gives the host's labels and probabilities there."""
    suite = SUITES[suite]

    def body():
        steps = Steps()
        with steps("prerequisites"):
            missing = missing_prerequisites(os.geteuid() == 0)
            for line in missing:
                click.echo(f"{PROG}: missing: {line}", err=True)
            if missing:
                return ExitCode.ERROR
        root = cache / f"arm64-{suite.name}-root"
        with tempfile.TemporaryDirectory(prefix="check-arm64-") as tmp:
            tmp, arm64_wheels = Path(tmp), Path(tmp) / "arm64-wheels"  # fresh: only what pip resolved now
            with steps(f"arm64 {suite.name} root (debootstrap, or the cached one)"):
                click.echo(f"   {ensure_root(root, suite, mirror, fresh_root)}")
            with steps("project wheel (pip wheel --no-deps)"):
                wheel = build_project_wheel(tmp / "wheel")
                commands = console_scripts(wheel)
                click.echo(f"   {wheel.name}: {', '.join(sorted(commands))}")
            with steps("arm64 wheels of the base dependencies (pip download)"):
                pins = host_versions(suite)
                click.echo(f"   {' '.join(pins)} for cp{suite.python.replace('.', '')} aarch64:")
                click.echo(f"   {' '.join(download_arm64_wheels(arm64_wheels, pins, suite.python))}")
            with steps("in the root, no network: python3 -m venv, pip install --no-index"):
                click.echo(f"   {install_in_root(root, suite, [wheel, *arm64_wheels.glob('*.whl')], images)}")
            with steps("host: cifar-run --json, INT8 and FP32"):
                host = host_runs(wheel, tmp / "host", images)
            arm64 = {}
            for cpu in cpus:
                with steps(f"arm64 on {cpu}: cifar-run --json, INT8 and FP32"):
                    arm64[cpu] = arm64_runs(root, cpu)
            with steps(f"arm64 on {cpus[0]}: cifar-doctor"):
                doctor_ok = run_doctor(root, commands, cpus[0])
        comparisons = [compare(f"{model} on {cpu}{f' ({CPUS[cpu]})' if cpu in CPUS else ''}", host[model],
                               runs[model], tolerance) for cpu, runs in arm64.items() for model in host]
        click.echo("\n" + "\n".join(c.line() for c in comparisons))
        worst = max(comparisons, key=lambda c: c.max_diff)
        passed = all(c.passed for c in comparisons) and doctor_ok
        click.echo(f"VERDICT: {'PASS' if passed else 'FAIL'}: worst {worst.model} {worst.figure()}; tolerance "
                   f"{tolerance:.0e}{'' if doctor_ok else '; cifar-doctor failed'}")
        click.echo("\n" + steps.table())
        return ExitCode.OK if passed else ExitCode.THRESHOLD

    run_cli(PROG, body, show_traceback)


if __name__ == "__main__":
    main()
