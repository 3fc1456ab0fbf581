"""Benchmark cifar-edge models on this machine, as a program using ``Classifier`` meets them.

Per model: file size, session load time, time per call through ``Classifier`` and through
onnxruntime's ``session.run`` alone (both, so the cost around the model shows), throughput,
peak resident memory, accuracy on a folder's test split, and the camera loop stage by stage.

``benchmark_model`` runs each model in a child process of its own (``python -m runtime.bench.measure``)
so that its peak memory is its alone; ``benchmark`` does every model and says what the machine
is (``runtime.bench.report`` formats the result). cifar-bench (``runtime.cli.bench``) prints it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from runtime import errors
from runtime.bench.report import (
    APIS,
    STAGES,
    BenchConfig,
    BenchReport,
    BenchResult,
    CameraResult,
    Machine,
    Timing,
)
from runtime.errors import CifarEdgeError, DataError, ModelError, OptionError
from runtime.image import inputs, preprocess
from runtime.model import bundled

CHILD_GRACE_S = 120.0  # s a child may run past --max-seconds (imports, a slow Pi) before it is killed
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # on the child's path, installed or not


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> (1, 32); an OptionError for anything but whole numbers >= 1."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise OptionError(f"--batch {text!r}: expected batch sizes like 1,32 (whole numbers >= 1, "
                          "comma-separated)")
    return tuple(sorted(set(sizes)))


# -- the budget of one model --------------------------------------------------------------------

class _Budget:
    """--max-seconds for one model: a measurement starts only before the deadline and stops
    at it (after at least one timed call); what was cut or skipped becomes a note."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.perf_counter() + seconds
        self.cut: list[str] = []
        self.skipped: list[str] = []

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def expired(self) -> bool:
        return self.left() <= 0.0

    def start(self, what: str) -> bool:
        if self.expired():
            self.skipped.append(what)
            return False
        return True

    def notes(self) -> list[str]:
        if not (self.cut or self.skipped):
            return []
        parts = ([f"cut short: {', '.join(self.cut)}"] if self.cut else []) + \
                ([f"skipped: {', '.join(self.skipped)}"] if self.skipped else [])
        return [f"stopped at --max-seconds {self.seconds:g}: " + "; ".join(parts)]


def _time_calls(call: Callable[[], object], runs: int, warmup: int, budget: _Budget) -> list[float]:
    """Milliseconds of up to ``runs`` calls after ``warmup`` untimed ones; at least one."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    while len(times) < runs and not (times and budget.expired()):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far in MB: VmHWM on Linux, ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB (KiB) in /proc
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


# -- the measurements ---------------------------------------------------------------------------

def _calls(clf, images_rgb: list[np.ndarray], batch: int) -> dict[str, Callable[[], object]]:
    """The call each of APIS makes on ``batch`` prepared images, ready to be timed."""
    chosen = [images_rgb[i % len(images_rgb)] for i in range(batch)]  # (H, W, 3) uint8 RGB each
    batch_nhwc = preprocess.to_batch(chosen, clf.contract)  # (N, H, W, 3) float32
    if batch == 1:
        def through_classifier():
            return clf.predict(image_rgb=chosen[0])
    else:
        def through_classifier():
            return clf.predict_batch(chosen, batch_size=batch)
    return {"classifier": through_classifier,
            "onnxruntime": lambda: clf.infer(batch_nhwc)}


def _timings(clf, images_rgb: list[np.ndarray], config: BenchConfig, budget: _Budget,
             notes: list[str]) -> list[Timing]:
    out = []
    for batch in config.batches:
        calls = _calls(clf, images_rgb, batch)
        for api in APIS:
            what = f"{api} batch {batch}"
            if api == "onnxruntime" and clf.fixed_batch not in (None, batch):
                notes.append(f"{what} not measured: the model takes exactly {clf.fixed_batch} "
                             "images a call")
                continue
            if not budget.start(what):
                continue
            ms = _time_calls(calls[api], config.runs, config.warmup, budget)
            if len(ms) < config.runs:
                budget.cut.append(f"{what} ({len(ms)} of {config.runs} runs)")
            p50, p95 = np.percentile(ms, [50, 95])
            out.append(Timing(api, batch, len(ms), round(float(p50), 4), round(float(p95), 4)))
    return out


def data_split(data: str | os.PathLike) -> Path:
    """``data/test``, the layout cifar-train reads, or a DataError saying what is there instead."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder (expected {root}/test/<class>/*.jpg)")
    if not (root / "test").is_dir():
        if any(p.is_dir() and p.name != "train" for p in root.iterdir()):
            # DIR/<class>/: cifar-train drew its test split itself and recorded it in its run folder.
            raise DataError(f"--data {root}: class folders but no test/ folder; cifar-bench scores "
                            f"{root}/test/<class>/*.jpg only. For a DIR/<class>/ dataset the test split is "
                            "the one its training run recorded: measure accuracy with cifar-eval "
                            f"RUN/model.keras --data {root}, and speed here without --data")
        raise DataError(f"--data {root}: no test/ folder inside (expected {root}/test/<class>/*.jpg)")
    return root / "test"


