"""What a benchmark was asked (``BenchConfig``) and found (``runtime.bench.measure`` measures), as a human
table, Markdown or JSON.

One column list serves the table and the Markdown alike, so the two never disagree.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from runtime.cpu import CpuInfo, cpu_features
from runtime.errors import OptionError

APIS = ("classifier", "onnxruntime")  # through Classifier (what a program gets); session.run alone
STAGES = ("capture", "preprocess", "inference", "overlay", "encode")  # of one camera frame
DASH = "—"  # a figure that was not measured


@dataclass(frozen=True)
class BenchConfig:
    """The settings of one benchmark, the same for every model."""

    provider: str = "auto"  # onnxruntime execution provider, as cifar-run --provider takes it
    threads: int = 0  # intra-op threads; 0 = onnxruntime's default (one per core)
    batches: tuple[int, ...] = (1, 32)  # images per call: latency at the smallest, throughput at the largest
    runs: int = 100  # timed calls per measurement
    warmup: int = 5  # untimed calls before each measurement: the first calls allocate buffers
    max_seconds: float = 60.0  # s of wall clock per model; what has not started by then is skipped
    data: str | None = None  # a folder with test/<class>/*.jpg: accuracy on that split
    camera: str | None = None  # a camera or video source, as cifar-run --camera takes it
    frames: int = 100  # frames of the camera loop

    def __post_init__(self):
        object.__setattr__(self, "batches", tuple(sorted(set(self.batches))))
        for name, ok in (("batches", self.batches and min(self.batches) >= 1),
                         ("runs", self.runs >= 1), ("warmup", self.warmup >= 0),
                         ("max_seconds", self.max_seconds > 0), ("frames", self.frames >= 1),
                         ("threads", self.threads >= 0)):
            if not ok:
                raise OptionError(f"{name} = {getattr(self, name)!r} is out of range")

    @classmethod
    def from_dict(cls, raw: dict) -> "BenchConfig":
        return cls(**{**raw, "batches": tuple(raw["batches"])})


@dataclass(frozen=True)
class Timing:
    """``runs`` timed calls of ``batch`` images through ``api`` (one of APIS)."""

    api: str
    batch: int
    runs: int
    p50_ms: float  # per call
    p95_ms: float

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000.0 / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 1)}


@dataclass(frozen=True)
class CameraResult:
    """The camera loop (headless) on ``source``: ``frames`` frames in ``seconds``."""

    source: str
    frames: int
    seconds: float
    stage_ms: dict[str, float]  # mean ms per frame for each of STAGES

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": round(self.fps, 2)}


@dataclass(frozen=True)
class BenchResult:
    """One model's figures. Sizes and memory in MB (10^6 bytes), times in ms."""

    model: str  # the path as given
    variant: str  # from the model's metadata: "fp32", "int8", "fp16", "unknown"
    provider: str  # the execution provider that ran it
    threads: int  # as asked; 0 = onnxruntime's default
    file_mb: float
    load_ms: float  # creating the Classifier: session and metadata (not importing onnxruntime), no self-check
    timings: tuple[Timing, ...]  # for each batch: Classifier, then session.run alone
    peak_rss_mb: float | None  # the process's peak resident memory; None where the OS does not say
    baseline_rss_mb: float | None  # the same just before loading: Python, numpy, Pillow, onnxruntime
    isolated: bool  # measured in a process of its own (else the peak includes what ran before)
    accuracy: float | None = None  # fraction of accuracy_images classified right
    accuracy_images: int = 0
    accuracy_total: int = 0  # images in the test split (more than accuracy_images if stopped early)
    camera: CameraResult | None = None
    stopped_early: bool = False  # --max-seconds cut something short; the notes say what
    notes: tuple[str, ...] = ()
    # runtime.model.selfcheck.SelfCheckResult.to_dict(): does this machine give the exported answers,
    # and what the check costs at each load (its ms); None in results from before it existed
    self_check: dict | None = None

    def timing(self, api: str, batch: int) -> Timing | None:
        return next((t for t in self.timings if t.api == api and t.batch == batch), None)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(timings=[t.to_dict() for t in self.timings], notes=list(self.notes),
                   camera=self.camera.to_dict() if self.camera else None)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> BenchResult:
        known = {f.name for f in fields(cls)}
        out = {k: v for k, v in raw.items() if k in known}
        out["timings"] = tuple(Timing(**{k: v for k, v in t.items() if k != "images_per_s"})
                               for t in raw["timings"])
        out["notes"] = tuple(raw["notes"])
        if raw.get("camera"):
            out["camera"] = CameraResult(**{k: v for k, v in raw["camera"].items() if k != "fps"})
        return cls(**out)


