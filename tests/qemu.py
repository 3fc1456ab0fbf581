"""Run Python on an emulated x86-64 CPU without VNNI: ``qemu-x86_64-static -cpu Haswell-v4``.

This machine's onnxruntime may take VNNI kernels for INT8; under qemu (TCG) the same Python and
the same onnxruntime see a Haswell: SSE4.1, AVX2 and FMA, no AVX-512, no VNNI (cpuid leaf 7
under qemu 7.2), so they take the AVX2 kernels that a laptop or an older server runs. Numbers
come out as on such a CPU; the time does not (TCG is some 50-250 times slower than native, and
says nothing of a real AVX2 CPU's speed).

    proc = python_under_qemu("import onnxruntime; print(onnxruntime.__version__)")

Only the standard library is imported, so scripts/check_int8_cpus.py loads this file too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

QEMU = "qemu-x86_64-static"  # Debian's qemu-user-static
NON_VNNI_CPU = "Haswell-v4"  # AVX2 + FMA, no AVX-512, no VNNI: onnxruntime's non-VNNI x86 kernels
REPO = Path(__file__).resolve().parents[1]
# qemu warns once per host CPU feature it cannot emulate ("TCG doesn't support requested feature:
# CPUID.01H:ECX.pcid [bit 17]"); harmless, and dropped from stderr.
TCG_WARNING = "TCG doesn't support requested feature"


def qemu_missing(machine: str | None = None) -> str | None:
    """Why Python cannot run under qemu here (one line, with the fix), or None when it can."""
    import platform

    machine = machine or platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return f"{QEMU} emulates x86-64 for an x86-64 Python; this machine is {machine}"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (Debian: apt-get install qemu-user-static)"
    return None


def without_tcg_warnings(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if TCG_WARNING not in line)


def python_under_qemu(code: str, args: tuple[str, ...] | list[str] = (), *, cpu: str = NON_VNNI_CPU,
                      timeout: float = 600, cwd: str | os.PathLike = REPO,
                      python: str = sys.executable) -> subprocess.CompletedProcess:
    """``python -c code *args`` on the emulated ``cpu``, this checkout first on the import path;
    stdout and stderr as text, stderr without qemu's TCG warnings. Raises
    subprocess.TimeoutExpired after ``timeout`` seconds, like subprocess.run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run([QEMU, "-cpu", cpu, python, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    proc.stderr = without_tcg_warnings(proc.stderr)
    return proc