def _balanced_order(files: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
    """The first file of every class, then the second of every class, ...: a run stopped
    early has still seen every class about equally."""
    seen: Counter[int] = Counter()
    ranked = []
    for path, label in files:
        ranked.append((seen[label], label, path))
        seen[label] += 1
    return [(path, label) for _, label, path in sorted(ranked)]


def _accuracy(clf, config: BenchConfig, budget: _Budget, notes: list[str]) -> dict:
    files = _balanced_order(inputs.labelled_images(data_split(config.data), clf.class_names))
    out = {"accuracy_total": len(files)}
    if not budget.start("accuracy"):
        return out
    correct = scored = failed = 0
    results = clf.predict_files([path for path, _ in files], batch_size=max(config.batches))
    for result, (_, label) in zip(results, files):
        if result.ok:
            scored += 1
            correct += result.prediction.label == clf.class_names[label]
        else:
            failed += 1
        if budget.expired():
            break
    if scored + failed < len(files):
        budget.cut.append(f"accuracy ({scored + failed:,} of {len(files):,} images)")
    if failed:
        notes.append(f"accuracy: {failed} image(s) could not be read and are not counted")
    return {**out, "accuracy": correct / scored if scored else None, "accuracy_images": scored}


def _camera(clf, config: BenchConfig, budget: _Budget, notes: list[str]) -> CameraResult:
    """The camera loop as ``cifar-run --camera SRC --headless --save`` runs it, timed by stage:
    capture (read and decode), preprocess, inference, overlay, encode (into a temporary video)."""
    from runtime.camera import loop, outputs, sources

    source = sources.open_source(config.camera)
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with tempfile.TemporaryDirectory(prefix="cifar-bench-") as tmp:
        saver = outputs.VideoSaver(Path(tmp) / "bench.mp4", fps=getattr(source, "fps", None) or 30.0)
        started = time.perf_counter()
        try:
            for result in loop.classify_stream(source, clf, max_frames=config.frames,
                                                duration_s=budget.left()):
                t0 = time.perf_counter()
                annotated = outputs.annotate_frame(result.frame_bgr, result)
                t1 = time.perf_counter()
                saver.write(annotated)
                t2 = time.perf_counter()
                for stage, ms in zip(STAGES, (result.read_ms, result.preprocess_ms,
                                              result.ort_ms, (t1 - t0) * 1000.0,
                                              (t2 - t1) * 1000.0)):
                    per_stage[stage].append(ms)
            seconds = time.perf_counter() - started
        finally:
            source.release()
            saver.close()
    frames = len(per_stage["capture"])
    if frames < config.frames:
        if budget.expired():
            budget.cut.append(f"camera ({frames} of {config.frames} frames)")
        else:
            notes.append(f"camera: the source ended after {frames} of {config.frames} frames")
    stage_ms = {stage: round(float(np.mean(ms)), 4) if ms else 0.0 for stage, ms in per_stage.items()}
    return CameraResult(config.camera, frames, round(seconds, 4), stage_ms)


def measure_model(model: str | os.PathLike, config: BenchConfig = BenchConfig(), *,
                  isolated: bool = False) -> BenchResult:
    """Benchmark ``model`` in this process. ``isolated`` only records whether this process
    does nothing else (``benchmark_model`` runs this in a child process that does not)."""
    import onnxruntime  # noqa: F401  imported before the clock and the baseline memory

    from runtime.model.classifier import Classifier
    from runtime.model.selfcheck import FAILED, run_check

    path = Path(model)
    budget = _Budget(config.max_seconds)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    clf = Classifier(path, provider=config.provider, threads=config.threads, verify=False, allow_failed=True)
    load_ms = (time.perf_counter() - start) * 1000.0
    self_check = run_check(clf)  # timed on its own: what every load of cifar-run adds
    notes: list[str] = []
    if self_check.status == FAILED:
        notes.append(f"{path.name}: self-check {self_check.summary()}: cifar-run refuses this file here")
    # The bundled sample images (real CIFAR-10 test images), prepared once: decoding is not timed.
    images_rgb = [preprocess.prepare(p, clf.contract) for p in bundled.sample_images()]
    for _ in range(config.warmup):
        clf.predict(image_rgb=images_rgb[0])
    # The camera first: a source that cannot be opened fails in a second, and its reader
    # thread is gone before anything else is timed.
    camera = _camera(clf, config, budget, notes) if config.camera else None
    timings = _timings(clf, images_rgb, config, budget, notes)
    accuracy = _accuracy(clf, config, budget, notes) if config.data else {}
    return BenchResult(
        model=os.fspath(model), variant=clf.variant, provider=clf.provider, threads=config.threads,
        file_mb=round(path.stat().st_size / 1e6, 4), load_ms=round(load_ms, 3),
        timings=tuple(timings), peak_rss_mb=peak_rss_mb(), baseline_rss_mb=baseline,
        isolated=isolated, camera=camera, stopped_early=bool(budget.cut or budget.skipped),
        notes=tuple(notes + budget.notes()), self_check=self_check.to_dict(), **accuracy)


# -- one process per model ------------------------------------------------------------------------

def benchmark_model(model: str | os.PathLike, config: BenchConfig = BenchConfig(), *,
                    isolated: bool = True) -> BenchResult:
    """Benchmark one model. ``isolated`` (the default) runs it in a child process, so that
    its peak memory is its own; otherwise in this process, where the peak includes whatever
    this process did before. Errors in the child are raised here as the same CifarEdgeError."""
    if not isolated:
        return measure_model(model, config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "runtime.bench.measure", os.fspath(model), json.dumps(asdict(config))]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=config.max_seconds + CHILD_GRACE_S)
    except subprocess.TimeoutExpired:
        raise CifarEdgeError(f"{model}: the benchmark did not finish {CHILD_GRACE_S:g} s after "
                             f"--max-seconds {config.max_seconds:g}, and was stopped") from None
    lines = proc.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (IndexError, ValueError):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CifarEdgeError(f"{model}: the benchmark process failed (exit {proc.returncode}): "
                             f"{last}") from None
    if "error" in reply:
        kind = getattr(errors, reply["error"]["type"], None)
        if not (isinstance(kind, type) and issubclass(kind, CifarEdgeError)):
            kind = CifarEdgeError  # a subclass defined outside runtime.errors
        raise kind(reply["error"]["message"])
    return BenchResult.from_dict(reply["result"])