@dataclass(frozen=True)
class Machine:
    cpu: CpuInfo
    onnxruntime: str  # onnxruntime's version
    provider: str  # the execution provider asked for, resolved ("auto" -> "cpu", ...)
    threads: int  # intra-op threads asked for; 0 = onnxruntime's default
    python: str
    system: str  # platform.platform()

    @classmethod
    def here(cls, provider: str = "auto", threads: int = 0) -> "Machine":
        import onnxruntime

        from runtime.model.providers import resolve, short_name

        return cls(cpu_features(), onnxruntime.__version__, short_name(resolve(provider)[0]), threads,
                   platform.python_version(), platform.platform())

    def describe(self) -> str:
        threads = f"{self.threads} threads" if self.threads else "default threads"
        return (f"{self.cpu.model}, {self.cpu.arch}, {self.cpu.cores} cores; onnxruntime "
                f"{self.onnxruntime}, {self.provider}, {threads}")

    def to_dict(self) -> dict:
        return {**self.cpu.to_dict(), "onnxruntime": self.onnxruntime, "provider": self.provider,
                "threads": self.threads, "python": self.python, "system": self.system}


@dataclass(frozen=True)
class Int8Speedup:
    """How many times faster the INT8 model ran than the FP32 one (> 1: INT8 is faster)."""

    fp32: str
    int8: str
    latency_batch: int  # the smallest batch
    latency: float | None  # p50 per call through Classifier at latency_batch
    onnxruntime: float | None  # the same, session.run alone
    throughput_batch: int  # the largest batch
    throughput: float | None  # images/s through Classifier at throughput_batch

    def describe(self) -> str:
        def x(v):
            return f"{v:.2f}x" if v is not None else DASH

        return (f"INT8 vs FP32, measured: {x(self.latency)} faster per call at batch "
                f"{self.latency_batch} through Classifier ({x(self.onnxruntime)} in session.run "
                f"alone), {x(self.throughput)} the images/s at batch {self.throughput_batch}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def int8_speedup(results: tuple[BenchResult, ...], small: int, large: int) -> Int8Speedup | None:
    """The first FP32 and the first INT8 model compared; None unless both were benchmarked."""
    by_variant = {}
    for r in results:
        by_variant.setdefault(r.variant, r)
    fp32, int8 = by_variant.get("fp32"), by_variant.get("int8")
    if fp32 is None or int8 is None:
        return None

    def p50(r, api):
        t = r.timing(api, small)
        return t.p50_ms if t else None

    def ips(r):
        t = r.timing("classifier", large)
        return t.images_per_s if t else None

    return Int8Speedup(fp32.model, int8.model, small,
                       _ratio(p50(fp32, "classifier"), p50(int8, "classifier")),
                       _ratio(p50(fp32, "onnxruntime"), p50(int8, "onnxruntime")),
                       large, _ratio(ips(int8), ips(fp32)))


# -- cells ------------------------------------------------------------------------------------

def _ms(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def _mb(v: float | None) -> str:
    return DASH if v is None else f"{v:.2f} MB" if v < 10 else f"{v:.0f} MB"


Column = tuple[str, Callable[[BenchResult], str]]


def _model_columns(small: int, large: int, with_accuracy: bool) -> list[Column]:
    def latency(r):
        t = r.timing("classifier", small)
        return f"{_ms(t.p50_ms)} / {_ms(t.p95_ms)} ms" if t else DASH

    def session_run(r):
        t = r.timing("onnxruntime", small)
        return f"{_ms(t.p50_ms)} ms" if t else DASH

    def throughput(r):
        cells = [r.timing(api, large) for api in APIS]
        return " / ".join(f"{t.images_per_s:,.0f}" if t else DASH for t in cells)

    def accuracy(r):
        if r.accuracy is None:
            return DASH
        part = f" of {r.accuracy_images:,}" if r.accuracy_images < r.accuracy_total else ""
        return f"{100 * r.accuracy:.2f}%{part}"

    columns: list[Column] = [
        ("model", lambda r: Path(r.model).name),
        ("variant", lambda r: r.variant),
        ("size", lambda r: _mb(r.file_mb)),
        ("load", lambda r: f"{_ms(r.load_ms)} ms"),
        ("self-check", _self_check_cell),
        (f"batch {small} p50 / p95", latency),
        ("session.run p50", session_run),
        (f"images/s at {large}", throughput),
        ("peak memory", lambda r: _mb(r.peak_rss_mb)),
    ]
    return columns + [("accuracy", accuracy)] if with_accuracy else columns


def _self_check_cell(r: BenchResult) -> str:
    """"passed, 1.2 ms" / "FAILED: |Δp| 0.93" / "absent": the check's verdict and cost."""
    check = r.self_check
    if not check or check["status"] in ("absent", "skipped"):
        return check["status"] if check else DASH
    if check["status"] == "failed":
        return f"FAILED: |Δp| {check['max_abs_diff']:.2g}"
    return f"passed, {_ms(check['ms'])} ms"


def _stage_column(stage: str) -> Column:
    return f"{stage} ms", lambda r: _ms(r.camera.stage_ms.get(stage))


CAMERA_COLUMNS: list[Column] = [
    ("model", lambda r: Path(r.model).name),
    ("frames", lambda r: str(r.camera.frames)),
    ("fps", lambda r: f"{r.camera.fps:.1f}"),
] + [_stage_column(stage) for stage in STAGES]


def _render(columns: list[Column], results, markdown: bool) -> list[str]:
    rows = [[header for header, _ in columns]] + [[cell(r) for _, cell in columns] for r in results]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        return lines[:1] + ["| " + " | ".join("---" for _ in columns) + " |"] + lines[1:]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


@dataclass(frozen=True)
class BenchReport:
    machine: Machine
    config: BenchConfig
    results: tuple[BenchResult, ...]
    created: str = ""  # local date and time of the run

    @property
    def int8(self) -> Int8Speedup | None:
        return int8_speedup(self.results, min(self.config.batches), max(self.config.batches))

    def to_dict(self) -> dict:
        return {"created": self.created, "machine": self.machine.to_dict(),
                "config": asdict(self.config), "models": [r.to_dict() for r in self.results],
                "int8_speedup": asdict(self.int8) if self.int8 else None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _legend(self, small: int, large: int) -> list[str]:
        call = "Classifier.predict on a prepared image" if small == 1 else \
            f"Classifier.predict_batch on {small} prepared images"
        baseline = min((r.baseline_rss_mb for r in self.results if r.baseline_rss_mb), default=None)
        own = "the model's own process" if all(r.isolated for r in self.results) else \
            "this process, after all it ran before"
        return [f"batch {small} p50 / p95: ms per call through {call}; session.run p50: "
                "onnxruntime alone",
                f"images/s at {large}: through Classifier / session.run alone",
                f"peak memory: resident, of {own}, Python and onnxruntime included"
                + (f" ({_mb(baseline)} before the model was loaded)" if baseline else "")]

    def _lines(self, markdown: bool) -> list[str]:
        small, large = min(self.config.batches), max(self.config.batches)
        bullet = "- " if markdown else ""  # Markdown would run plain lines into one paragraph
        with_accuracy = any(r.accuracy is not None for r in self.results)
        lines = [f"{self.machine.describe()}; {self.created}", ""]
        lines += _render(_model_columns(small, large, with_accuracy), self.results, markdown)
        lines += [""] + [bullet + line for line in self._legend(small, large)]
        cameras = [r for r in self.results if r.camera is not None]
        if cameras:
            lines += ["", f"Camera loop on {cameras[0].camera.source}, headless, ms per frame:", ""]
            lines += _render(CAMERA_COLUMNS, cameras, markdown)
        lines += ["", bullet + f"INT8 on this CPU: {self.machine.cpu.int8_outlook()}"]
        if self.int8 is not None:
            lines.append(bullet + self.int8.describe())
        lines += [f"{bullet}{Path(r.model).name}: {note}" for r in self.results for note in r.notes]
        return lines

    def table(self) -> str:
        return "\n".join(self._lines(markdown=False))

    def markdown(self) -> str:
        return "\n".join(self._lines(markdown=True))
