"""What this CPU is, and whether an INT8 model is likely to run faster on it than FP32.

onnxruntime's INT8 kernels gain most where the CPU has int8 dot-product instructions: VNNI on
x86 (``avx512_vnni``, ``avx_vnni``; AMX ``amx_int8`` on the newest Xeons) and the dot-product
extension on arm64 (``asimddp``: a Raspberry Pi 5's Cortex-A76 has it, a Pi 4's Cortex-A72
does not). The flags come from /proc/cpuinfo, so elsewhere (macOS, Windows) the answer is
"unknown": measure both models.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags worth showing: SIMD width, the int8 dot-product instructions and bfloat16 (what
# makes training pay, train.models.BF16_FLAGS), x86 then arm64.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16",
                     "asimd", "asimddp", "i8mm", "sve")
INT8_FLAGS = {"x86_64": ("avx512_vnni", "avx_vnni", "amx_int8"), "arm64": ("asimddp", "i8mm")}
_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class CpuInfo:
    model: str  # "Intel(R) Xeon(R) Processor", "Raspberry Pi 5 Model B Rev 1.0", ...
    arch: str  # "x86_64", "arm64", or platform.machine() as it is for anything else
    cores: int  # logical cores onnxruntime can use
    flags: tuple[str, ...]  # those of FLAGS_OF_INTEREST this CPU has
    flags_known: bool  # False where the OS gave no flags (no /proc/cpuinfo)

    @property
    def int8_flags(self) -> tuple[str, ...]:
        return tuple(f for f in INT8_FLAGS.get(self.arch, ()) if f in self.flags)

    @property
    def int8_likely(self) -> bool | None:
        """True: int8 dot-product instructions; False: none; None: cannot tell here."""
        if not self.flags_known or self.arch not in INT8_FLAGS:
            return None
        return bool(self.int8_flags)

    def int8_outlook(self) -> str:
        """One sentence: is INT8 likely to pay off on this CPU, and why."""
        likely = self.int8_likely
        if likely is None:
            return "unknown: this system does not report CPU flags; benchmark both models"
        if likely:
            kind = "VNNI" if self.arch == "x86_64" else "dot-product"
            return (f"likely: the CPU has {kind} instructions for int8 "
                    f"({', '.join(self.int8_flags)})")
        if self.arch == "arm64":
            return ("unlikely: no dot-product instructions (asimddp), as on a Raspberry Pi 4; "
                    "INT8 may be no faster than FP32")
        return ("uncertain: no VNNI (avx512_vnni/avx_vnni); INT8 runs on plain AVX2/SSE "
                "and may gain little")

    def to_dict(self) -> dict:
        return {"cpu_model": self.model, "arch": self.arch, "cores": self.cores,
                "flags": list(self.flags), "flags_known": self.flags_known,
                "int8_likely": self.int8_likely, "int8_outlook": self.int8_outlook()}


def _fields(text: str) -> dict[str, str]:
    """/proc/cpuinfo's "key : value" lines; the first value of each key (all cores agree)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:  # not Linux
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """Every feature flag the CPU reports (x86 "flags", arm64 "Features"); empty where the OS
    reports none. ``cpuinfo``: the text of /proc/cpuinfo, default this machine's."""
    # x86 says "flags", arm64 "Features".
    fields = _fields(_read_cpuinfo() if cpuinfo is None else cpuinfo)
    return set((fields.get("flags") or fields.get("features") or "").split())


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> CpuInfo:
    """This machine's CPU; ``cpuinfo`` (the text of /proc/cpuinfo) and ``machine``
    (platform.machine()) may be given to describe another one."""
    cpuinfo = _read_cpuinfo() if cpuinfo is None else cpuinfo
    machine = machine or platform.machine()
    fields = _fields(cpuinfo)
    # A Pi names its board in "Model" (on x86 that key is a number), other arm boards in "Hardware".
    words = cpu_flags(cpuinfo)
    board = fields.get("model", "")
    model = ((board if not board.isdigit() else "") or fields.get("model name")
             or fields.get("hardware") or platform.processor() or machine)
    return CpuInfo(model=model, arch=_ARCH.get(machine.lower(), machine), cores=os.cpu_count() or 1,
                   flags=tuple(f for f in FLAGS_OF_INTEREST if f in words), flags_known=bool(words))