def benchmark(models: Iterable[str | os.PathLike] = (), config: BenchConfig = BenchConfig(), *,
              isolated: bool = True, log: Callable[[str], object] | None = None) -> BenchReport:
    """Benchmark ``models`` (the bundled ones when empty) one after the other, each in its
    own process unless ``isolated`` is False. ``log`` gets a line as each model starts."""
    paths = [Path(m) for m in models] or bundled.bundled_models()
    for path in paths:  # fail before the first model is measured, not after it
        if not path.exists():
            raise ModelError(f"{path}: no such model file")
    if config.data is not None:
        data_split(config.data)
    machine = Machine.here(config.provider, config.threads)
    results = []
    for i, path in enumerate(paths, 1):
        if log is not None:
            log(f"[{i}/{len(paths)}] {path}")
        results.append(benchmark_model(path, config, isolated=isolated))
    return BenchReport(machine, config, tuple(results), created=time.strftime("%Y-%m-%d %H:%M"))


def _child_main(argv: list[str]) -> int:
    """``python -m runtime.bench.measure MODEL CONFIG_JSON``: one JSON line, the result or the error."""
    model, config_json = argv
    try:
        reply = {"result": measure_model(model, BenchConfig.from_dict(json.loads(config_json)),
                                         isolated=True).to_dict()}
    except CifarEdgeError as exc:
        reply = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    print(json.dumps(reply), flush=True)
    return 0 if "result" in reply else 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
